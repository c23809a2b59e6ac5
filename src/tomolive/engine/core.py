"""``Engine``: the technique-agnostic core every way in shares.

The Bluesky callback, ``tomolive process``, ``tomolive worker`` and the tests all drive
runs through one Engine. It owns the threads (one processing thread: one run's stages at a
time; two I/O threads for requests that must not block anyone), the Dask client (started
on first use), each run's outcome future, the result events, and where results go: a
Tiled server, or the local outbox when Tiled stays unreachable.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from distributed import Client

from ..store import OutboxResult, ResultStore, TiledResult, default_outbox, is_unreachable, patiently
from .blocks import run_blocks
from .cluster import connect_dask
from .events import EVENT_KINDS, ResultCallback, ResultEvents
from .guard import check_main_guard
from .run import ProcessedRun, Run, RunState
from .technique import Technique

T = TypeVar("T")
StoreOpener = Callable[[str, dict[str, Any], bool], ResultStore]
"""``open(uid, metadata, new_version)``: a fresh result store for run ``uid`` (see :meth:`Engine.start_run`)."""
_LIVE_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


class Engine:
    """Threads, Dask, result stores and events for any number of runs of any technique.

    Parameters
    ----------
    client : tiled BaseClient or None
        Writable client at the Tiled server root; None only with ``open_store``.
    dask : distributed.Client, str or None
        Where blocks run: a client, a scheduler address, or None for a LocalCluster
        started on first use and closed by :meth:`close`.
    scratch_dir : path, optional
        Where runs keep scratch data (default: the system temp dir).
    outbox_dir : path, optional
        Where results wait when Tiled stays unreachable (default :func:`tomolive.store.default_outbox`).
    patience_s : float
        How long to keep retrying an unreachable Tiled server before using the outbox.
    progress : bool
        Show progress bars in the terminal.
    open_store : callable, optional
        ``open_store(uid, metadata, new_version)`` making each run's result store; default: a
        container ``processed/<uid>`` in ``client``'s server.

    Raises
    ------
    BadInputError
        When it would start a LocalCluster from the top level of a script that lacks
        ``if __name__ == "__main__":`` (Dask's worker processes re-import the script).

    Notes
    -----
    A script may end without :meth:`wait`: before the interpreter exits, the engine
    finishes every run whose stop has arrived and marks runs still taking frames aborted.
    """

    def __init__(
        self,
        client: Any = None,
        *,
        dask: Client | str | None = None,
        scratch_dir: str | Path | None = None,
        outbox_dir: str | Path | None = None,
        patience_s: float = 120.0,
        progress: bool = True,
        open_store: StoreOpener | None = None,
    ):
        if client is None and open_store is None:
            raise TypeError("Engine needs a Tiled client or an open_store function")
        if dask is None:
            check_main_guard()
        self.client = client
        self.scratch_dir = Path(scratch_dir or tempfile.gettempdir())
        self.outbox_dir = Path(outbox_dir) if outbox_dir else default_outbox()
        self.patience_s = patience_s
        self.progress = progress
        self._open_store = open_store or self._open_tiled_record
        self._dask_spec = dask
        self._dask: Client | None = None
        self._owns_dask = False
        self._processing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tomolive-process")
        self.io = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tomolive-io")
        self.events = ResultEvents()
        self._futures: dict[str, Future[ProcessedRun]] = {}
        self._latest: str | None = None
        self._runs: dict[str, Run] = {}
        self._closed = False
        self._lock = threading.Lock()
        _LIVE_ENGINES.add(self)

    # -- runs ----------------------------------------------------------------------------

    def start_run(self, technique: Technique, uid: str, metadata: dict[str, Any], *, new_version: bool = False) -> Run:
        """A new run of ``technique``, fed frame by frame (what callbacks and ``tomolive process`` do).

        A live run's uid is new: if a result of ``uid`` exists, the run is refused and the
        result left alone. ``new_version`` (reprocessing) keeps existing results and adds a
        new version beside them.
        """
        run = Run(self, technique, uid, metadata, new_version=new_version)
        with self._lock:
            self._latest = uid
            self._runs = {key: r for key, r in self._runs.items() if not r.ended} | {uid: run}  # ended: in _futures
        return run

    def submit(self, uid: str, job: Callable[[], ProcessedRun]) -> None:
        """Queue a run's processing on the processing thread (one run at a time)."""
        with self._lock:
            self._futures[uid] = self._processing.submit(job)

    def resolve(self, uid: str, job: Callable[[], ProcessedRun]) -> None:
        """Record the outcome of a run that ended without processing, on an I/O thread."""
        with self._lock:
            if uid not in self._futures:
                self._futures[uid] = self.io.submit(job)

    def wait(self, uid: str | None = None, timeout: float | None = None) -> ProcessedRun:
        """Block until run ``uid`` (default: the run started last) is processed; return its outcome.

        A run's outcome exists once its stop has been handled, just after ``RE()`` returns,
        so the default waits for that run, never for the one before it.
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

    # -- where results go ----------------------------------------------------------------

    def open_store_later(self, uid: str, metadata: dict[str, Any], *, new_version: bool = False) -> Future:
        """Run ``uid``'s result store, created on an I/O thread (retried while Tiled is unreachable)."""
        return self.io.submit(
            self.patiently, lambda: self._open_store(uid, metadata, new_version), f"create the record of run {uid}"
        )

    def open_outbox(self, uid: str, metadata: dict[str, Any]) -> OutboxResult:
        """A fresh local outbox entry for run ``uid``, for when Tiled stays unreachable."""
        return OutboxResult.create(self.outbox_dir, uid, metadata)

    def _open_tiled_record(self, uid: str, metadata: dict[str, Any], new_version: bool) -> TiledResult:
        api_key = self.client.context.api_key
        return TiledResult.create(self.client, uid, metadata, api_key, new_version=new_version)

    def patiently(self, call: Callable[[], T], what: str) -> T:
        """``call()``, retried while the server is unreachable, for the engine's patience."""
        return patiently(call, what, self.patience_s)

    @staticmethod
    def is_unreachable(err: BaseException) -> bool:
        """Whether ``err`` means the result store is down or stalled (worth the outbox)."""
        return is_unreachable(err)

    # -- Dask ------------------------------------------------------------------------------

    def dask_client(self) -> Client:
        """The Dask client, connecting (or starting a LocalCluster) on first use."""
        if self._dask is None:
            self._dask, self._owns_dask = connect_dask(self._dask_spec)
        return self._dask

    def run_blocks(
        self, name: str, function: Callable, args: list[tuple], *, resources: dict[str, float] | None = None
    ) -> list[Any]:
        """``function(*a)`` for each block's ``a`` on Dask, with a progress bar; results in block order."""
        return run_blocks(self.dask_client(), name, function, args, self.progress, None, resources=resources)

    # -- events and life -------------------------------------------------------------------

    def subscribe(self, callback: ResultCallback, kinds: str | Iterable[str] = EVENT_KINDS) -> int:
        """Call ``callback(kind, payload)`` on result events (:mod:`tomolive.engine.events`); return a token."""
        return self.events.subscribe(callback, kinds)

    def unsubscribe(self, token: int) -> None:
        """Stop the callback subscribed with ``token``."""
        self.events.unsubscribe(token)

    def finish_pending(self) -> None:
        """Finish every run whose stop has arrived; mark runs still taking frames aborted."""
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            if run.state is RunState.INGESTING:
                run.end("aborted", "the script exited before the run's stop document")
        with self._lock:  # runs still taking frames (no outcome yet), and every outcome not yet done
            pending = {run.uid for run in runs} | {uid for uid, future in self._futures.items() if not future.done()}
        if pending:
            print(f"tomolive: finishing {len(pending)} run(s) before exit", file=sys.stderr, flush=True)
        for uid in sorted(pending):
            self.wait(uid)

    def close(self) -> None:
        """Finish queued work and release the Dask cluster this engine started."""
        if self._closed:
            return
        self._closed = True
        self._processing.shutdown(wait=True)
        self.io.shutdown(wait=True)
        if self._dask is not None and self._owns_dask:
            cluster = self._dask.cluster
            self._dask.close()
            if cluster is not None:
                cluster.close()
        self._dask = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _finish_before_exit() -> None:
    """At interpreter exit, before thread pools stop taking work: let every engine finish its runs."""
    for engine in list(_LIVE_ENGINES):
        if not engine._closed:
            try:
                engine.finish_pending()
            finally:
                engine.close()


# Runs before concurrent.futures' own exit hook (registered earlier, called later), which
# would refuse the work a run still queues; the same hook the standard library uses.
threading._register_atexit(_finish_before_exit)  # type: ignore[attr-defined]
