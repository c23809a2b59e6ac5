"""Progress reports to a scan's metadata, sent off the processing thread and rate-limited.

A progress update is a metadata PATCH to Tiled, which costs the server CPU the workers may
share (docs/measurements/engine.md); sent inline, each would delay the processing thread.
:class:`ProgressReporter` hands them to an I/O thread, sends a stage's first report at
once and later ones at most every ``interval_s``, and only ever the newest: progress is
a state, not a log. A stage's last report (``done == total``), unless it is also its
first, is not sent on its own: moments later the next stage's first report replaces it,
or the final status carries it. The newest state is handed back by
:meth:`ProgressReporter.finish`, so the final status update carries it instead of one
more round trip on the way to the result.
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import Executor, Future
from typing import Any, Protocol

PROGRESS_INTERVAL = 2.0
"""Seconds between progress updates of one stage written to Tiled metadata."""


class ProgressSink(Protocol):
    """Where progress goes: a Tiled record (``store.TiledResult``) or an outbox entry."""

    def update(self, **metadata: Any) -> None: ...


class ProgressReporter:
    """Sends ``progress`` metadata updates to ``sink`` on ``executor``, newest first.

    An update that fails is raised on the processing thread by the next :meth:`report`
    or :meth:`finish`, so an unreachable server is noticed as soon as it was inline.
    """

    def __init__(self, sink: ProgressSink, executor: Executor, interval_s: float = PROGRESS_INTERVAL):
        self._sink = sink
        self._executor = executor
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._latest: dict[str, Any] | None = None  # newest state reported
        self._pending: dict[str, Any] | None = None  # newest state due to be sent
        self._queued_stage: Any = None
        self._queued_at = -math.inf
        self._sending: Future | None = None
        self._error: BaseException | None = None

    def report(self, **progress: Any) -> None:
        """Record ``progress`` (e.g. ``stage="recon", done=3, total=32``); returns at once.

        It is sent when its stage is new, or when ``interval_s`` has passed since the last
        send and it is not the stage's last (``done == total``), replacing any update still
        waiting; otherwise it is held until the next one is due.
        """
        with self._lock:
            self._raise_error()
            self._latest = progress
            new_stage = progress.get("stage") != self._queued_stage
            last = "total" in progress and progress.get("done") == progress["total"]
            if not (new_stage or (time.monotonic() - self._queued_at >= self.interval_s and not last)):
                return
            self._pending = progress
            self._queued_stage, self._queued_at = progress.get("stage"), time.monotonic()
            if self._sending is None:
                self._sending = self._executor.submit(self._send)

    def finish(self) -> dict[str, Any] | None:
        """Stop sending: drop the update still waiting, wait for the one in flight, raise
        the first that failed; return the newest state reported, for the final status."""
        with self._lock:
            self._pending = None
            sending = self._sending
        if sending is not None:
            sending.result()
        with self._lock:
            self._raise_error()
            return self._latest

    def _send(self) -> None:
        while True:
            with self._lock:
                progress, self._pending = self._pending, None
                if progress is None or self._error is not None:
                    self._sending = None
                    return
            try:
                self._sink.update(progress=progress)
            except Exception as err:  # kept for the processing thread, which decides what it means
                with self._lock:
                    self._error = err

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
