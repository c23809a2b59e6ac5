"""``BlockStage``: a plain array function run block by block over a stored volume.

This is the stage most users write (see :mod:`tomolive.stages`): a function on a float32
slab ``(z, y, x)`` of a volume (``recon`` by default), with the slices of overlap it needs
on each side. Its :meth:`~BlockStage.run` is the same as any stage's: one task per block
through the engine's block runner. Each task loads the stage by name on its worker, so a
worker without the stage's distribution fails the scan with a clear message instead of
dying on a task it cannot unpickle.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

import numpy as np

from ..errors import BadInputError, ProcessingError
from .protocol import StageContext, VolumeRef

OUTPUTS = ("volume", "metrics")


def overlapping(rows: tuple[int, int], overlap: int, n_rows: int) -> tuple[int, int]:
    """Rows ``[start - overlap, stop + overlap)`` of a block, clipped to the volume's ``n_rows``."""
    start, stop = rows
    return max(0, start - overlap), min(n_rows, stop + overlap)


@dataclass(frozen=True)
class BlockStage:
    """An array function and what the block runner needs to know about it.

    Parameters
    ----------
    function : callable
        ``function(block, **params)``: a volume of ``block``'s shape, or a mapping of
        name -> number (see :mod:`tomolive.stages`).
    output : {"volume", "metrics"}
        What the function returns.
    dtype : str
        The stored array's dtype (``output="volume"`` only).
    overlap : int
        Neighbour slices the function needs on each side of its block (``output="volume"``
        only; the returned array's extra rows are dropped).
    name : str
        The stage's name: its array's key and its entry in ``stages``; the registry sets it.
    source : str
        The volume it processes (a key of ``ctx.volumes``).
    origin : mapping
        Where it came from (distribution, version, entry point), for provenance.
    """

    function: Callable[..., Any]
    output: str = "volume"
    dtype: str = "float32"
    overlap: int = 0
    name: str = ""
    source: str = "recon"
    origin: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not callable(self.function):
            raise BadInputError(f"Stage function must be callable; got {self.function!r}.")
        if self.output not in OUTPUTS:
            raise BadInputError(f"Stage output must be one of {OUTPUTS!r}; got {self.output!r}.")
        if not isinstance(self.overlap, int) or self.overlap < 0:
            raise BadInputError(f"Stage overlap must be an int >= 0 slices; got {self.overlap!r}.")
        if self.output == "metrics" and self.overlap:
            raise BadInputError("a metrics stage sees its block only: give overlap=0.")
        np.dtype(self.dtype)  # raises TypeError naming a dtype numpy does not know

    def __call__(self, block: np.ndarray, **params: Any) -> Any:
        return self.function(block, **params)

    def run(self, ctx: StageContext) -> None:
        """Run on every block of ``ctx.volumes[source]``: a new volume, or slice-weighted metrics."""
        source = ctx.volumes[self.source]
        kwargs = ctx.params_of(self.name)
        record = {"name": self.name, **self.origin, "output": self.output, "params": kwargs}
        ctx.provenance.results.setdefault("extra_stages", []).append(record)
        with ctx.provenance.stage(self.name):
            target = None
            if self.output == "volume":
                target = ctx.store.new_volume(
                    self.name,
                    source.shape,
                    source.rows_per_block,
                    dtype=np.dtype(self.dtype),
                    metadata={"stage": self.name, "source": self.source, "params": kwargs},
                )
            args = [
                (self.name, kwargs, source.target, target, i, rows, source.shape[0])
                for i, rows in enumerate(source.blocks)
            ]
            results = ctx.run_blocks(self.name, block_task, args)
        if target is not None:
            ctx.volumes[self.name] = VolumeRef(target, source.shape, source.blocks)
        else:
            ctx.metadata.setdefault("metrics", {})[self.name] = slice_weighted_mean(self.name, results)


def block_task(
    name: str,
    params: dict[str, Any],
    source: Any,
    target: Any,
    index: int,
    rows: tuple[int, int],
    n_rows: int,
) -> tuple[int, dict[str, float] | None]:
    """Dask task: run stage ``name`` on rows ``[start, stop)``; return (rows, metrics or None)."""
    from .registry import load_stage

    try:
        stage = load_stage(name).stage
    except (ImportError, BadInputError) as err:
        raise ProcessingError(
            f"stage {name!r} cannot be loaded on the Dask worker on {socket.gethostname()} ({err}); "
            "install its distribution where the workers run."
        ) from err
    if not isinstance(stage, BlockStage):
        raise ProcessingError(f"stage {name!r} is not a BlockStage; it cannot run block by block.")
    start, stop = rows
    lo, hi = overlapping(rows, stage.overlap, n_rows)
    block = np.asarray(source.open()[lo:hi], dtype=np.float32)
    out = stage(block, **params)
    if stage.output == "metrics":
        if not isinstance(out, Mapping) or not all(isinstance(v, Real) for v in out.values()):
            raise BadInputError(
                f"stage {name!r} is a metrics stage: it must return a mapping of name -> number; got {out!r:.200}."
            )
        return stop - start, {str(k): float(v) for k, v in out.items()}
    out = np.asarray(out)
    if out.shape != block.shape:
        raise BadInputError(
            f"stage {name!r} returned an array of shape {out.shape!r} for a block of shape "
            f"{block.shape!r}; a volume stage returns an array shaped like its input."
        )
    target.write_block(index, out[start - lo : stop - lo].astype(stage.dtype, copy=False))
    return stop - start, None


def slice_weighted_mean(name: str, results: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """The mean of per-block metrics, each block weighted by its number of slices."""
    keys = set(results[0][1])
    if any(set(m) != keys for _, m in results):
        raise BadInputError(f"stage {name!r} returned different metric names for different blocks.")
    total = sum(n for n, _ in results)
    return {key: sum(n * m[key] for n, m in results) / total for key in sorted(keys)}
