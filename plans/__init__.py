"""Bluesky plans for tomography, ptychography and Bragg-peak scans (generator functions for ``RE(...)``)."""

from .bragg import bragg_scan
from .ptycho import ptycho_scan, ptycho_tomo_scan
from .replay_scan import replay_scan
from .tomo_scan import tomo_scan

__all__ = ["bragg_scan", "ptycho_scan", "ptycho_tomo_scan", "replay_scan", "tomo_scan"]
