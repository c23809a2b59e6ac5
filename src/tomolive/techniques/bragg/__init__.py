"""Bragg-peak analysis: peak finding, pseudo-Voigt fits, BraggNN localisation, per-scan peak tables."""
