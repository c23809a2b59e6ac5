"""``TomoPipeline``: subscribe it to a RunEngine and every tomography scan is reconstructed.

Per document (on the RunEngine thread, a few milliseconds per frame): images come inline
in events or from the detector's files (Resource/Datum or StreamResource/StreamDatum,
read by :class:`tomolive.io.assets.AssetResolver`); darks and flats are kept, each projection is normalised, appended to a Zarr scratch spool and handed to the
live preview (see :class:`tomolive.session.ScanSession`). Nothing on the RunEngine thread
waits for Tiled or Dask: the record is created on an I/O thread, the preview reconstructs
and publishes on its own thread, and on the stop document the reconstruction runs on the
pipeline's processing thread. Failures are logged and recorded in Tiled as
``status: failed`` with the reason; the RunEngine never sees them. That holds for malformed
documents too (missing keys, wrong shapes, documents out of order, unknown descriptors):
the run they belong to (else every open tomography run) is marked failed, naming the fault.

Users' own callbacks hear each processed result through :meth:`TomoPipeline.subscribe`
(see :mod:`tomolive.events`).
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client
from event_model import DocumentRouter, RunRouter, unpack_datum_page
from tiled.client.base import BaseClient

from tomolive.errors import BadInputError, MissingDataError
from tomolive.events import EVENT_KINDS, ResultCallback, ResultEvents
from tomolive.io.assets import AssetResolver
from tomolive.outbox import default_outbox
from tomolive.pipeline import PipelineParams, connect_dask
from tomolive.session import CALIBRATIONS, ProcessedRun, ScanSession
from tomolive.store import connect

logger = logging.getLogger(__name__)


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
    outbox_dir : path, optional
        Where results wait when Tiled stays unreachable (default :func:`tomolive.outbox.default_outbox`).
    patience_s : float
        How long to keep retrying an unreachable Tiled server before using the outbox.
    progress : bool
        Show a progress bar in the terminal.

    Examples
    --------
    >>> pipe = TomoPipeline.from_uri("http://127.0.0.1:8000", api_key="...")  # doctest: +SKIP
    >>> RE.subscribe(pipe)  # doctest: +SKIP
    >>> token = pipe.subscribe(lambda kind, payload: print(kind, payload["uri"]), kinds=("complete",))  # doctest: +SKIP
    >>> RE(tomo_scan(...)); pipe.wait()  # doctest: +SKIP
    """

    RECENT_RUNS = 8
    """Tomography runs remembered after their stop, to recognise documents that come late."""

    def __init__(
        self,
        client: BaseClient,
        *,
        dask: Client | str | None = None,
        params: PipelineParams | None = None,
        scratch_dir: str | Path | None = None,
        outbox_dir: str | Path | None = None,
        patience_s: float = 120.0,
        progress: bool = True,
    ):
        self.client = client
        self.params = params or PipelineParams()
        self.scratch_dir = Path(scratch_dir or tempfile.gettempdir())
        self.outbox_dir = Path(outbox_dir) if outbox_dir else default_outbox()
        self.patience_s = patience_s
        self.progress = progress
        self._dask_spec = dask
        self._dask: Client | None = None
        self._owns_dask = False
        self._processing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tomolive-process")
        self.io = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tomolive-io")
        self._futures: dict[str, Future[ProcessedRun]] = {}
        self._latest: str | None = None  # uid of the scan started last
        self._lock = threading.Lock()
        self.events = ResultEvents()
        self._runs: dict[str, _RunDocuments] = {}  # open and recent runs by uid
        self._router = RunRouter([self._factory])
        self.io.submit(_import_array_client)  # ~2 s once: off the path to the first preview

    @classmethod
    def from_uri(cls, uri: str, *, api_key: str | None = None, timeout_s: float = 30.0, **kwargs: Any) -> TomoPipeline:
        """A pipeline writing to the Tiled server at ``uri``."""
        return cls(connect(uri, api_key=api_key, timeout_s=timeout_s), **kwargs)

    def __call__(self, name: str, doc: dict) -> None:
        """Route one document; a malformed one fails its run, never the RunEngine."""
        run = self._owner(name, doc)
        try:
            if run is not None and run.stopped:
                raise BadInputError(f"a {name!r} document arrived after the run's stop document")
            self._router(name, doc)
        except Exception as err:
            self._reject(name, doc, run, err)

    def subscribe(self, callback: ResultCallback, kinds: str | Iterable[str] = EVENT_KINDS) -> int:
        """Call ``callback(kind, payload)`` on processed-results events; return a token.

        Kinds and payload: :mod:`tomolive.events`. Callbacks run on tomolive's threads, never
        the RunEngine's; their exceptions are logged and ignored.
        """
        return self.events.subscribe(callback, kinds)

    def unsubscribe(self, token: int) -> None:
        """Stop the callback subscribed with ``token``."""
        self.events.unsubscribe(token)

    def _factory(self, name: str, start_doc: dict) -> tuple[list, list]:
        if "tomo" not in start_doc:
            logger.debug("run %s is not a tomography scan; ignored", start_doc["uid"])
            return [], []
        run = _RunDocuments(self, start_doc)
        self._runs[start_doc["uid"]] = run
        stopped = [uid for uid, r in self._runs.items() if r.stopped]
        for uid in stopped[: max(0, len(stopped) - self.RECENT_RUNS)]:
            del self._runs[uid]
        return [run], []

    def _owner(self, name: str, doc: dict) -> _RunDocuments | None:
        """The tomography run a document belongs to, when it says so (None for others)."""
        if not isinstance(doc, dict):
            return None
        if name in ("event", "event_page"):
            return next((run for run in self._runs.values() if doc.get("descriptor") in run.streams), None)
        return self._runs.get(doc.get("run_start")) if name != "start" else None

    def _reject(self, name: str, doc: Any, run: _RunDocuments | None, err: Exception) -> None:
        """A document that could not be routed: fail its run, else every open tomography run."""
        descriptor = doc.get("descriptor") if isinstance(doc, dict) else None
        if name in ("event", "event_page") and run is None and isinstance(err, KeyError) and err.args == (descriptor,):
            reason = (
                f"an {name!r} document refers to descriptor uid {descriptor!r}, which no descriptor document announced"
            )
        else:
            reason = f"malformed {name!r} document: {_describe(err)}"
        runs = [run] if run is not None else [r for r in self._runs.values() if not r.stopped]
        if not runs:
            logger.error("tomolive: %s (no open tomography run to fail)", reason)
        for target in runs:
            target.fail(reason)

    def session(self, uid: str, metadata: dict, expected_angles: int = 256) -> ScanSession:
        """A new scan fed frame by frame (what the callback does per run; ``tomolive process`` too)."""
        with self._lock:
            self._latest = uid
        return ScanSession(self, uid, metadata, expected_angles)

    def submit(self, uid: str, job: Callable[[], ProcessedRun]) -> None:
        """Queue a scan's reconstruction on the processing thread (one scan at a time)."""
        with self._lock:
            self._futures[uid] = self._processing.submit(job)

    def resolve(self, uid: str, job: Callable[[], ProcessedRun]) -> None:
        """Record the outcome of a run that ended without processing, on the I/O thread."""
        with self._lock:
            if uid not in self._futures:
                self._futures[uid] = self.io.submit(job)

    def dask_client(self) -> Client:
        """The Dask client, connecting (or starting a LocalCluster) on first use."""
        if self._dask is None:
            self._dask, self._owns_dask = connect_dask(self._dask_spec)
        return self._dask

    def wait(self, uid: str | None = None, timeout: float | None = None) -> ProcessedRun:
        """Block until scan ``uid`` (default: the scan started last) is processed; return its outcome.

        A scan's outcome exists once its stop document has been handled, just after ``RE()``
        returns, so the default waits for that scan, never for the one before it.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                future = self._futures.get(uid or self._latest or "")
            if future is not None:
                return future.result(timeout=None if deadline is None else deadline - time.monotonic())
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"no result for run {uid or '(latest)'} within {timeout} s")
            time.sleep(0.05)

    def close(self) -> None:
        """Finish queued work and release the Dask cluster this pipeline started."""
        self._processing.shutdown(wait=True)
        self.io.shutdown(wait=True)
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


class _RunDocuments(DocumentRouter):
    """Turns one run's documents into :class:`ScanSession` calls; errors end the run as failed.

    Frames that live in files are joined to their events by ``(descriptor, seq_num)``:
    a StreamDatum may come before or after the event it belongs to.
    """

    def __init__(self, pipeline: TomoPipeline, start_doc: dict):
        super().__init__()
        self.tomo: Any = start_doc["tomo"]
        self.streams: dict[str, str] = {}
        self.stopped = False
        self.assets = AssetResolver()
        self.frames_waiting: dict[tuple[str, int], np.ndarray] = {}
        self.events_waiting: dict[tuple[str, int], float | None] = {}
        n_angles = self.tomo.get("n_angles") if isinstance(self.tomo, dict) else None
        self.session = pipeline.session(
            start_doc["uid"], _scan_metadata(start_doc), n_angles if isinstance(n_angles, int) and n_angles > 0 else 256
        )
        try:
            self.field: str = _check_tomo(self.tomo)
        except BadInputError as err:
            self.session.end("failed", str(err))

    def __call__(self, name: str, doc: dict, validate: bool = False) -> Any:
        try:
            if not self.session.ended:
                super().__call__(name, doc, validate)
        except Exception as err:
            self.session.end("failed", f"{name!r} document: {_describe(err)}")
        if name == "stop":  # the pipeline remembers the run a while: keep no frames or asset maps
            self.stopped = True
            self.assets, self.frames_waiting, self.events_waiting = AssetResolver(), {}, {}

    def fail(self, reason: str) -> None:
        """A document of this run was rejected before reaching it."""
        if self.stopped:
            self.session.invalidate(reason)
        else:
            self.session.end("failed", reason)

    def descriptor(self, doc: dict) -> None:
        if self.field not in doc["data_keys"]:
            raise BadInputError(
                f"stream {doc['name']!r} has no image field {self.field!r}; data keys are {sorted(doc['data_keys'])!r}."
            )
        self.streams[doc["uid"]] = doc["name"]

    def resource(self, doc: dict) -> None:
        self.assets.resource(doc)

    def datum_page(self, doc: dict) -> None:
        for datum in unpack_datum_page(doc):
            self.assets.datum(datum)

    def stream_resource(self, doc: dict) -> None:
        self.assets.stream_resource(doc)

    def stream_datum(self, doc: dict) -> None:
        batch = self.assets.stream_datum(doc, data_key=self.field)
        if batch is None:
            return
        for k, frame in enumerate(batch.frames):
            key = (batch.descriptor, batch.seq_nums[0] + k)
            if key in self.events_waiting:
                self._frame(batch.descriptor, frame, self.events_waiting.pop(key))
            else:
                self.frames_waiting[key] = frame

    def event_page(self, doc: dict) -> None:
        descriptor = doc["descriptor"]
        if self.streams.get(descriptor) not in (*CALIBRATIONS, "primary"):
            return
        data = doc["data"]
        angles = data.get(self.tomo["angle_field"]) if self.streams[descriptor] == "primary" else None
        if self.streams[descriptor] == "primary" and angles is None:
            raise BadInputError(
                f"primary event {doc['seq_num'][0]} has no angle field {self.tomo['angle_field']!r} "
                f"(start document's tomo.angle_field); its data keys are {sorted(data)!r}."
            )
        filled = doc.get("filled", {}).get(self.field)
        for i, seq_num in enumerate(doc["seq_num"]):
            angle = None if angles is None else float(angles[i])
            if self.field in data:  # inline, or a datum id to fill from a file
                image = data[self.field][i]
                self._frame(descriptor, self.assets.fill(image) if filled and not filled[i] else image, angle)
            elif (descriptor, seq_num) in self.frames_waiting:  # from a StreamDatum
                self._frame(descriptor, self.frames_waiting.pop((descriptor, seq_num)), angle)
            else:
                self.events_waiting[(descriptor, seq_num)] = angle

    def _frame(self, descriptor: str, image: Any, angle: float | None) -> None:
        stream = self.streams[descriptor]
        if stream in CALIBRATIONS:
            self.session.add_calibration(stream, np.asarray(image))
        else:
            self.session.add_projection(np.asarray(image), angle)

    def stop(self, doc: dict) -> None:
        status = doc.get("exit_status", "success")
        if status != "success":
            reason = doc.get("reason") or f"run ended with exit_status {status!r}"
            self.session.end("aborted" if status == "abort" else "failed", reason)
            return
        if self.events_waiting:
            raise MissingDataError(
                f"{len(self.events_waiting)} events never got their {self.field!r} frame from a "
                f"StreamDatum (first: descriptor/seq_num {next(iter(self.events_waiting))})."
            )
        self.session.finish()


def _import_array_client() -> None:
    """Import what the first array write needs (Tiled's array client and serialisers)."""
    import tiled.client.array
    import tiled.serialization.array  # noqa: F401


def _scan_metadata(start_doc: dict) -> dict:
    """The searchable container metadata taken from a start document."""
    keys = ("sample", "scan_id", "plan_name", "pixel_size_um", "energy_kev", "time")
    md = {key: start_doc[key] for key in keys if key in start_doc}
    md.setdefault("sample", "unknown")
    tomo = start_doc["tomo"]
    md["tomo"] = {k: v for k, v in tomo.items() if k != "angles"} if isinstance(tomo, dict) else repr(tomo)
    return md


def _check_tomo(tomo: Any) -> str:
    """The image field of a start document's ``tomo`` block, after checking what the run needs."""
    needed = {"image_field": "the detector's image data key", "angle_field": "the rotation's data key"}
    if not isinstance(tomo, dict):
        raise BadInputError(
            f"the start document's 'tomo' block must be a mapping with {sorted(needed)!r}; got {tomo!r}."
        )
    for key, what in needed.items():
        if not isinstance(tomo.get(key), str):
            raise BadInputError(
                f"the start document's 'tomo' block has no {key!r} ({what}; tomo_scan writes it); "
                f"got {tomo.get(key)!r} among keys {sorted(tomo)!r}."
            )
    return tomo["image_field"]


def _describe(err: Exception) -> str:
    """An error message for a log line; a bare KeyError says which key was missing."""
    if isinstance(err, KeyError):
        return f"required key {err.args[0]!r} is missing"
    return f"{type(err).__name__}: {err}"
