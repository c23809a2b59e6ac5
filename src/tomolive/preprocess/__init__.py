"""Preprocessing stages: plain functions on numpy arrays, no I/O."""

from .normalize import check_finite, normalize, reduce_frames

__all__ = ["check_finite", "normalize", "reduce_frames"]
