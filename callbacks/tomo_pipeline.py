"""``TomoPipeline``: subscribe it to a RunEngine and every tomography scan is reconstructed.

Per frame (on the RunEngine thread, a few milliseconds): darks and flats are kept, each
projection is normalised and appended to a Zarr scratch spool. On the stop document the
reconstruction is handed to a background thread that drives Dask, so the RunEngine never
waits for it and never sees its errors: failures are logged and recorded in Tiled as
``status: failed`` with the reason.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client
from event_model import DocumentRouter, RunRouter
from tiled.client.base import BaseClient

from tomolive.errors import BadInputError, MissingDataError
from tomolive.pipeline import PipelineParams, connect_dask, prepare_projection, reconstruct_scan
from tomolive.preprocess import reduce_frames
from tomolive.provenance import Provenance
from tomolive.spool import ProjectionSpool
from tomolive.store import ScanRecord, connect

logger = logging.getLogger(__name__)
CALIBRATION_STREAMS = ("dark", "flat")


@dataclass(frozen=True)
class ProcessedRun:
    """Outcome of one scan: ``status`` is ``complete``, ``failed`` or ``aborted``."""

    uid: str
    status: str
    uri: str | None
    reason: str | None = None


class TomoPipeline:
    """A Bluesky callback that reconstructs tomography scans into Tiled.

    Parameters
    ----------
    client : tiled BaseClient
        Writable client at the Tiled server root (see :meth:`from_uri`).
    dask : distributed.Client, str or None
        Where blocks run: a client, a scheduler address, or None for a LocalCluster
        started on first use and closed by :meth:`close`.
    params : PipelineParams, optional
        Processing parameters (recorded in provenance).
    scratch_dir : path, optional
        Where projection spools live during a scan (default: the system temp dir).
    progress : bool
        Show a progress bar in the terminal.

    Examples
    --------
    >>> pipe = TomoPipeline.from_uri("http://127.0.0.1:8000", api_key="...")  # doctest: +SKIP
    >>> RE.subscribe(pipe)  # doctest: +SKIP
    >>> RE(tomo_scan(...)); pipe.wait()  # doctest: +SKIP
    """

    def __init__(
        self,
        client: BaseClient,
        *,
        dask: Client | str | None = None,
        params: PipelineParams | None = None,
        scratch_dir: str | Path | None = None,
        progress: bool = True,
    ):
        self.client = client
        self.params = params or PipelineParams()
        self.scratch_dir = Path(scratch_dir or tempfile.gettempdir())
        self.progress = progress
        self._dask_spec = dask
        self._dask: Client | None = None
        self._owns_dask = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tomolive")
        self._futures: dict[str, Future[ProcessedRun]] = {}
        self._lock = threading.Lock()
        self._router = RunRouter([self._factory])

    @classmethod
    def from_uri(cls, uri: str, *, api_key: str | None = None, **kwargs: Any) -> TomoPipeline:
        """A pipeline writing to the Tiled server at ``uri``."""
        return cls(connect(uri, api_key=api_key), **kwargs)

    def __call__(self, name: str, doc: dict) -> None:
        self._router(name, doc)

    def _factory(self, name: str, start_doc: dict) -> tuple[list, list]:
        if "tomo" not in start_doc:
            logger.debug("run %s is not a tomography scan; ignored", start_doc["uid"])
            return [], []
        return [_ScanProcessor(self, start_doc)], []

    def _submit(self, uid: str, job: Any) -> None:
        with self._lock:
            self._futures[uid] = self._executor.submit(job)

    def _resolve(self, uid: str, run: ProcessedRun) -> None:
        """Record the outcome of a run that ended without processing (aborted or bad input)."""
        future: Future[ProcessedRun] = Future()
        future.set_result(run)
        with self._lock:
            self._futures.setdefault(uid, future)

    def dask_client(self) -> Client:
        """The Dask client, connecting (or starting a LocalCluster) on first use."""
        if self._dask is None:
            self._dask, self._owns_dask = connect_dask(self._dask_spec)
        return self._dask

    def wait(self, uid: str | None = None, timeout: float | None = None) -> ProcessedRun:
        """Block until scan ``uid`` (default: the latest) is processed; return its outcome."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if uid is None and self._futures:
                    future = list(self._futures.values())[-1]
                else:
                    future = self._futures.get(uid) if uid else None
            if future is not None:
                return future.result(timeout=None if deadline is None else deadline - time.monotonic())
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"no result for run {uid or '(latest)'} within {timeout} s")
            time.sleep(0.05)

    def close(self) -> None:
        """Finish queued work and release the Dask cluster this pipeline started."""
        self._executor.shutdown(wait=True)
        if self._dask is not None and self._owns_dask:
            cluster = self._dask.cluster
            self._dask.close()
            if cluster is not None:
                cluster.close()
        self._dask = None

    def __enter__(self) -> TomoPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ScanProcessor(DocumentRouter):
    """Per-run state: darks, flats, the spool, and the run's Tiled record."""

    def __init__(self, owner: TomoPipeline, start_doc: dict):
        super().__init__()
        self.owner = owner
        self.uid: str = start_doc["uid"]
        self.tomo: dict = start_doc["tomo"]
        self.streams: dict[str, str] = {}
        self.calibration: dict[str, list[np.ndarray]] = {name: [] for name in CALIBRATION_STREAMS}
        self.flat: np.ndarray | None = None
        self.dark: np.ndarray | None = None
        self.spool: ProjectionSpool | None = None
        self.failed = False
        self.provenance = Provenance(parameters={"pipeline": owner.params.as_dict()})
        self.record: ScanRecord | None = None
        try:
            self.record = ScanRecord.create(
                owner.client, self.uid, _scan_metadata(start_doc), owner.client.context.api_key
            )
        except Exception as err:  # the server is down or refuses: the RunEngine must go on
            self._fail(err)

    def __call__(self, name: str, doc: dict, validate: bool = False) -> Any:
        if self.failed:
            return None
        try:
            return super().__call__(name, doc, validate)
        except Exception as err:
            self._fail(err)
            return None

    def descriptor(self, doc: dict) -> None:
        field = self.tomo["image_field"]
        if field not in doc["data_keys"]:
            raise BadInputError(
                f"stream {doc['name']!r} has no image field {field!r}; data keys are "
                f"{sorted(doc['data_keys'])!r}."
            )
        self.streams[doc["uid"]] = doc["name"]

    def event_page(self, doc: dict) -> None:
        stream = self.streams.get(doc["descriptor"])
        images = doc["data"][self.tomo["image_field"]]
        if stream in CALIBRATION_STREAMS:
            self.calibration[stream].extend(np.asarray(image) for image in images)
        elif stream == "primary":
            for image, angle in zip(images, doc["data"][self.tomo["angle_field"]]):
                self._add_projection(np.asarray(image), float(angle))

    def _add_projection(self, image: np.ndarray, angle: float) -> None:
        if self.spool is None:
            self._start_spool(image)
        self.spool.append(prepare_projection(image, self.flat, self.dark, self.owner.params), angle)

    def _start_spool(self, image: np.ndarray) -> None:
        for name, frames in self.calibration.items():
            if not frames:
                raise MissingDataError(
                    f"no {name} frames arrived before the first projection; the scan needs a "
                    f"'{name}' stream (tomo_scan(..., n_{name}s=10)) to normalise projections."
                )
        method = self.owner.params.flat_reduce
        self.dark = reduce_frames(np.stack(self.calibration["dark"]), method, name="darks")
        self.flat = reduce_frames(np.stack(self.calibration["flat"]), method, name="flats")
        if self.dark.shape != image.shape:
            raise BadInputError(
                f"projection 0 has shape {image.shape!r} but darks/flats have {self.dark.shape!r}."
            )
        self.provenance.inputs.update(
            frame_shape=list(image.shape), frame_dtype=str(image.dtype),
            n_darks=len(self.calibration["dark"]), n_flats=len(self.calibration["flat"]),
        )  # fmt: skip
        self.calibration = {name: [] for name in CALIBRATION_STREAMS}
        path = self.owner.scratch_dir / f"tomolive-spool-{self.uid}.zarr"
        self.spool = ProjectionSpool.create(
            path, image.shape, self.owner.params.rows_per_block, self.tomo.get("n_angles", 256)
        )

    def stop(self, doc: dict) -> None:
        status = doc.get("exit_status", "success")
        if status != "success":
            reason = doc.get("reason") or f"run ended with exit_status {status!r}"
            self._end("aborted" if status == "abort" else "failed", reason)
            return
        if self.spool is None:
            raise MissingDataError("the scan ended before any projection arrived in 'primary'.")
        self.spool.finish()
        self.provenance.inputs.update(n_angles=len(self.spool), angles_deg=self.spool.angles)
        self.owner._submit(self.uid, self._process)

    def _process(self) -> ProcessedRun:
        """Runs on the pipeline's worker thread: reconstruct, then mark complete or failed."""
        try:
            def on_progress(done: int, total: int) -> None:
                self.record.update(progress={"stage": "recon", "done": done, "total": total})

            reconstruct_scan(
                self.spool, self.record, self.owner.params, self.owner.dask_client(),
                self.provenance, progress=self.owner.progress, on_progress=on_progress,
            )  # fmt: skip
            self.record.set_status(
                "complete", stages=self.stages_done(), provenance=self.provenance.as_dict()
            )
            return ProcessedRun(self.uid, "complete", self.record.node.uri)
        except Exception as err:
            logger.exception("processing of run %s failed", self.uid)
            return self._end("failed", f"{type(err).__name__}: {err}")
        finally:
            if self.spool is not None:
                self.spool.remove()

    def stages_done(self) -> list[str]:
        params = self.owner.params
        optional = {
            "zingers": params.zinger_threshold is not None,
            "paganin": params.paganin is not None,
            "stripes": params.stripe_method != "none",
        }
        return ["normalize", *[name for name, on in optional.items() if on], "center", "recon"]

    def _fail(self, err: Exception) -> None:
        logger.error("tomolive: run %s failed: %s", self.uid, err)
        self._end("failed", f"{type(err).__name__}: {err}")

    def _end(self, status: str, reason: str) -> ProcessedRun:
        """Mark the run ended without a result; never raises."""
        self.failed = True
        if self.spool is not None:
            self.spool.remove()
        uri = None
        if self.record is not None:
            try:
                self.record.set_status(status, reason=reason, provenance=self.provenance.as_dict())
                uri = self.record.node.uri
            except Exception:
                logger.exception("could not record status %r of run %s in Tiled", status, self.uid)
        run = ProcessedRun(self.uid, status, uri, reason)
        self.owner._resolve(self.uid, run)
        return run


def _scan_metadata(start_doc: dict) -> dict:
    """The searchable container metadata taken from a start document."""
    keys = ("sample", "scan_id", "plan_name", "pixel_size_um", "energy_kev", "time")
    md = {key: start_doc[key] for key in keys if key in start_doc}
    md.setdefault("sample", "unknown")
    md["tomo"] = {k: v for k, v in start_doc["tomo"].items() if k != "angles"}
    return md
