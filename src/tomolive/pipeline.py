"""The stage graph: cut a spooled scan into row blocks and reconstruct them on Dask.

Each block task reads its rows from the scratch spool, runs preprocess -> recon, and
writes its slab straight into the Tiled array; the client only sees progress, never
the volume.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future as LocalFuture
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from dask import config as dask_config
from distributed import Client, Future, LocalCluster, as_completed
from tqdm.auto import tqdm

from .errors import BadInputError
from .preprocess import (
    CenterResult,
    check_finite,
    find_center,
    normalize,
    paganin,
    remove_stripes,
    remove_zingers,
)
from .provenance import Provenance
from .recon import reconstruct
from .spool import ProjectionSpool, read_rows
from .stages import check_stage_names
from .store import VolumeTarget

if TYPE_CHECKING:  # torch is imported only when the denoise stage runs
    from .ml.noise2inverse import DenoiseConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PaganinParams:
    """Single-distance phase retrieval (see :func:`tomolive.preprocess.paganin`).

    Lengths in metres, energy in keV; ``delta_beta`` is the sample's delta/beta ratio.
    """

    pixel_size: float
    distance: float
    energy: float
    delta_beta: float = 1000.0


@dataclass(frozen=True)
class PipelineParams:
    """Every knob of the processing stages; all of it goes into provenance.

    Parameters
    ----------
    flat_reduce : {"median", "mean"}
        How dark and flat stacks are combined.
    zinger_threshold : float or None
        Replace raw pixels brighter than ``(1 + threshold)`` times their 3x3 median
        (e.g. 0.3); None (default) skips zinger removal.
    paganin : PaganinParams or None
        Phase retrieval on each projection; None (default) for plain absorption contrast.
    method : str
        Reconstruction backend name (see :func:`tomolive.recon.available_methods`), or ``"auto"``.
    filter : str
        Reconstruction filter (``"ramp"``, ``"shepp-logan"``, ``"hann"``, ``"parzen"``).
    center : float or None
        Rotation-axis column in pixels (pixel j's centre at j); None finds it automatically.
    center_method : {"auto", "registration", "vo"}
        How the centre is found when ``center`` is None (see :func:`tomolive.preprocess.find_center`).
    center_rows : int
        Detector rows around the middle used to find the centre.
    stripe_method : {"none", "sort", "combined"}
        Ring-artefact (stripe) removal applied to each block before reconstruction.
    rows_per_block : int
        Detector rows per Dask task and per Zarr chunk of the results; even, because the
        gridrec backend reconstructs rows in pairs and blocks must pair rows the same way
        whatever the number of workers.
    preview_rows : tuple of int, or None
        Detector rows reconstructed live during the scan; None for the central row and the
        rows a quarter from each end, ``()`` for no preview.
    preview_size : int
        The preview is binned to at most this many pixels across.
    preview_interval_s : float
        The preview is published to Tiled at most this often (default 2 s). Each publish of
        the default 3 x 512 x 512 preview is two Tiled requests, 0.36-0.39 s of the server's
        CPU (measured on 2 vCPUs): at 1 s, a third of a core. The web view looks every 3 s.
    segment : {"auto", "unet", "otsu"} or None
        Segment the volume into phases (``segmented``, porosity, phase fractions, pore count;
        see :mod:`tomolive.analysis`); None (default) skips it. ``auto`` takes the shipped
        network when its phases match ``n_phases``, else multi-Otsu.
    n_phases : int or None
        Phases in the sample (pore counts as one); None for the network's (3).
    qc_thresholds : dict or None
        Overrides of :class:`tomolive.qc.QCThresholds` (e.g. ``{"max_ring_severity": 0.01}``);
        QC numbers and alerts are computed for every scan.
    denoise : DenoiseConfig or None
        Noise2Inverse denoising after the reconstruction (see :mod:`tomolive.ml.noise2inverse`):
        ``k`` split reconstructions, a model trained on them (``steps``/``time_budget``),
        stored in Tiled's ``models/`` when the result goes to Tiled, and a ``denoised``
        volume beside ``recon``. None (default) skips it.
    extra_stages : tuple of str
        Stages run after the built-in ones, in order, on ``recon`` block by block (see
        :mod:`tomolive.stages`: built-in names and the ``tomolive.stages`` entry points).
    stage_params : dict or None
        Keyword parameters per extra stage, e.g. ``{"median": {"size": 3}}``.
    """

    flat_reduce: str = "median"
    zinger_threshold: float | None = None
    paganin: PaganinParams | None = None
    method: str = "auto"
    filter: str = "ramp"
    center: float | None = None
    center_method: str = "auto"
    center_rows: int = 8
    stripe_method: str = "none"
    rows_per_block: int = 16
    segment: str | None = None
    n_phases: int | None = None
    qc_thresholds: dict[str, float] | None = None
    preview_rows: tuple[int, ...] | None = None
    preview_size: int = 512
    preview_interval_s: float = 2.0
    denoise: DenoiseConfig | None = None
    extra_stages: tuple[str, ...] = ()
    stage_params: dict[str, dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if self.rows_per_block < 2 or self.rows_per_block % 2:
            raise BadInputError(f"rows_per_block must be an even number >= 2; got {self.rows_per_block!r}.")
        if self.center is None and self.center_rows < 1:
            raise BadInputError(f"center_rows must be >= 1 to find the centre; got {self.center_rows!r}.")
        check_stage_names(self.extra_stages, self.stage_params)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ResultSink(Protocol):
    """Where a scan's volumes go: a Tiled record (``store.ScanRecord``) or the local outbox."""

    def new_volume(
        self,
        key: str,
        shape: tuple[int, int, int],
        rows_per_block: int,
        dtype: np.dtype = ...,
        metadata: dict | None = None,
    ) -> VolumeTarget: ...


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


WORKER_ENVIRON = {
    "MALLOC_MMAP_THRESHOLD_": str(64 * 2**20),
    "MALLOC_TRIM_THRESHOLD_": str(256 * 2**20),
    "MALLOC_ARENA_MAX": "1",
}
"""glibc allocator settings for worker processes (set before they start).

Dask gives its workers ``MALLOC_TRIM_THRESHOLD_=65536``, which also pins glibc's mmap
threshold at 128 KiB: every block-sized buffer is then a fresh mmap, zero-filled page by
page and unmapped when freed (~18,000 page faults, +30 % time per 512^2 reconstruction
block). Block tasks allocate buffers of the same sizes task after task, so these keep
allocations under 64 MiB in the heap and return freed memory above 256 MiB. One arena:
a block's buffers are also allocated on the threads Zarr encodes and writes on, and
glibc gives each thread an arena of its own, whose heaps it may unmap once empty and map
again, zero-filled, for the next block. With every thread on the main heap, the 32 blocks
of a 512^3 scan took 1-5 thousand page faults per worker instead of 8-55 thousand, and
their writes 0.06-0.13 s of system time per worker instead of 0.25-0.28 (2 workers,
measured). As in Dask, a variable already set in the environment wins.
"""


HOUSEKEEPING = {
    "distributed.admin.tick.interval": "500ms",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.profile.interval": "100ms",
    "distributed.worker.memory.monitor-interval": "500ms",
}
"""Dask's periodic work, slowed for a cluster that shares its cores with the scan.

At Dask's defaults (event-loop tick every 20 ms, stack sampling every 10 ms, memory and
system polls every 0.1-0.5 s) an idle 2-worker LocalCluster costs 0.17 of a core: 0.08
in the scheduler process, 0.045 in each worker. These values cut that to about 0.03 and
keep each feature: blocked-loop warnings (after 3 s), the dashboard's profiles and system
plots, and the nanny's memory limits.
"""


def local_cluster(n_workers: int | None = None, **kwargs: Any) -> LocalCluster:
    """A LocalCluster of single-threaded worker processes with :data:`WORKER_ENVIRON`
    and :data:`HOUSEKEEPING`.

    ``n_workers`` defaults to one per core (at most 8); ``kwargs`` go to ``LocalCluster``.
    """
    workers = n_workers or max(1, min(os.cpu_count() or 1, 8))
    environ = {f"distributed.nanny.pre-spawn-environ.{name}": value for name, value in WORKER_ENVIRON.items()}
    with dask_config.set({**HOUSEKEEPING, **environ}):
        return LocalCluster(
            **{"n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": ":0", **kwargs}
        )


def connect_dask(dask: Client | str | None) -> tuple[Client, bool]:
    """A Dask client for ``dask`` (a client, a scheduler address, or None for a :func:`local_cluster`).

    Returns the client and whether the caller owns it (and must close it). A client made here
    is not the process's default, so the user's own ``.compute()`` calls (and Tiled's client,
    which reads arrays through Dask) keep running where they did, not on the scan's workers.
    """
    if isinstance(dask, Client):
        return dask, False
    if isinstance(dask, str):
        return Client(dask, set_as_default=False), True
    return Client(local_cluster(), set_as_default=False), True


GPU = "GPU"
"""The Dask resource GPU workers advertise (``dask worker --resources GPU=1``)."""


def gpu_resources(client: Client) -> dict[str, float] | None:
    """``{"GPU": 1}`` when a worker of ``client``'s cluster advertises a GPU, else None.

    Torch tasks pass this as ``resources=`` so they land on GPU workers; on a cluster
    without the resource they must run anywhere, since a restriction no worker can meet
    leaves tasks waiting forever.
    """
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return {GPU: 1} if any(w.get("resources", {}).get(GPU, 0) > 0 for w in workers) else None


def _recon_resources(method: str, gpu: dict[str, float] | None) -> dict[str, float] | None:
    """GPU workers for torch FBP: ``fbp``, and ``auto`` (which takes it on a CUDA worker),
    so that every block of a scan is reconstructed by the same backend."""
    return gpu if method in ("fbp", "auto") else None


def reconstruct_block(
    spool_path: str,
    index: int,
    rows: tuple[int, int],
    angles: np.ndarray,
    center: float,
    params: PipelineParams,
    target: VolumeTarget,
    keep_rows: tuple[int, ...] = (),
) -> tuple[float, str, dict[int, np.ndarray]]:
    """Dask task: reconstruct rows ``[start, stop)`` and write them to ``target``.

    Returns the task's seconds of work, how the block was written (``zarr``/``http``) and
    copies of the slices of ``keep_rows`` that it holds, for work on them (QC) that would
    otherwise read back and decompress the whole stored chunk.
    """
    start = time.perf_counter()
    projections = read_rows(spool_path, *rows)
    if params.stripe_method != "none":
        projections = remove_stripes(projections, params.stripe_method)
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
    return time.perf_counter() - start, how, kept


def _without_slices(result: tuple[float, str, dict[int, np.ndarray]]) -> tuple[float, str, dict]:
    """Dask task: a block's result without its kept slices, for the client to gather."""
    return result[0], result[1], {}


def find_scan_center(spool: ProjectionSpool, angles: np.ndarray, params: PipelineParams) -> CenterResult:
    """The user's centre if given, else one found on ``params.center_rows`` middle rows."""
    if params.center is not None:
        return CenterResult(float(params.center), "given", 1.0, {})
    n_rows = spool.frame_shape[0]
    first = max(0, n_rows // 2 - params.center_rows // 2)
    rows = read_rows(str(spool.path), first, min(n_rows, first + params.center_rows))
    return find_center(rows, angles, method=params.center_method)


def row_blocks(n_rows: int, rows_per_block: int) -> list[tuple[int, int]]:
    """``[start, stop)`` row ranges covering ``n_rows``."""
    return [(r, min(r + rows_per_block, n_rows)) for r in range(0, n_rows, rows_per_block)]


@dataclass
class BlockRun:
    """Block tasks submitted to Dask; :meth:`wait` gathers them with progress.

    ``futures`` maps block index to task, in the order the tasks were submitted, which is
    the order Dask starts them in; ``behind`` are tasks some of them wait on, cancelled
    with them.
    """

    client: Client
    name: str
    futures: dict[int, Future]
    behind: tuple[Future, ...] = ()

    def wait(self, progress: bool, on_progress: Callable[[int, int], None] | None) -> list[Any]:
        """Every block's result, in block order; returns only when every block is in.

        ``on_progress(done, total)`` is called after each block (it decides what to send).
        A failed block raises here as soon as it fails, and the blocks not yet run are
        cancelled (as they are when ``on_progress`` raises). The results are gathered once, at
        the end: one request per worker instead of one per block (a third less client CPU
        per block task, measured on a 2-worker LocalCluster).

        A block whose worker died is rerun by Dask (up to
        ``distributed.scheduler.allowed-failures`` deaths, then ``KilledWorker`` is raised
        here), so block functions must be idempotent (each block writes whole chunks).
        """
        total = len(self.futures)
        try:
            with tqdm(total=total, desc=self.name, unit="block", disable=not progress) as bar:
                # as_completed defaults to the process's newest client's event loop; a second client
                # (a user's own, say) would then own the futures' events and a rerun block's
                # result() would fail with "bound to a different event loop".
                for done, future in enumerate(as_completed(self.futures.values(), loop=self.client.loop), start=1):
                    if future.status != "finished":
                        future.result()  # raises the block's error
                    bar.update()
                    if on_progress:
                        on_progress(done, total)
        except BaseException:
            # a failed run's work is not done for nothing: tasks already running finish, the
            # others are dropped, and so is the work waiting on them (QC)
            self.client.cancel([*self.futures.values(), *self.behind])
            raise
        return self.client.gather([self.futures[i] for i in sorted(self.futures)])


def submit_blocks(
    client: Client,
    name: str,
    function: Callable,
    args: list[tuple],
    *,
    resources: dict[str, float] | None = None,
    first: Sequence[int] = (),
) -> BlockRun:
    """Submit ``function(*args[i])`` for each block ``i`` on Dask: blocks ``first`` first
    (for work that needs them early), then the others in order."""
    run = uuid.uuid4().hex
    order = [*first, *(i for i in range(len(args)) if i not in first)]
    futures = {
        i: client.submit(function, *args[i], pure=False, key=f"{name}-block-{i}-{run}", resources=resources)
        for i in order
    }
    return BlockRun(client, name, futures)


def blocks_holding(blocks: list[tuple[int, int]], rows: Sequence[int]) -> list[int]:
    """Indices of the ``[start, stop)`` blocks that hold any of ``rows``."""
    return [i for i, (start, stop) in enumerate(blocks) if any(start <= row < stop for row in rows)]


def run_blocks(
    client: Client,
    name: str,
    function: Callable,
    args: list[tuple],
    progress: bool,
    on_progress: Callable[[int, int], None] | None,
    *,
    resources: dict[str, float] | None = None,
) -> list[Any]:
    """Submit ``function(*a)`` for each ``a`` in ``args`` on Dask and wait for them all
    (see :meth:`BlockRun.wait`); results in block order."""
    return submit_blocks(client, name, function, args, resources=resources).wait(progress, on_progress)


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
            "task_seconds": round(sum(seconds for seconds, _, _ in results), 3),
            "block_writes": dict(Counter(how for _, how, _ in results)),
        }


def new_recon_volume(sink: ResultSink, frame_shape: tuple[int, int], params: PipelineParams) -> VolumeTarget:
    """``sink``'s empty ``recon`` volume for frames of ``frame_shape``: one slice per detector row.

    It depends on the frame shape only (not on the angles or the centre, which go into the
    container's provenance), so it can be made as soon as the first frame arrives.
    """
    n_rows, n_cols = frame_shape
    return sink.new_volume(
        "recon", (n_rows, n_cols, n_cols), params.rows_per_block, metadata={"units": "attenuation per pixel"}
    )


def start_reconstruction(
    spool: ProjectionSpool,
    sink: ResultSink,
    params: PipelineParams,
    client: Client,
    provenance: Provenance,
    *,
    first_rows: Sequence[int] = (),
    volume: LocalFuture[VolumeTarget] | None = None,
) -> Reconstruction:
    """Find the centre, create ``sink``'s ``recon`` volume (unless given) and submit its blocks to Dask.

    Returns at once; :meth:`Reconstruction.wait` waits for the blocks. The blocks holding
    ``first_rows`` are submitted first and return those rows' slices to the tasks that ask
    for them (:meth:`Reconstruction.futures_for_rows`), so work on those rows can start
    early without reading them back; the client gathers only the blocks' timings.
    ``volume`` is the ``recon`` volume when it is already being made (a future of
    :func:`new_recon_volume`, started during the scan); else it is made on a thread while
    the centre is found (creating an array is two Tiled requests: at the stop, they took
    1.2 s of a 512^3 scan's start, queued behind the preview's last publish).
    """
    angles = np.deg2rad(np.asarray(spool.angles, dtype=np.float64))
    if len(angles) < 2:
        raise BadInputError(f"a scan needs at least 2 projections to reconstruct; got {len(angles)}.")
    n_rows, _n_cols = spool.frame_shape
    with ThreadPoolExecutor(1, thread_name_prefix="tomolive-new-volume") as pool:
        if volume is None:
            volume = pool.submit(new_recon_volume, sink, spool.frame_shape, params)
        with provenance.stage("center"):
            center = find_scan_center(spool, angles, params)
        provenance.results["center"] = center.as_dict()
        target = volume.result()
    started = time.perf_counter()
    blocks = row_blocks(n_rows, params.rows_per_block)
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
        resources=_recon_resources(params.method, gpu),
        first=first,
    )
    with_slices = {i: run.futures[i] for i in first}
    for i, future in with_slices.items():
        run.futures[i] = client.submit(_without_slices, future, key=future.key.replace("-block-", "-timing-", 1))
    run.behind = tuple(with_slices.values())
    return Reconstruction(center, target, blocks, run, gpu is not None, provenance, started, with_slices)


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

    from .ml.noise2inverse import split_reconstructions

    start = time.perf_counter()
    projections = read_rows(spool_path, *rows)
    if params.stripe_method != "none":
        projections = remove_stripes(projections, params.stripe_method)
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

    from .ml.denoising import denoise
    from .ml.model_store import model_from_bytes

    start = time.perf_counter()
    splits = zarr.open_array(scratch_path, mode="r")
    out = denoise(model_from_bytes(blob), splits, rows=rows, config=replace(config, threads=1))
    target.write_block(index, out)
    return time.perf_counter() - start


def denoise_scan(
    spool: ProjectionSpool,
    sink: ResultSink,
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

    from .ml.model_store import model_to_bytes
    from .ml.noise2inverse import train

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
                resources=_recon_resources(params.method, gpu),
            )
        if on_progress:
            on_progress("denoise_train", 0, 1)
        with provenance.stage("denoise_train"):
            result = train(splits, config)
        blob = model_to_bytes(result.model)
        model_id = None
        if model_client is not None:
            from .ml.model_store import save_model

            model_id = save_model(
                model_client,
                result.model,
                sample_class=sample_class,
                training=result,
                scan_uids=list(scan_uids),
            )
        from .ml.model_store import sha256

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
