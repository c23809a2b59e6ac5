"""Tomography's reconstruction: frame preparation, the rotation centre and the volume's blocks on Dask.

Each block task reads its rows from the scratch spool, removes stripes if asked, reconstructs
and writes its slab straight into the result's ``recon`` array; the client sees only timings.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
from distributed import Client, Future

from ...engine.blocks import BlockRun, blocks_holding, row_blocks, submit_blocks
from ...engine.cluster import gpu_resources
from ...engine.provenance import Provenance
from ...errors import BadInputError
from ...preprocess import CenterResult, find_center, normalize, paganin, remove_stripes, remove_zingers
from ...recon import reconstruct
from ...store import VolumeTarget
from ...validation import check_finite
from .params import PipelineParams
from .spool import ProjectionSpool, read_rows

logger = logging.getLogger(__name__)


def prepare_projection(image: np.ndarray, flat: np.ndarray, dark: np.ndarray, params: PipelineParams) -> np.ndarray:
    """One raw frame -> line integrals: zingers, flat/dark, optional Paganin, -log (float32)."""
    check_finite(image, "projection")
    frame = image
    if params.zinger_threshold is not None:
        frame = remove_zingers(image.astype(np.float32), params.zinger_threshold, relative=True)
    if params.paganin is None:
        return normalize(frame, flat, dark)
    transmission = normalize(frame, flat, dark, minus_log=False)
    retrieved = paganin(transmission, **asdict(params.paganin))
    return -np.log(np.maximum(retrieved, 1e-6, dtype=np.float32))


def read_sinograms(spool_path: str, rows: tuple[int, int], params: PipelineParams) -> np.ndarray:
    """Rows ``[start, stop)`` of every spooled projection, stripes removed when asked: a block's input."""
    projections = read_rows(spool_path, *rows)
    if params.stripe_method != "none":
        projections = remove_stripes(projections, params.stripe_method)
    return projections


def recon_resources(method: str, gpu: dict[str, float] | None) -> dict[str, float] | None:
    """GPU workers for torch FBP: ``fbp``, and ``auto`` (which takes it on a CUDA worker),
    so that every block of a scan is reconstructed by the same backend."""
    return gpu if method in ("fbp", "auto") else None


class BlockResult(NamedTuple):
    """What a reconstruction block task returns: its seconds of work, how it was written
    (``zarr``/``http``) and copies of the slices the caller asked to keep (row -> slice)."""

    seconds: float
    written_by: str
    kept: dict[int, np.ndarray]


def reconstruct_block(
    spool_path: str,
    index: int,
    rows: tuple[int, int],
    angles: np.ndarray,
    center: float,
    params: PipelineParams,
    target: VolumeTarget,
    keep_rows: tuple[int, ...] = (),
) -> BlockResult:
    """Dask task: reconstruct rows ``[start, stop)`` and write them to ``target``.

    The slices of ``keep_rows`` it holds come back in the result, for work on them (QC)
    that would otherwise read back and decompress the whole stored chunk.
    """
    start = time.perf_counter()
    projections = read_sinograms(spool_path, rows, params)
    volume = reconstruct(
        projections,
        angles,
        center=center,
        method=params.method,
        filter=params.filter,
        ncore=1,  # one task per worker thread: more threads would oversubscribe the cores
    )
    how = target.write_block(index, volume)
    kept = {row: volume[row - rows[0]].copy() for row in keep_rows if rows[0] <= row < rows[1]}
    return BlockResult(time.perf_counter() - start, how, kept)


def _without_slices(result: BlockResult) -> BlockResult:
    """Dask task: a block's result without its kept slices, for the client to gather."""
    return result._replace(kept={})


def find_scan_center(spool: ProjectionSpool, angles: np.ndarray, params: PipelineParams) -> CenterResult:
    """The user's centre if given, else one found on ``params.center_rows`` middle rows."""
    if params.center is not None:
        return CenterResult(float(params.center), "given", 1.0, {})
    n_rows = spool.frame_shape[0]
    first = max(0, n_rows // 2 - params.center_rows // 2)
    rows = read_rows(str(spool.path), first, min(n_rows, first + params.center_rows))
    return find_center(rows, angles, method=params.center_method)


@dataclass
class Reconstruction:
    """A scan's reconstruction under way on Dask: its centre, its ``recon`` volume, its blocks."""

    center: CenterResult
    target: VolumeTarget
    blocks: list[tuple[int, int]]
    run: BlockRun
    gpu: bool
    provenance: Provenance
    started: float
    with_slices: dict[int, Future]

    def futures_for_rows(self, rows: Sequence[int]) -> list[Future]:
        """The block tasks that write volume rows ``rows``; those of ``first_rows`` (see
        :func:`start_reconstruction`) return these rows' slices too."""
        return [self.with_slices.get(i, self.run.futures[i]) for i in blocks_holding(self.blocks, rows)]

    def wait(self, progress: bool = True, on_progress: Callable[[int, int], None] | None = None) -> None:
        """Wait for every block; record the ``recon`` stage and the Dask run in provenance."""
        results = self.run.wait(progress, on_progress)
        self.provenance.stage_seconds["recon"] = round(time.perf_counter() - self.started, 4)
        client = self.run.client
        self.provenance.results["dask"] = {
            "scheduler": client.scheduler.address,
            "workers": len(client.scheduler_info()["workers"]),
            "blocks": len(self.blocks),
            "gpu_resource": self.gpu,
            "task_seconds": round(sum(result.seconds for result in results), 3),
            "block_writes": dict(Counter(result.written_by for result in results)),
        }


def new_recon_volume(sink: Any, frame_shape: tuple[int, int], params: PipelineParams) -> VolumeTarget:
    """``sink``'s empty ``recon`` volume for frames of ``frame_shape``: one slice per detector row.

    It depends on the frame shape only (not on the angles or the centre, which go into the
    container's provenance), so it can be made as soon as the first frame arrives.
    """
    n_rows, n_cols = frame_shape
    return sink.new_volume(
        "recon", (n_rows, n_cols, n_cols), params.rows_per_block, metadata={"units": "attenuation per pixel"}
    )


def scan_angles(spool: ProjectionSpool) -> np.ndarray:
    """The spooled projections' angles in radians; at least two are needed to reconstruct."""
    angles = np.deg2rad(np.asarray(spool.angles, dtype=np.float64))
    if len(angles) < 2:
        raise BadInputError(f"a scan needs at least 2 projections to reconstruct; got {len(angles)}.")
    return angles


def submit_reconstruction(
    spool: ProjectionSpool,
    center: CenterResult,
    target: VolumeTarget,
    params: PipelineParams,
    client: Client,
    provenance: Provenance,
    *,
    first_rows: Sequence[int] = (),
) -> Reconstruction:
    """Submit the blocks of ``spool``'s volume to Dask, writing ``target``; returns at once.

    :meth:`Reconstruction.wait` waits for the blocks. The blocks holding ``first_rows`` are
    submitted first and return those rows' slices to the tasks that ask for them
    (:meth:`Reconstruction.futures_for_rows`), so work on those rows (QC) starts early
    without reading them back; the client gathers only the blocks' timings.
    """
    angles = scan_angles(spool)
    started = time.perf_counter()
    blocks = row_blocks(spool.frame_shape[0], params.rows_per_block)
    gpu = gpu_resources(client)
    first = blocks_holding(blocks, first_rows)
    keep = tuple(first_rows)
    run = submit_blocks(
        client,
        "recon",
        reconstruct_block,
        [
            (str(spool.path), i, rows, angles, center.center, params, target, keep if i in first else ())
            for i, rows in enumerate(blocks)
        ],
        resources=recon_resources(params.method, gpu),
        first=first,
    )
    with_slices = {i: run.futures[i] for i in first}
    for i, future in with_slices.items():
        run.futures[i] = client.submit(_without_slices, future, key=str(future.key).replace("-block-", "-timing-", 1))
    run.behind = tuple(with_slices.values())
    return Reconstruction(center, target, blocks, run, gpu is not None, provenance, started, with_slices)
