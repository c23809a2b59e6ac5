"""One run's life in the engine, as an explicit state machine.

::

    INGESTING --finish()--> STOPPING --every frame in--> PROCESSING --stages done--> COMPLETE
        |                      |                             |
        +--end()---------------+--end()/bad frame--> FAILED / ABORTED <--stage raised, or invalidate()

The caller's thread (the RunEngine's, or ``tomolive process``) only queues frames; the
run's ingest thread hands them to the technique's :class:`~.technique.Acquisition`; the
stages run on the engine's processing thread. The result's container is created on an
I/O thread as the run starts (refused, and the run with it, when the uid already has a
result and this is not a reprocessing); if Tiled stays unreachable longer than the
engine's patience, the result goes to the local outbox instead. COMPLETE is final: a
result marked complete is never changed. Every outcome is announced to the engine's
result subscribers before ``Engine.wait`` returns it.
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BadInputError, ProcessingError, ResultExistsError
from ..stages import StageContext
from ..store import check_status
from .progress import ProgressReporter
from .provenance import Provenance, changed_parameters

if TYPE_CHECKING:
    from .core import Engine
    from .technique import Technique

logger = logging.getLogger(__name__)
QUEUE_BYTES = 256 * 1024**2
"""The ingest queue's bound: a caller never gets further ahead of ingest than this."""
_FINISH = object()


class RunState(enum.Enum):
    """Where a run is in its life; the last three are final."""

    INGESTING = "ingesting"
    STOPPING = "stopping"
    PROCESSING = "processing"
    COMPLETE = "complete"
    FAILED = "failed"
    ABORTED = "aborted"


TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    RunState.INGESTING: frozenset({RunState.STOPPING, RunState.FAILED, RunState.ABORTED}),
    RunState.STOPPING: frozenset({RunState.PROCESSING, RunState.FAILED, RunState.ABORTED}),
    RunState.PROCESSING: frozenset({RunState.COMPLETE, RunState.FAILED}),
    RunState.COMPLETE: frozenset(),
    RunState.FAILED: frozenset(),
    RunState.ABORTED: frozenset(),
}
"""Every legal move; anything else is refused (and logged), never half-done."""

ENDED_WITHOUT_RESULT = {"failed": RunState.FAILED, "aborted": RunState.ABORTED}


@dataclass(frozen=True)
class ProcessedRun:
    """Outcome of one run: ``status`` is ``complete``, ``failed`` or ``aborted``.

    ``uri`` is the Tiled container, or None when the result was kept in the local outbox
    (then ``outbox`` is its path).
    """

    uid: str
    status: str
    uri: str | None
    reason: str | None = None
    outbox: str | None = None


class Run:
    """One run: frames in through :meth:`add`, then :meth:`finish` (or :meth:`end`)."""

    def __init__(
        self, engine: Engine, technique: Technique, uid: str, metadata: dict[str, Any], *, new_version: bool = False
    ):
        self.engine = engine
        self.technique = technique
        self.uid = uid
        self.metadata = metadata
        self.params = technique.params
        self.state = RunState.INGESTING
        self.provenance = Provenance(parameters={"technique": technique.name, "pipeline": self.params.as_dict()})
        self.stage_results: dict[str, Any] = {}
        self.stages_done: list[str] = []
        self._lock = threading.Lock()
        self._queue: queue.Queue | None = None
        self._ingest: threading.Thread | None = None
        self._broken: str | None = None  # why a document broke the run while it was processing
        self._sealed = False  # its result is being marked complete: late documents are dropped
        self.store: Future = engine.open_store_later(uid, metadata, new_version=new_version)
        self.acquisition = technique.acquisition(self)
        self.store.add_done_callback(self._refuse_if_exists)

    def _refuse_if_exists(self, store: Future) -> None:
        """A start that reuses the uid of an existing result: end this run, touch nothing stored."""
        if isinstance(store.exception(), ResultExistsError):
            self.end("failed", str(store.exception()))

    @property
    def ended(self) -> bool:
        """True once the run takes no more frames (processing queued, or ended without a result)."""
        return self.state not in (RunState.INGESTING, RunState.STOPPING)

    def unless_ended(self, action: Callable[[], object]) -> bool:
        """Call ``action`` unless the run has ended, holding the run's lock (so it cannot end meanwhile)."""
        with self._lock:
            if self.ended:
                return False
            action()
            return True

    def _move(self, to: RunState) -> bool:
        """Take the transition to ``to`` if it is legal from the current state (lock held)."""
        if to not in TRANSITIONS[self.state]:
            return False
        self.state = to
        return True

    # -- the caller's thread: queue only ------------------------------------------------

    def add(self, role: str, frame: np.ndarray, coordinate: float | None = None) -> None:
        """Queue one frame of ``role`` for the technique's acquisition; returns at once."""
        self._put((role, frame, coordinate))

    def finish(self) -> None:
        """The run ended well: once every queued frame is in, process it. Returns at once."""
        with self._lock:
            if not self._move(RunState.STOPPING):
                return
        self.acquisition.stopping()
        self._put(_FINISH)

    def end(self, status: str, reason: str) -> None:
        """The run ended without a result (``aborted`` or ``failed``): record why, off-thread."""
        if status not in ENDED_WITHOUT_RESULT:
            raise BadInputError(f"a run ends without a result as {sorted(ENDED_WITHOUT_RESULT)}; got {status!r}.")
        with self._lock:
            if self.ended or not self._move(ENDED_WITHOUT_RESULT[status]):
                return
        self._resolve(status, reason)

    def invalidate(self, reason: str) -> None:
        """A document broke the run after its stop: fail it unless its result is already complete.

        While it is processing, the run is marked ``failed`` instead of ``complete`` when its
        stages end; a complete result is never changed (the document is logged and dropped).
        """
        with self._lock:
            before = self.state
            breaks = before is RunState.PROCESSING and not self._sealed
            if breaks:
                self._broken = reason
            moved = before is not RunState.PROCESSING and self._move(RunState.FAILED)
        if moved:
            self._resolve("failed", reason)
        elif breaks:
            logger.error("tomolive: run %s will be marked failed when its processing ends: %s", self.uid, reason)
        else:
            logger.error("tomolive: run %s is %s; a late document is dropped: %s", self.uid, before.value, reason)

    def _resolve(self, status: str, reason: str) -> None:
        logger.error("tomolive: run %s %s: %s", self.uid, status, reason)
        self.engine.resolve(self.uid, lambda: self._record_end(status, reason))
        if self._ingest is not None and threading.current_thread() is not self._ingest:
            self._put(None)  # wakes the ingest thread so it drains and stops

    def _put(self, item: object) -> None:
        if self._ingest is None:
            frame_bytes = max(1, np.asarray(item[1]).nbytes) if isinstance(item, tuple) else 1
            self._queue = queue.Queue(maxsize=max(8, QUEUE_BYTES // frame_bytes))
            name = f"tomolive-ingest-{self.uid[:8]}"
            ingest = threading.Thread(target=self._ingest_frames, name=name, daemon=True)
            ingest.start()
            self._ingest = ingest  # started before others may join it
        assert self._queue is not None
        while not (self.ended and item is not None):  # after the end, frames are dropped
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    # -- the ingest thread --------------------------------------------------------------

    def _ingest_frames(self) -> None:
        assert self._queue is not None
        while not self.ended:
            item = self._queue.get()
            if item is None:
                break
            try:
                if item is _FINISH:
                    self._all_frames_in()
                    return
                role, frame, coordinate = item
                self.acquisition.add(role, np.asarray(frame), coordinate)
            except Exception as err:
                self.end("failed", f"{type(err).__name__}: {err}")
        while True:  # ended: drop what is queued so no producer waits on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def _all_frames_in(self) -> None:
        self.acquisition.finish()
        with self._lock:  # held while queueing, so invalidate() queues after it
            if not self._move(RunState.PROCESSING):
                return
            self.engine.submit(self.uid, self._process)

    # -- the processing thread ----------------------------------------------------------

    def _process(self) -> ProcessedRun:
        """Run the stages into Tiled, else into the outbox; mark the outcome."""
        try:
            try:
                store = self.store.result()
                outcome = self._run_stages(store)
                self.acquisition.close(self.engine.patience_s)
                self._check_not_broken()
                self.engine.patiently(lambda: store.set_status("complete", **outcome), "mark it complete")
                return self._announce(ProcessedRun(self.uid, "complete", store.uri))
            except Exception as err:
                if not self.engine.is_unreachable(err):
                    raise
                return self._process_locally(err)
        except Exception as err:
            logger.exception("processing of run %s failed", self.uid)
            return self._record_end("failed", f"{type(err).__name__}: {err}")
        finally:  # freeing scratch space is not on the way to the result
            self.engine.io.submit(self.acquisition.release)

    def _check_not_broken(self) -> None:
        """Raise if a document broke the run while it was processing; else no document can any more."""
        with self._lock:
            if self._broken is not None:
                raise ProcessingError(f"a document broke the run after its stop: {self._broken}")
            self._sealed = True

    def _run_stages(self, store: Any) -> dict[str, Any]:
        """The technique's stages in order into ``store``; the container metadata to add."""
        progress = ProgressReporter(store, self.engine.io)
        ctx = StageContext(
            uid=self.uid,
            store=store,
            params=self.params,
            provenance=self.provenance,
            progress=progress,
            dask_client=self.engine.dask_client,
            run_blocks=self.engine.run_blocks,
            io=self.engine.io,
            show_progress=self.engine.progress,
            acquisition=self.acquisition,
        )
        stages = self.technique.stages()  # once: building it may load users' stages from entry points
        self.stages_done = [*self.technique.frame_steps(), *(stage.name for stage in stages)]
        for stage in stages:
            stage.run(ctx)
        self.stage_results = ctx.metadata
        if store.previous_parameters is not None:  # a new version: say what changed
            changed = changed_parameters(store.previous_parameters, self.provenance.parameters)
            self.provenance.results["changed_parameters"] = changed
        newest = progress.finish()
        return {
            "stages": self.stages_done,
            "progress": newest,
            "provenance": self.provenance.as_dict(),
            **ctx.metadata,
        }

    def _process_locally(self, err: Exception) -> ProcessedRun:
        self.acquisition.close(self.engine.patience_s)
        entry = self.engine.open_outbox(self.uid, self.metadata)
        outcome = self._run_stages(entry)
        self._check_not_broken()
        entry.set_status("complete", **outcome)
        logger.error("Tiled is unreachable (%s): the result of run %s is kept in %s", err, self.uid, entry.describe())
        return self._announce(ProcessedRun(self.uid, "complete", None, f"Tiled unreachable: {err}", str(entry.path)))

    def _announce(self, outcome: ProcessedRun) -> ProcessedRun:
        """Tell the result subscribers (QC alerts first, then the status); return ``outcome``."""
        complete = outcome.status == "complete"
        if complete:
            with self._lock:
                self._move(RunState.COMPLETE)
        stages = self.stages_done if complete else list(self.provenance.stage_seconds)
        payload = event_payload(outcome, self.metadata, stages, self.stage_results)
        for alert in payload["qc"].get("alerts", []) if complete else []:
            self.engine.events.emit("qc_alert", {**payload, "alert": alert})
        self.engine.events.emit(outcome.status, payload)
        return outcome

    # -- ending without a result (I/O or processing thread) -----------------------------

    def _record_end(self, status: str, reason: str) -> ProcessedRun:
        """Mark the run ended without a result, in Tiled or else the outbox; tell subscribers."""
        with self._lock:
            self._move(ENDED_WITHOUT_RESULT[status])
        return self._announce(self._store_end(status, reason))

    def _store_end(self, status: str, reason: str) -> ProcessedRun:
        """Mark the run ended without a result, in Tiled or else the outbox; never raises."""
        let_ingest_stop(self._ingest, self.engine.patience_s)
        extra = {"reason": reason, "provenance": self.provenance.as_dict()}
        try:
            store = self.store.result()
            self.acquisition.discard(store)
            self.engine.patiently(lambda: store.set_status(check_status(status), **extra), f"mark it {status}")
            return ProcessedRun(self.uid, status, store.uri, reason)
        except ResultExistsError:  # refused: nothing of this run is stored anywhere
            return ProcessedRun(self.uid, status, None, reason)
        except Exception as err:
            if not self.engine.is_unreachable(err):
                logger.exception("could not record status %r of run %s", status, self.uid)
                return ProcessedRun(self.uid, status, None, reason)
        self.acquisition.discard(None)
        entry = self.engine.open_outbox(self.uid, self.metadata)
        entry.set_status(check_status(status), **extra)
        logger.error("Tiled is unreachable: status %r of run %s kept in %s", status, self.uid, entry.describe())
        return ProcessedRun(self.uid, status, None, reason, str(entry.path))


def let_ingest_stop(ingest: threading.Thread | None, patience_s: float) -> None:
    """Wait for a run's ingest thread to finish the frame it holds (the run has ended, so it
    stops after that one): what it is still making is then there to remove."""
    if ingest is not None and ingest is not threading.current_thread():
        ingest.join(timeout=patience_s)
        if ingest.is_alive():
            logger.warning("%s is still busy after %s s", ingest.name, patience_s)


def event_payload(
    outcome: ProcessedRun, metadata: dict[str, Any], stages: list[str], results: dict[str, Any]
) -> dict[str, Any]:
    """What result subscribers hear of a run (see :mod:`tomolive.engine.events`)."""
    return {
        "uid": outcome.uid,
        "status": outcome.status,
        "uri": outcome.uri,
        "outbox": outcome.outbox,
        "reason": outcome.reason,
        "sample": metadata.get("sample"),
        "scan_id": metadata.get("scan_id"),
        "stages": stages,
        "qc": results.get("qc", {}),
        "metrics": results.get("metrics", {}),
    }
