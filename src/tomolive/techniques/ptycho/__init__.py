"""Ptychography: far-field diffraction patterns at overlapping probe positions -> a complex object."""
