"""Bluesky callbacks (``RE.subscribe``-able) that feed scans into the tomolive engine."""

from tomolive.session import ProcessedRun

from .tomo_pipeline import TomoPipeline

__all__ = ["ProcessedRun", "TomoPipeline"]
