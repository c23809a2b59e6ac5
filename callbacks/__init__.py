"""Bluesky callbacks (``RE.subscribe``-able) that feed runs into the tomolive engine."""

from tomolive.engine import ProcessedRun

from .tomo_pipeline import TomoPipeline

__all__ = ["ProcessedRun", "TomoPipeline"]
