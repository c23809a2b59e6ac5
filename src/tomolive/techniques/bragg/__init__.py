"""Bragg-peak analysis: peak finding, pseudo-Voigt fits, BraggNN localisation, per-scan peak tables."""

from .params import BraggParams
from .technique import BraggTechnique

__all__ = ["BraggParams", "BraggTechnique"]
