"""Progress reports go out off the processing thread, newest first, and failures come back."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tomolive.engine.progress import ProgressReporter


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


def test_reports_return_at_once_and_only_the_newest_due_one_is_sent():
    sink = SlowSink()
    with ThreadPoolExecutor(1) as io:
        reporter = ProgressReporter(sink, io, interval_s=0.0)  # every report is due
        for done in range(1, 10):
            reporter.report(stage="recon", done=done, total=10)  # the first is in flight, blocked
        assert sink.sent == []
        sink.release.set()
        io.submit(lambda: None).result()  # the sender has taken what was waiting
        assert reporter.finish() == {"stage": "recon", "done": 9, "total": 10}
    assert sink.sent[-1] == {"stage": "recon", "done": 9, "total": 10}
    assert len(sink.sent) <= 2  # the one in flight (if it had started), then the newest waiting


def test_a_stages_last_report_is_not_sent_unless_it_is_also_its_first():
    sink = SlowSink()
    sink.release.set()
    with ThreadPoolExecutor(1) as io:
        reporter = ProgressReporter(sink, io, interval_s=0.0)  # every report is due
        reporter.report(stage="recon", done=1, total=2)
        reporter.report(stage="recon", done=2, total=2)  # replaced by the next stage's first
        io.submit(lambda: None).result()
        assert sink.sent == [{"stage": "recon", "done": 1, "total": 2}]
        reporter.report(stage="analysis")
        reporter.report(stage="segment", done=1, total=1)  # a stage's only report goes out
        io.submit(lambda: None).result()
        reporter.report(stage="extra_stages", done=1, total=2)
        io.submit(lambda: None).result()
        reporter.report(stage="extra_stages", done=2, total=2)
        final = reporter.finish()  # the final status carries it
    assert sink.sent[0] == {"stage": "recon", "done": 1, "total": 2}
    assert sink.sent[-2:] == [
        {"stage": "segment", "done": 1, "total": 1},
        {"stage": "extra_stages", "done": 1, "total": 2},
    ]
    assert final == {"stage": "extra_stages", "done": 2, "total": 2}


def test_a_stage_is_sent_when_it_starts_then_at_most_every_interval_and_finish_returns_the_rest():
    sink = SlowSink()
    sink.release.set()
    with ThreadPoolExecutor(1) as io:
        reporter = ProgressReporter(sink, io, interval_s=3600.0)
        for done in range(1, 6):
            reporter.report(stage="recon", done=done, total=5)
        io.submit(lambda: None).result()
        assert sink.sent == [{"stage": "recon", "done": 1, "total": 5}]  # the rest are held
        for stage in ("analysis", "extra_stages"):  # a new stage goes out at once
            reporter.report(stage=stage, done=1, total=2)
            io.submit(lambda: None).result()
        reporter.report(stage="extra_stages", done=2, total=2)
        final = reporter.finish()  # sends nothing more: the caller's final status carries it
    assert sink.sent[1:] == [
        {"stage": "analysis", "done": 1, "total": 2},
        {"stage": "extra_stages", "done": 1, "total": 2},
    ]
    assert final == {"stage": "extra_stages", "done": 2, "total": 2}


def test_a_failed_update_is_raised_on_the_next_report_and_on_finish():
    sink = SlowSink(fail=ConnectionError("server gone"))
    sink.release.set()
    with ThreadPoolExecutor(1) as io:
        reporter = ProgressReporter(sink, io)
        reporter.report(stage="recon", done=1, total=4)
        io.submit(lambda: None).result()  # let the update fail (finish drops one not yet taken)
        with pytest.raises(ConnectionError, match="server gone"):
            reporter.finish()
        reporter.report(stage="analysis")
        io.submit(lambda: None).result()  # let the update fail
        with pytest.raises(ConnectionError, match="server gone"):
            reporter.report(stage="extra_stages", done=1, total=4)
