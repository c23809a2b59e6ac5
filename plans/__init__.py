"""Bluesky plans for tomography and Bragg-peak scans (generator functions for ``RE(...)``)."""

from .bragg import bragg_scan
from .replay_scan import replay_scan
from .tomo_scan import tomo_scan

__all__ = ["bragg_scan", "replay_scan", "tomo_scan"]
