"""Bluesky callbacks (``RE.subscribe``-able) that feed scans into the tomolive engine."""

from .tomo_pipeline import ProcessedRun, TomoPipeline

__all__ = ["ProcessedRun", "TomoPipeline"]
