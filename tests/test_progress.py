"""Progress reports go out off the processing thread, newest first, and failures come back."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tomolive.progress import ProgressReporter


class SlowSink:
    """A sink whose first update blocks until released, like a stalled server."""

    def __init__(self, fail: Exception | None = None):
        self.sent: list[dict] = []
        self.release = threading.Event()
        self.fail = fail

    def update(self, **metadata):
        self.release.wait(10)
        if self.fail is not None:
            raise self.fail
        self.sent.append(metadata["progress"])


def test_reports_return_at_once_and_only_the_newest_waiting_one_is_sent():
    sink = SlowSink()
    with ThreadPoolExecutor(1) as io:
        reporter = ProgressReporter(sink, io)
        for done in range(1, 11):
            reporter.report(stage="recon", done=done, total=10)  # the first is in flight, blocked
        assert sink.sent == []
        sink.release.set()
        reporter.flush()
    assert sink.sent[-1] == {"stage": "recon", "done": 10, "total": 10}
    assert len(sink.sent) <= 2  # the one in flight (if it had started), then the newest waiting


def test_a_failed_update_is_raised_on_the_next_report_and_on_flush():
    sink = SlowSink(fail=ConnectionError("server gone"))
    sink.release.set()
    with ThreadPoolExecutor(1) as io:
        reporter = ProgressReporter(sink, io)
        reporter.report(stage="recon", done=1, total=4)
        with pytest.raises(ConnectionError, match="server gone"):
            reporter.flush()
        reporter.report(stage="recon", done=2, total=4)
        io.submit(lambda: None).result()  # let the update fail
        with pytest.raises(ConnectionError, match="server gone"):
            reporter.report(stage="recon", done=3, total=4)
