"""Ptychography on the engine: far-field patterns at scanned probe positions -> complex object and probe."""
