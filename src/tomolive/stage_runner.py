"""Run ``PipelineParams.extra_stages`` (see :mod:`tomolive.stages`) on Dask, block by block.

Each block task loads the stage by name on its worker (so a worker without the stage's
distribution fails the scan with a clear message instead of dying on a task it cannot
unpickle), reads its slab of ``recon`` (plus the stage's overlap), calls the stage and
writes the result straight into the stage's array, or returns its metrics, as the
segmentation stage does (:mod:`tomolive.analysis`).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from numbers import Real
from typing import Any

import numpy as np
from distributed import Client

from .errors import BadInputError, ProcessingError
from .pipeline import ResultSink, run_blocks
from .provenance import Provenance
from .stages import load_stage
from .store import VolumeTarget


def stage_block(
    name: str,
    params: dict[str, Any],
    source: VolumeTarget,
    target: VolumeTarget | None,
    index: int,
    rows: tuple[int, int],
    n_rows: int,
) -> tuple[int, dict[str, float] | None]:
    """Dask task: run stage ``name`` on rows ``[start, stop)``; return (rows, metrics or None)."""
    try:
        stage = load_stage(name).stage
    except (ImportError, BadInputError) as err:
        raise ProcessingError(
            f"stage {name!r} cannot be loaded on the Dask worker on {socket.gethostname()} ({err}); "
            "install its distribution where the workers run."
        ) from err
    start, stop = rows
    lo, hi = max(0, start - stage.overlap), min(n_rows, stop + stage.overlap)
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


def run_extra_stages(
    sink: ResultSink,
    source: VolumeTarget,
    shape: tuple[int, int, int],
    blocks: list[tuple[int, int]],
    params: Any,
    client: Client,
    provenance: Provenance,
    progress: bool = False,
) -> dict[str, Any]:
    """Run every stage of ``params.extra_stages`` on ``source``; return the metadata to add."""
    metrics: dict[str, dict[str, float]] = {}
    records = []
    for name in params.extra_stages:
        registered = load_stage(name)
        stage = registered.stage
        kwargs = dict((params.stage_params or {}).get(name, {}))
        records.append({"name": name, **registered.source, "output": stage.output, "params": kwargs})
        with provenance.stage(name):
            target = None
            if stage.output == "volume":
                target = sink.new_volume(
                    name,
                    shape,
                    params.rows_per_block,
                    dtype=np.dtype(stage.dtype),
                    metadata={"stage": name, "source": "recon", "params": kwargs},
                )
            args = [(name, kwargs, source, target, i, rows, shape[0]) for i, rows in enumerate(blocks)]
            results = run_blocks(client, name, stage_block, args, progress, None)
        if stage.output == "metrics":
            metrics[name] = _slice_weighted_mean(name, results)
    provenance.results["extra_stages"] = records
    return {"metrics": metrics} if metrics else {}


def _slice_weighted_mean(name: str, results: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    keys = set(results[0][1])
    if any(set(m) != keys for _, m in results):
        raise BadInputError(f"stage {name!r} returned different metric names for different blocks.")
    total = sum(n for n, _ in results)
    return {key: sum(n * m[key] for n, m in results) / total for key in sorted(keys)}
