"""Bluesky plans for tomography (generator functions for ``RE(...)``)."""

from .replay_scan import replay_scan
from .tomo_scan import tomo_scan

__all__ = ["replay_scan", "tomo_scan"]
