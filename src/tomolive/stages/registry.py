"""Stages users add after a technique's own: a name -> stage table and the entry-point group.

The usual one is a plain function on arrays (numpy in, numpy out, no I/O, no Tiled, no Dask)::

    def my_stage(block: np.ndarray, **params) -> np.ndarray | Mapping[str, float]

``block`` is a float32 slab of the reconstructed volume ``recon``: whole slices ``(z, y, x)``,
rows ``[start - overlap, stop + overlap)`` of it (clipped at the volume's ends). Wrap the
function in :class:`~tomolive.stages.BlockStage` to say what it returns:

- ``output="volume"`` (the default): an array of ``block``'s shape; tomolive keeps the rows
  of the block proper and writes them, as ``dtype``, into ``processed/<uid>/<stage name>``;
- ``output="metrics"``: a mapping of name -> number that is a per-voxel average (a mean, a
  fraction); tomolive stores the slice-weighted mean over blocks in the container metadata
  ``metrics.<stage name>.<name>`` (searchable, e.g. ``Key("metrics.my_stage.x") > 0``).

Stages are found by name in :data:`BUILTIN_STAGES` and in the entry-point group
``tomolive.stages`` (never by import side effects). A user's package declares one in its
``pyproject.toml``::

    [project.entry-points."tomolive.stages"]
    my_stage = "my_package.stages:my_stage"    # a BlockStage, or a plain function (a float32 volume)

and a scan runs it with ``PipelineParams(extra_stages=("my_stage",),
stage_params={"my_stage": {...}})``. Blocks run on the Dask workers, so the package must be
installed where the workers run. An entry point may also name any object with ``name``
and ``run(ctx)`` (:class:`~tomolive.stages.Stage`): it then runs once per scan, not per block.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from typing import Any

import numpy as np

import tomolive

from ..errors import BadInputError
from .blocks import BlockStage
from .protocol import Stage

GROUP = "tomolive.stages"
RESERVED = ("preview", "recon", "denoised", "segmented")
"""Names of tomolive's own arrays: a stage may not take them."""


@dataclass(frozen=True)
class RegisteredStage:
    """A stage found by name, with where it came from (recorded in provenance)."""

    name: str
    stage: BlockStage | Stage
    source: dict[str, Any] = field(default_factory=dict)


def median(block: np.ndarray, *, size: int = 3) -> np.ndarray:
    """3D median filter over ``size`` x ``size`` x ``size`` voxels (size 1, 3 or 5)."""
    from scipy.ndimage import median_filter

    if size not in (1, 3, 5):
        raise BadInputError(f"median: size must be 1, 3 or 5 voxels; got {size!r}.")
    return median_filter(block, size=size, mode="nearest")


BUILTIN_STAGES: dict[str, BlockStage] = {"median": BlockStage(median, overlap=2, name="median")}


def _entry_points() -> dict[str, Any]:
    """The ``tomolive.stages`` entry points installed now, by name."""
    found: dict[str, Any] = {}
    for ep in entry_points(group=GROUP):
        if ep.name in found or ep.name in BUILTIN_STAGES:
            raise BadInputError(
                f"stage {ep.name!r} is declared twice (entry points {ep.value!r} and "
                f"{getattr(found.get(ep.name), 'value', 'tomolive built-in')!r}); uninstall one."
            )
        found[ep.name] = ep
    return found


def available_stages() -> list[str]:
    """Names of the stages a scan can run: built-in ones and installed entry points."""
    return sorted([*BUILTIN_STAGES, *_entry_points()])


def check_stage_names(names: tuple[str, ...], stage_params: Mapping[str, Any] | None) -> None:
    """Raise :class:`BadInputError` naming any unknown or reserved stage, or stray params."""
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise BadInputError(f"extra_stages must be a tuple of stage names, e.g. ('median',); got {names!r}.")
    available = available_stages() if names else []
    for name in names:
        if name in RESERVED:
            raise BadInputError(f"stage name {name!r} is one of tomolive's own arrays {RESERVED!r}; rename it.")
        if name not in available:
            raise BadInputError(
                f"unknown stage {name!r}; available stages: {available!r} (entry-point group {GROUP!r})."
            )
    if len(set(names)) != len(names):
        raise BadInputError(f"extra_stages names a stage twice: {names!r}.")
    stray = sorted(set(stage_params or {}) - set(names))
    if stray:
        raise BadInputError(f"stage_params given for {stray!r}, which extra_stages {names!r} does not run.")


def load_stage(name: str) -> RegisteredStage:
    """The stage called ``name``, loaded from the table or its entry point."""
    if name in BUILTIN_STAGES:
        source = {"distribution": "tomolive", "version": tomolive.__version__, "value": f"tomolive.stages:{name}"}
        return RegisteredStage(name, replace(BUILTIN_STAGES[name], origin=source), source)
    found = _entry_points()
    if name not in found:
        raise BadInputError(
            f"unknown stage {name!r}; available stages: {available_stages()!r} (entry-point group {GROUP!r})."
        )
    ep = found[name]
    loaded = ep.load()
    dist = ep.dist
    origin: dict[str, Any] = {
        "distribution": dist.name if dist else None,
        "version": dist.version if dist else None,
        "value": ep.value,
    }
    if isinstance(loaded, BlockStage):
        return RegisteredStage(name, replace(loaded, name=name, origin=origin), origin)
    if isinstance(loaded, Stage):
        return RegisteredStage(name, loaded, origin)
    return RegisteredStage(name, BlockStage(loaded, name=name, origin=origin), origin)
