"""Tomography after reconstruction: segmentation into phases, phase statistics, QC numbers and alerts.

QC runs for every scan (a few slices, about a second): SNR/CNR, ring severity, edge width
and the centre-finding confidence, with alerts where a number passes its threshold
(:class:`tomolive.qc.QCThresholds`, overridable by ``PipelineParams.qc_thresholds``). It is
a Dask task: without segmentation it starts as soon as the blocks holding its slices are
written (:func:`submit_qc` with ``after``), overlapping the rest of the reconstruction.
Segmentation runs when ``PipelineParams.segment`` names a method: one decision per scan
(:func:`tomolive.ml.segmentation.choose_method`), then row blocks on Dask (U-Net blocks on GPU
workers where the cluster has them), each worker writing its ``segmented`` slab, then
porosity, phase fractions and connected-pore count.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from distributed import Client, Future

from ...engine.cluster import gpu_resources
from ...ml.segmentation import choose_method, segment_volume
from ...qc import QCThresholds, qc_alerts, qc_metrics, sampled_slices
from ...segment import intensity_range, otsu_thresholds, phase_statistics
from ...stages import StageContext, VolumeRef, overlapping
from ...store import VolumeTarget
from .params import PipelineParams
from .reconstruction import BlockResult

logger = logging.getLogger(__name__)


def segment_block(
    source: VolumeTarget,
    target: VolumeTarget,
    index: int,
    rows: tuple[int, int],
    n_rows: int,
    method: str,
    model: str | None,
    n_phases: int,
    value_range: tuple[float, float],
    thresholds: list[float] | None,
) -> None:
    """Dask task: segment rows ``[start, stop)`` (reading one neighbour slice each side)."""
    import torch

    torch.set_num_threads(1)  # one task per single-threaded worker
    start, stop = rows
    lo, hi = overlapping(rows, 1, n_rows)
    labels, _ = segment_volume(
        source.open()[lo:hi],
        method,
        model,
        n_phases=n_phases,
        value_range=value_range,
        thresholds=thresholds,
        context=(start - lo, hi - stop),
    )
    target.write_block(index, labels)


def measure_quality(
    volume: VolumeTarget,
    labels: VolumeTarget | None,
    n_phases: int,
    center_confidence: float | None,
    thresholds: QCThresholds,
    after: Sequence[BlockResult] = (),
) -> dict[str, Any]:
    """Dask task: QC numbers and alerts of ``volume``.

    ``after`` holds the results of the tasks it waited for; where these are block results
    carrying every slice QC samples (:func:`.reconstruction.reconstruct_block`), and
    there are no labels, those slices are measured instead of reading the stored chunks.
    """
    start = time.perf_counter()
    stored = volume.open()
    source = stored if labels is not None else _with_kept_slices(stored, after)
    metrics = qc_metrics(
        source, None if labels is None else labels.open(), n_phases=n_phases, center_confidence=center_confidence
    )
    return {"metrics": metrics, "alerts": qc_alerts(metrics, thresholds), "seconds": time.perf_counter() - start}


@dataclass(frozen=True)
class KeptSlices:
    """Slices of a volume held in memory, indexed by slice number like the volume itself."""

    shape: tuple[int, ...]
    slices: dict[int, np.ndarray]

    def __getitem__(self, z: int) -> np.ndarray:
        return self.slices[z]


def _with_kept_slices(stored: Any, after: Sequence[BlockResult]) -> Any:
    """The slices QC samples as the block tasks kept them, if they kept them all; else ``stored``."""
    kept = {row: image for result in after for row, image in result.kept.items()}
    if all(z in kept for z in sampled_slices(stored.shape[0])):
        return KeptSlices(tuple(stored.shape), kept)
    return stored


def early_qc_rows(params: PipelineParams, n_rows: int) -> list[int]:
    """Rows to reconstruct first so QC can start during the reconstruction: its slices
    when QC reads ``recon`` alone, none when it must wait for the segmentation's labels."""
    return [] if params.segment else sampled_slices(n_rows)


def submit_qc(
    client: Client,
    volume: VolumeTarget,
    labels: VolumeTarget | None,
    params: PipelineParams,
    center_confidence: float | None,
    after: Sequence[Future] = (),
) -> Future:
    """Queue :func:`measure_quality` on Dask, to run once ``after`` is done, ahead of other queued blocks."""
    thresholds = QCThresholds.from_mapping(params.qc_thresholds or {})  # bad keys fail here, not on a worker
    return client.submit(
        measure_quality,
        volume,
        labels,
        params.n_phases or 3,
        center_confidence,
        thresholds,
        list(after),
        key=f"qc-{uuid.uuid4().hex}",
        priority=1,
    )


def segment_recon(ctx: StageContext) -> VolumeRef:
    """Segment ``ctx.volumes["recon"]`` into phases: the ``segmented`` volume, phase statistics in metadata."""
    params = ctx.params
    recon = ctx.volumes["recon"]
    client = ctx.dask_client()
    volume = recon.target.open()
    with ctx.provenance.stage("segment"):
        method, model, reason = choose_method(params.segment, None, params.n_phases)
        n_phases = model.n_classes if model is not None else (params.n_phases or 3)
        value_range = intensity_range(volume)
        thresholds = otsu_thresholds(volume, n_phases) if method == "otsu" else None
        labels = ctx.store.new_volume(
            "segmented",
            tuple(volume.shape),
            recon.rows_per_block,
            dtype=np.dtype(np.uint8),
            metadata={"phases": list(model.phases) if model else None},
        )
        name = model.name if model is not None else None
        args = [
            (recon.target, labels, i, rows, volume.shape[0], method, name, n_phases, value_range, thresholds)
            for i, rows in enumerate(recon.blocks)
        ]
        ctx.run_blocks("segment", segment_block, args, resources=gpu_resources(client) if method == "unet" else None)
        stats = phase_statistics(labels.open(), n_phases)
    ctx.provenance.parameters["segment"] = {"method": params.segment, "n_phases": params.n_phases}
    ctx.provenance.results["segment"] = {
        "method": method,
        "reason": reason,
        "n_phases": n_phases,
        "value_range": list(value_range),
        "model": None if model is None else {"name": model.name, "sha256": model.sha256},
    }
    ctx.metadata.update(phases=stats, porosity=stats.get("porosity"))
    return VolumeRef(labels, recon.shape, recon.blocks)


def record_quality(ctx: StageContext, qc: Future | None) -> None:
    """Wait for QC (``qc``, submitted early, or submitted now on ``recon`` and any labels); keep its numbers."""
    if qc is None:
        labels = ctx.volumes.get("segmented")
        confidence = ctx.results["center"].confidence
        qc = submit_qc(
            ctx.dask_client(),
            ctx.volumes["recon"].target,
            labels.target if labels else None,
            ctx.params,
            confidence,
        )
    quality = qc.result()
    ctx.provenance.stage_seconds["qc"] = round(quality["seconds"], 4)
    for alert in quality["alerts"]:
        logger.warning("tomolive QC: %s", alert)
    ctx.metadata["qc"] = {**quality["metrics"], "alerts": quality["alerts"]}
