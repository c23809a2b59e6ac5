"""Preprocessing stages: plain functions on numpy arrays, no I/O."""

from ..validation import check_finite
from .center import CENTER_METHODS, CenterResult, find_center, find_center_registration, find_center_vo
from .normalize import normalize, reduce_frames
from .phase import paganin
from .stripes import (
    STRIPE_METHODS,
    remove_all_stripes,
    remove_dead_stripes,
    remove_large_stripes,
    remove_stripe_mean,
    remove_stripe_sorting,
    remove_stripes,
    ring_metric,
)
from .zingers import remove_zingers, replace_nonfinite

__all__ = [
    "CENTER_METHODS",
    "STRIPE_METHODS",
    "CenterResult",
    "check_finite",
    "find_center",
    "find_center_registration",
    "find_center_vo",
    "normalize",
    "paganin",
    "reduce_frames",
    "remove_all_stripes",
    "remove_dead_stripes",
    "remove_large_stripes",
    "remove_stripe_mean",
    "remove_stripe_sorting",
    "remove_stripes",
    "remove_zingers",
    "replace_nonfinite",
    "ring_metric",
]
