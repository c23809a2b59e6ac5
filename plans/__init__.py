"""Bluesky plans for tomography (generator functions for ``RE(...)``)."""

from .tomo_scan import tomo_scan

__all__ = ["tomo_scan"]
