"""Tomography's Noise2Inverse stage: split reconstructions, a model trained on them, a denoised volume.

Split reconstructions (Dask, one task per row block) go to a scratch Zarr beside the spool,
removed afterwards; the model trains on the processing thread within the configured budget;
inference runs on Dask block by block, on GPU workers where the cluster has them.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from distributed import Client

from ...engine.blocks import row_blocks, run_blocks
from ...engine.cluster import gpu_resources
from ...engine.provenance import Provenance
from ...errors import BadInputError
from ...store import VolumeTarget
from .params import PipelineParams
from .reconstruction import read_sinograms, recon_resources
from .spool import ProjectionSpool

if TYPE_CHECKING:  # torch is imported only when the stage runs
    from ...ml.noise2inverse import DenoiseConfig


def split_block(
    spool_path: str,
    scratch_path: str,
    rows: tuple[int, int],
    angles: np.ndarray,
    center: float,
    params: PipelineParams,
) -> float:
    """Dask task: the ``k`` split reconstructions of rows ``[start, stop)`` into the scratch Zarr."""
    import zarr

    from ...ml.noise2inverse import split_reconstructions

    if params.denoise is None:
        raise BadInputError("split_block: params.denoise is None; give a DenoiseConfig to denoise.")
    start = time.perf_counter()
    projections = read_sinograms(spool_path, rows, params)
    splits = split_reconstructions(
        projections,
        angles,
        center,
        k=params.denoise.k,
        method=params.method,
        filter=params.filter,
        ncore=1,
    )
    zarr.open_array(scratch_path, mode="r+")[:, rows[0] : rows[1]] = splits
    return time.perf_counter() - start


def denoise_block(
    blob: bytes,
    scratch_path: str,
    index: int,
    rows: tuple[int, int],
    config: DenoiseConfig,
    target: VolumeTarget,
) -> float:
    """Dask task: denoise rows ``[start, stop)`` from the scratch splits and write them to ``target``."""
    import zarr

    from ...ml.denoising import denoise
    from ...ml.model_store import model_from_bytes

    start = time.perf_counter()
    splits = zarr.open_array(scratch_path, mode="r")
    out = denoise(model_from_bytes(blob), splits, rows=rows, config=replace(config, threads=1))
    target.write_block(index, out)
    return time.perf_counter() - start


def denoise_scan(
    spool: ProjectionSpool,
    sink: Any,
    params: PipelineParams,
    client: Client,
    provenance: Provenance,
    center: float,
    *,
    model_client: Any = None,
    sample_class: str = "unspecified",
    scan_uids: tuple[str, ...] = (),
    progress: bool = True,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> str | None:
    """Noise2Inverse on a finished spool: ``sink``'s ``denoised`` volume, same shape as ``recon``.

    Split reconstructions (Dask, one task per row block) go to a scratch Zarr beside the
    spool, removed afterwards; the model trains on this thread with ``params.denoise``'s
    budget; inference runs on Dask block by block, on GPU workers where the cluster has
    them (:func:`gpu_resources`). When ``model_client`` (a Tiled root) is
    given the model is stored there (:func:`tomolive.ml.model_store.save_model`). Returns its id,
    or None when it was not stored.
    """
    import zarr

    from ...ml.model_store import model_to_bytes
    from ...ml.noise2inverse import train

    config = params.denoise
    if config is None:
        raise BadInputError("denoise_scan: params.denoise is None; give a DenoiseConfig to denoise.")
    angles = np.deg2rad(np.asarray(spool.angles, dtype=np.float64))
    n_rows, n_cols = spool.frame_shape
    blocks = row_blocks(n_rows, params.rows_per_block)
    scratch = Path(spool.path).parent / f"{Path(spool.path).stem}-n2i-splits.zarr"
    provenance.parameters["denoise"] = config.as_dict()
    gpu = gpu_resources(client)
    try:
        splits = zarr.create_array(
            store=str(scratch),
            shape=(config.k, n_rows, n_cols, n_cols),
            chunks=(1, params.rows_per_block, n_cols, n_cols),
            dtype=np.float32,
            fill_value=0,
            overwrite=True,
        )
        with provenance.stage("denoise_splits"):
            run_blocks(
                client,
                "n2i-splits",
                split_block,
                [(str(spool.path), str(scratch), rows, angles, center, params) for rows in blocks],
                progress,
                on_progress and (lambda d, t: on_progress("denoise_splits", d, t)),
                resources=recon_resources(params.method, gpu),
            )
        if on_progress:
            on_progress("denoise_train", 0, 1)
        with provenance.stage("denoise_train"):
            result = train(splits, config)
        blob = model_to_bytes(result.model)
        model_id = None
        if model_client is not None:
            from ...ml.model_store import save_model

            model_id = save_model(
                model_client,
                result.model,
                sample_class=sample_class,
                training=result,
                scan_uids=list(scan_uids),
            )
        from ...ml.model_store import sha256

        provenance.results["denoise"] = {
            "model_id": model_id,
            "sha256": sha256(blob),
            "steps": result.steps,
            "stopped": result.stopped,
            "train_seconds": result.seconds,
            "final_loss": result.losses[-1] if result.losses else None,
        }
        target = sink.new_volume(
            "denoised",
            (n_rows, n_cols, n_cols),
            params.rows_per_block,
            metadata={
                "units": "attenuation per pixel",
                "method": "noise2inverse",
                "model_id": model_id,
                "center": center,
            },
        )
        with provenance.stage("denoise"):
            run_blocks(
                client,
                "n2i-denoise",
                denoise_block,
                [(blob, str(scratch), i, rows, config, target) for i, rows in enumerate(blocks)],
                progress,
                on_progress and (lambda d, t: on_progress("denoise", d, t)),
                resources=gpu,
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return model_id
