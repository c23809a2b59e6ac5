"""One scan's life in the engine: frames in, a reconstructed, registered volume out.

A :class:`ScanSession` is fed calibration frames and projections one at a time (by the
Bluesky callback, or by ``tomolive process`` from a file). The caller's thread only puts
each frame on a queue; the session's ingest thread normalises it, appends it to the
scratch spool and hands its preview rows to the preview thread, so the RunEngine keeps
its frame rate. The queue is bounded (``QUEUE_BYTES``): if ingest ever fell that far
behind, the caller would wait rather than memory grow. Everything that waits on a server
runs elsewhere too:

- the Tiled record is created on an I/O thread when the session starts, and its empty
  ``recon`` array once the first projection gives the frame shape, so that processing
  starts with the centre search (a run that ends before its blocks are submitted has
  its empty array removed, whoever made it);
- the live preview reconstructs and publishes on its own thread;
- :meth:`finish` queues the volume reconstruction (centre, Dask blocks, status) on the
  pipeline's processing thread and returns at once.

If Tiled is unreachable for longer than ``patience_s``, the result is written to the local
outbox instead (see :mod:`tomolive.outbox`) with a message saying how to upload it.

Every outcome is announced to the pipeline's result subscribers (:mod:`tomolive.events`)
from the thread that recorded it, before the pipeline's ``wait`` returns.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from distributed import Client
from tiled.client.base import BaseClient

from .analysis import analyse_scan, early_qc_rows, submit_qc
from .errors import BadInputError, MissingDataError
from .events import ResultEvents
from .outbox import OutboxEntry
from .pipeline import PipelineParams, denoise_scan, new_recon_volume, prepare_projection, start_reconstruction
from .preprocess import CenterResult, reduce_frames
from .preview import LivePreview, PreviewSnapshot, default_preview_rows
from .progress import ProgressReporter
from .provenance import Provenance
from .spool import ProjectionSpool
from .stage_runner import run_extra_stages
from .store import ScanRecord, VolumeTarget, is_unreachable, now, patiently

logger = logging.getLogger(__name__)
CALIBRATIONS = ("dark", "flat")
QUEUE_BYTES = 256 * 1024**2
_FINISH = object()


@dataclass(frozen=True)
class ProcessedRun:
    """Outcome of one scan: ``status`` is ``complete``, ``failed`` or ``aborted``.

    ``uri`` is the Tiled container, or None when the result was kept in the local outbox
    (then ``outbox`` is its path).
    """

    uid: str
    status: str
    uri: str | None
    reason: str | None = None
    outbox: str | None = None


class Engine(Protocol):
    """What a session needs from the pipeline that owns it (see ``TomoPipeline``)."""

    client: BaseClient
    params: PipelineParams
    scratch_dir: Path
    outbox_dir: Path
    progress: bool
    patience_s: float
    io: Executor
    events: ResultEvents

    def dask_client(self) -> Client: ...
    def submit(self, uid: str, job: Callable[[], ProcessedRun]) -> None: ...
    def resolve(self, uid: str, job: Callable[[], ProcessedRun]) -> None: ...


class ScanSession:
    """Calibration frames, the spool, the preview and the Tiled record of one scan."""

    def __init__(self, engine: Engine, uid: str, metadata: dict, expected_angles: int = 256):
        self.engine = engine
        self.uid = uid
        self.metadata = metadata
        self.expected_angles = expected_angles
        self.calibration: dict[str, list[np.ndarray]] = {name: [] for name in CALIBRATIONS}
        self.flat: np.ndarray | None = None
        self.dark: np.ndarray | None = None
        self.spool: ProjectionSpool | None = None
        self.preview: LivePreview | None = None
        self.ended = False
        self.analysis: dict[str, Any] = {}
        self._frame_shape: tuple[int, ...] | None = None
        self._submitted = False  # the volume is queued on the processing thread
        self._end_lock = threading.Lock()
        self._queue: queue.Queue | None = None
        self._ingest: threading.Thread | None = None
        self.provenance = Provenance(parameters={"pipeline": engine.params.as_dict()})
        api_key = engine.client.context.api_key
        self._record: Future[ScanRecord] = engine.io.submit(
            patiently,
            lambda: ScanRecord.create(engine.client, uid, metadata, api_key),
            f"create the record of run {uid}",
            engine.patience_s,
        )
        self._recon_volume: Future[VolumeTarget] | None = None  # made when the frame shape is known
        self._blocks_submitted = False  # processing has begun writing the recon array

    # -- the caller's thread: queue only ------------------------------------------------

    def add_calibration(self, kind: str, frame: np.ndarray) -> None:
        """Queue a dark or flat frame (reduced when the first projection arrives)."""
        if kind not in CALIBRATIONS:
            raise BadInputError(f"calibration kind must be one of {CALIBRATIONS}; got {kind!r}.")
        self._put((kind, frame, None))

    def add_projection(self, frame: np.ndarray, angle_deg: float) -> None:
        """Queue ``frame`` taken at ``angle_deg`` for normalising, spooling and the preview."""
        self._put(("projection", frame, float(angle_deg)))

    def finish(self) -> None:
        """The scan ended well: once every queued frame is in, reconstruct. Returns at once.

        The preview is held now, not when the last frame is in: a periodic publish due in
        between (two requests, ~0.2 s of the server's CPU at 512^2) would run beside the
        centre search, which the whole reconstruction waits for.
        """
        preview = self.preview  # made by the ingest thread with the first projection
        if preview is not None:
            preview.hold()
        self._put(_FINISH)

    def end(self, status: str, reason: str) -> None:
        """The scan ended without a result (``aborted`` or ``failed``): record why, off-thread."""
        with self._end_lock:
            if self.ended:
                return
            self.ended = True
        self._resolve(status, reason)

    def invalidate(self, reason: str) -> None:
        """A document broke the run after its stop: record it ``failed``, whatever processing made of it.

        If the volume is already queued, the failure is recorded after it on the processing
        thread (so it replaces a ``complete``); otherwise the run ends here.
        """
        with self._end_lock:
            queued, first_end = self._submitted, not self.ended
            self.ended = True
            if queued:
                logger.error("tomolive: run %s failed after its stop: %s", self.uid, reason)
                self.engine.submit(self.uid, lambda: self._record_end("failed", reason))
        if queued:
            return
        if first_end:
            self._resolve("failed", reason)
        else:
            logger.error("tomolive: run %s (already ended): %s", self.uid, reason)

    def _resolve(self, status: str, reason: str) -> None:
        logger.error("tomolive: run %s %s: %s", self.uid, status, reason)
        self.engine.resolve(self.uid, lambda: self._record_end(status, reason))
        if self._ingest is not None and threading.current_thread() is not self._ingest:
            self._put(None)  # wakes the ingest thread so it drains and stops

    def _put(self, item: object) -> None:
        if self._ingest is None:
            frame_bytes = max(1, np.asarray(item[1]).nbytes) if isinstance(item, tuple) else 1
            self._queue = queue.Queue(maxsize=max(8, QUEUE_BYTES // frame_bytes))
            self._ingest = threading.Thread(
                target=self._ingest_frames, name=f"tomolive-ingest-{self.uid[:8]}", daemon=True
            )
            self._ingest.start()
        while not (self.ended and item is not None):  # after the end, frames are dropped
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    # -- the ingest thread --------------------------------------------------------------

    def _ingest_frames(self) -> None:
        try:
            self._ingest_until_end()
        finally:  # the pipeline remembers recent runs: keep none of this one's frames
            self.dark = self.flat = None
            self.calibration = {name: [] for name in CALIBRATIONS}

    def _ingest_until_end(self) -> None:
        while not self.ended:
            item = self._queue.get()
            if item is None:
                break
            try:
                if item is _FINISH:
                    self._finish()
                    return
                kind, frame, angle = item
                if kind == "projection":
                    self._add_projection(np.asarray(frame), angle)
                else:
                    self._add_calibration(kind, np.asarray(frame))
            except Exception as err:
                self.end("failed", f"{type(err).__name__}: {err}")
        while True:  # ended: drop what is queued so no producer waits on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def _check_frame(self, kind: str, frame: np.ndarray) -> None:
        if frame.ndim != 2 or frame.shape[0] < 1 or frame.shape[1] < 2:
            raise BadInputError(
                f"a {kind} frame has shape {frame.shape!r}; expected a 2-D detector image (rows, columns) "
                "of at least 1 row and 2 columns."
            )
        if self._frame_shape is None:
            self._frame_shape = frame.shape
        elif frame.shape != self._frame_shape:
            raise BadInputError(
                f"a {kind} frame has shape {frame.shape!r} but the frames before it have {self._frame_shape!r}; "
                "darks, flats and projections must all have the detector's shape."
            )

    def _add_calibration(self, kind: str, frame: np.ndarray) -> None:
        self._check_frame(kind, frame)
        if self.spool is not None:
            raise BadInputError(f"a {kind} frame arrived after the projections began; take darks and flats first.")
        self.calibration[kind].append(frame)

    def _add_projection(self, frame: np.ndarray, angle_deg: float) -> None:
        self._check_frame("projection", frame)
        if self.spool is None:
            self._start(frame)
        prepared = prepare_projection(frame, self.flat, self.dark, self.engine.params)
        self.spool.append(prepared, angle_deg)
        if self.preview is not None:
            self.preview.add(prepared, math.radians(angle_deg))

    def _finish(self) -> None:
        if self.spool is None:
            raise MissingDataError("the scan was stopped before any projection arrived.")
        self.spool.finish()
        if self.preview is not None:
            self.preview.hold()  # its last publish waits until the volume's blocks are queued
        self.provenance.inputs.update(n_angles=len(self.spool), angles_deg=self.spool.angles)
        with self._end_lock:  # held while queueing, so invalidate() queues after it
            if self.ended:
                return
            self.ended = True
            self._submitted = True
            self.engine.submit(self.uid, self._process)

    def _start(self, frame: np.ndarray) -> None:
        for name, frames in self.calibration.items():
            if not frames:
                raise MissingDataError(
                    f"no {name} frames arrived before the first projection; the scan needs a "
                    f"'{name}' stream (tomo_scan(..., n_{name}s=10)) to normalise projections."
                )
        params = self.engine.params
        self.dark = reduce_frames(np.stack(self.calibration["dark"]), params.flat_reduce, name="darks")
        self.flat = reduce_frames(np.stack(self.calibration["flat"]), params.flat_reduce, name="flats")
        self.provenance.inputs.update(
            frame_shape=list(frame.shape),
            frame_dtype=str(frame.dtype),
            n_darks=len(self.calibration["dark"]),
            n_flats=len(self.calibration["flat"]),
        )
        self.calibration = {name: [] for name in CALIBRATIONS}
        path = self.engine.scratch_dir / f"tomolive-spool-{self.uid}.zarr"
        shape = frame.shape  # the callback keeps the shape, not the frame
        self.spool = ProjectionSpool.create(path, shape, params.rows_per_block, self.expected_angles)
        self._record.add_done_callback(lambda record: self._make_recon_volume(record, shape))
        self._start_preview(shape)

    def _make_recon_volume(self, record: Future[ScanRecord], frame_shape: tuple[int, int]) -> None:
        """Once the record exists, make its empty ``recon`` array on an I/O thread (no thread
        waits for the record), unless the run has already ended: then processing makes it,
        or nothing needs it. One made before the end is used, or removed by ``_store_end``
        if the run ends before its blocks are submitted."""
        with self._end_lock:
            if not self.ended and record.exception() is None:
                self._recon_volume = self.engine.io.submit(
                    new_recon_volume, record.result(), frame_shape, self.engine.params
                )

    def _early_volume(self, sink: ScanRecord | OutboxEntry) -> Future[VolumeTarget] | None:
        """The ``recon`` array made during the scan, if it is ``sink``'s and its making did not
        fail (Tiled down at the time: processing makes it again)."""
        volume = self._recon_volume if isinstance(sink, ScanRecord) else None
        if volume is not None and volume.done() and volume.exception() is not None:
            return None
        return volume

    def _start_preview(self, frame_shape: tuple[int, int]) -> None:
        params = self.engine.params
        rows = params.preview_rows if params.preview_rows is not None else default_preview_rows(frame_shape[0])
        if not rows:
            return
        if max(rows) >= frame_shape[0] or min(rows) < 0:
            raise BadInputError(f"preview_rows {rows!r} are outside the detector's {frame_shape[0]} rows.")
        center = params.center if params.center is not None else (frame_shape[1] - 1) / 2
        self.preview = LivePreview(
            rows,
            frame_shape[1],
            center,
            self._publish_preview,
            size=params.preview_size,
            interval_s=params.preview_interval_s,
        )

    # -- background threads -------------------------------------------------------------

    def _publish_preview(self, snapshot: PreviewSnapshot) -> None:
        record = self._record.result()
        record.write_preview(
            snapshot.image,
            {
                "rows": list(snapshot.rows),
                "n_angles": snapshot.n_angles,
                "angle_range_deg": list(snapshot.angle_range_deg),
                "center": snapshot.center,
                "center_source": "given" if self.engine.params.center is not None else "detector middle",
                "binning": snapshot.binning,
                "frames_dropped": snapshot.dropped,
                "updated": now(),
            },
        )

    def _process(self) -> ProcessedRun:
        """Runs on the processing thread: reconstruct into Tiled, else into the outbox."""
        try:
            try:
                record = self._record.result()
                outcome = self._outcome(self._reconstruct(record))
                self._close_preview()
                patiently(lambda: record.set_status("complete", **outcome), "mark it complete", self.engine.patience_s)
                return self._announce(ProcessedRun(self.uid, "complete", record.node.uri))
            except Exception as err:
                if not is_unreachable(err):
                    raise
                return self._process_locally(err)
        except Exception as err:
            logger.exception("processing of run %s failed", self.uid)
            return self._record_end("failed", f"{type(err).__name__}: {err}")
        finally:  # deleting a spool takes ~0.2 s per 512 MB: not on the way to the result
            self.engine.io.submit(self.spool.remove)

    def _reconstruct(self, sink: ScanRecord | OutboxEntry) -> dict[str, Any] | None:
        """Centre, volume, optional stages, QC into ``sink``; returns the newest progress
        state, which the final status carries (one round trip fewer on the way to it)."""
        params = self.engine.params
        client = self.engine.dask_client()
        progress = ProgressReporter(sink, self.engine.io)
        n_rows, n_cols = self.spool.frame_shape
        qc_rows = early_qc_rows(params, n_rows)
        recon = start_reconstruction(
            self.spool,
            sink,
            params,
            client,
            self.provenance,
            first_rows=qc_rows,
            volume=self._early_volume(sink),
        )
        self._blocks_submitted = True
        if self.preview is not None:
            self.preview.close(timeout=0)  # its last publish runs beside the blocks
        qc = (
            submit_qc(
                client, recon.target, None, params, recon.center.confidence, after=recon.futures_for_rows(qc_rows)
            )
            if qc_rows
            else None
        )
        recon.wait(self.engine.progress, lambda done, total: progress.report(stage="recon", done=done, total=total))
        if params.denoise is not None:
            self._denoise(sink, recon.center, progress)
        if params.segment:  # else QC alone, which ran beside the blocks: nothing to wait for
            progress.report(stage="analysis")
        self.analysis = analyse_scan(
            sink,
            recon.target,
            recon.blocks,
            params,
            client,
            self.provenance,
            recon.center.confidence,
            qc=qc,
        )
        if params.extra_stages:
            progress.report(stage="extra_stages")
            self.analysis.update(
                run_extra_stages(
                    sink,
                    recon.target,
                    (n_rows, n_cols, n_cols),
                    recon.blocks,
                    params,
                    client,
                    self.provenance,
                    self.engine.progress,
                )
            )
        return progress.finish()

    def _denoise(self, sink: ScanRecord | OutboxEntry, center: CenterResult, progress: ProgressReporter) -> None:
        params = self.engine.params

        def on_denoise_progress(stage: str, done: int, total: int) -> None:
            progress.report(stage=stage, done=done, total=total)

        denoise_scan(
            self.spool,
            sink,
            params,
            self.engine.dask_client(),
            self.provenance,
            center.center,
            model_client=self.engine.client if isinstance(sink, ScanRecord) else None,
            sample_class=str(self.metadata.get("sample_class") or self.metadata.get("sample") or "unspecified"),
            scan_uids=(self.uid,),
            progress=self.engine.progress,
            on_progress=on_denoise_progress,
        )

    def _outcome(self, progress: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "stages": self.stages_done(),
            "progress": progress,
            "provenance": self.provenance.as_dict(),
            **self.analysis,
        }

    def _process_locally(self, err: Exception) -> ProcessedRun:
        self._close_preview()
        entry = OutboxEntry.create(self.engine.outbox_dir, self.uid, self.metadata)
        entry.set_status("complete", **self._outcome(self._reconstruct(entry)))
        logger.error(
            "Tiled is unreachable (%s): the result of run %s is kept in %s. Upload it when the "
            "server is back with:  tomolive upload-outbox %s",
            err,
            self.uid,
            entry.path,
            entry.path,
        )
        return self._announce(ProcessedRun(self.uid, "complete", None, f"Tiled unreachable: {err}", str(entry.path)))

    def _announce(self, outcome: ProcessedRun) -> ProcessedRun:
        """Tell the result subscribers (QC alerts first, then the status); return ``outcome``."""
        complete = outcome.status == "complete"
        qc = self.analysis.get("qc", {})
        payload = {
            "uid": self.uid,
            "status": outcome.status,
            "uri": outcome.uri,
            "outbox": outcome.outbox,
            "reason": outcome.reason,
            "sample": self.metadata.get("sample"),
            "scan_id": self.metadata.get("scan_id"),
            "stages": self.stages_done() if complete else list(self.provenance.stage_seconds),
            "qc": qc,
            "metrics": self.analysis.get("metrics", {}),
        }
        for alert in qc.get("alerts", []) if complete else []:
            self.engine.events.emit("qc_alert", {**payload, "alert": alert})
        self.engine.events.emit(outcome.status, payload)
        return outcome

    def _record_end(self, status: str, reason: str) -> ProcessedRun:
        """Mark the run ended without a result, in Tiled or else the outbox; tell subscribers."""
        return self._announce(self._store_end(status, reason))

    def _store_end(self, status: str, reason: str) -> ProcessedRun:
        """Mark the run ended without a result, in Tiled or else the outbox; never raises."""
        self._let_ingest_stop()
        if self.preview is not None:
            self.preview.close(timeout=0)
            self.preview = None
        if self.spool is not None:
            self.spool.remove()
        extra = {"reason": reason, "provenance": self.provenance.as_dict()}
        try:
            record = self._record.result()
            patiently(lambda: record.set_status(status, **extra), f"mark it {status}", self.engine.patience_s)
            if not self._blocks_submitted:
                self._remove_unwritten_volume(record)
            return ProcessedRun(self.uid, status, record.node.uri, reason)
        except Exception as err:
            if not is_unreachable(err):
                logger.exception("could not record status %r of run %s", status, self.uid)
                return ProcessedRun(self.uid, status, None, reason)
        entry = OutboxEntry.create(self.engine.outbox_dir, self.uid, self.metadata)
        entry.set_status(status, **extra)
        logger.error("Tiled is unreachable: status %r of run %s kept in %s", status, self.uid, entry.describe())
        return ProcessedRun(self.uid, status, None, reason, str(entry.path))

    def _let_ingest_stop(self) -> None:
        """Wait for the ingest thread to finish the frame it holds (the run has ended, so it
        stops after that one): a spool or preview it is still making is then here to remove."""
        ingest = self._ingest
        if ingest is not None and ingest is not threading.current_thread():
            ingest.join(timeout=self.engine.patience_s)
            if ingest.is_alive():
                logger.warning("run %s: its ingest thread is still busy after %s s", self.uid, self.engine.patience_s)

    def _remove_unwritten_volume(self, record: ScanRecord) -> None:
        """Delete the empty ``recon`` array of a run that ended before any block was written:
        made during the scan, or by processing before its centre search failed."""
        if self._recon_volume is not None:
            self._recon_volume.exception()  # waits for one being made: no array appears after this
        try:
            if "recon" in record.node:
                record.remove("recon")
        except Exception as err:  # the status, already set, says why there is no result
            logger.warning("could not remove the empty recon array of run %s: %s", self.uid, err)

    def _close_preview(self) -> None:
        if self.preview is not None:
            self.preview.close(timeout=self.engine.patience_s)
            self.preview = None

    def stages_done(self) -> list[str]:
        params = self.engine.params
        optional = {
            "zingers": params.zinger_threshold is not None,
            "paganin": params.paganin is not None,
            "stripes": params.stripe_method != "none",
        }
        optional_after = {"denoise": params.denoise is not None, "segment": bool(params.segment)}
        stages = ["normalize", *[name for name, on in optional.items() if on], "center", "recon"]
        return [*stages, *[name for name, on in optional_after.items() if on], "qc", *params.extra_stages]
