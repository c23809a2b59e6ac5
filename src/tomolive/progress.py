"""Progress reports to a scan's metadata, sent off the processing thread.

A progress update is a round trip to Tiled (~0.1 s). Sent inline, each one delays the
processing thread's next step; the last ones of a stage sit on the path to the result.
:class:`ProgressReporter` hands them to an I/O thread instead and, when updates come
faster than the server takes them, sends only the newest: progress is a state, not a log.
"""

from __future__ import annotations

import threading
from concurrent.futures import Executor, Future
from typing import Any, Protocol


class ProgressSink(Protocol):
    """Where progress goes: a Tiled record (``store.ScanRecord``) or an outbox entry."""

    def update(self, **metadata: Any) -> None: ...


class ProgressReporter:
    """Sends ``progress`` metadata updates to ``sink`` on ``executor``, newest first.

    An update that fails is raised on the processing thread by the next :meth:`report`
    or :meth:`flush`, so an unreachable server is noticed as soon as it was inline.
    """

    def __init__(self, sink: ProgressSink, executor: Executor):
        self._sink = sink
        self._executor = executor
        self._lock = threading.Lock()
        self._pending: dict[str, Any] | None = None
        self._sending: Future | None = None
        self._error: BaseException | None = None

    def report(self, **progress: Any) -> None:
        """Queue ``progress`` (e.g. ``stage="recon", done=3, total=32``), replacing any unsent one."""
        with self._lock:
            self._raise_error()
            self._pending = progress
            if self._sending is None:
                self._sending = self._executor.submit(self._send)

    def flush(self) -> None:
        """Wait until every queued update is sent; raise the first one that failed."""
        with self._lock:
            sending = self._sending
        if sending is not None:
            sending.result()
        with self._lock:
            self._raise_error()

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
