"""Stages: the steps of a technique's processing, on one protocol (see :mod:`.protocol`).

Users add their own through :class:`BlockStage` (an array function run block by block) and
the entry-point group ``tomolive.stages`` (see :mod:`.registry`).
"""

from .blocks import BlockStage, overlapping, slice_weighted_mean
from .protocol import Stage, StageContext, VolumeRef
from .registry import (
    BUILTIN_STAGES,
    GROUP,
    RESERVED,
    RegisteredStage,
    available_stages,
    check_stage_names,
    load_stage,
    median,
)

__all__ = [
    "BUILTIN_STAGES",
    "GROUP",
    "RESERVED",
    "BlockStage",
    "RegisteredStage",
    "Stage",
    "StageContext",
    "VolumeRef",
    "available_stages",
    "check_stage_names",
    "load_stage",
    "median",
    "overlapping",
    "slice_weighted_mean",
]
