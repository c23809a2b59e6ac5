"""Bluesky plans for tomography and ptychography (generator functions for ``RE(...)``)."""

from .ptycho import ptycho_scan, ptycho_tomo_scan
from .replay_scan import replay_scan
from .tomo_scan import tomo_scan

__all__ = ["ptycho_scan", "ptycho_tomo_scan", "replay_scan", "tomo_scan"]
