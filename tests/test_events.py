"""Users' callbacks hear processed results: QC alerts, complete, failed; never on the RunEngine thread."""

from __future__ import annotations

import threading

import pytest
from bluesky import RunEngine

from tomolive.engine.events import EVENT_KINDS, ResultEvents
from tomolive.errors import BadInputError
from tomolive.store import connect
from tomolive.techniques.tomo import PipelineParams


class Recorder:
    """A user's callback: keeps (kind, payload, thread name)."""

    def __init__(self):
        self.seen: list[tuple[str, dict, str]] = []

    def __call__(self, kind: str, payload: dict) -> None:
        self.seen.append((kind, payload, threading.current_thread().name))


def test_subscribe_validates_and_unsubscribe_stops_calls(caplog):
    events = ResultEvents()
    with pytest.raises(BadInputError, match="'finished'"):
        events.subscribe(print, kinds=("finished",))
    with pytest.raises(BadInputError, match="callable"):
        events.subscribe("print")
    first, second = Recorder(), Recorder()
    token = events.subscribe(first)
    events.subscribe(second, kinds="failed")

    def broken(kind, payload):
        raise RuntimeError("user bug")

    events.subscribe(broken)
    events.emit("complete", {"uid": "u1"})
    events.unsubscribe(token)
    events.unsubscribe(token)  # unknown tokens are ignored, as in bluesky
    events.emit("failed", {"uid": "u2"})
    assert [(k, p["uid"]) for k, p, _ in first.seen] == [("complete", "u1")]
    assert [(k, p["uid"]) for k, p, _ in second.seen] == [("failed", "u2")]
    assert sum("user bug" in r.exc_text for r in caplog.records if r.exc_text) == 2


def test_payloads_are_copies():
    events = ResultEvents()
    a, b = Recorder(), Recorder()
    events.subscribe(lambda kind, payload: payload["qc"].clear())
    events.subscribe(a)
    events.subscribe(b)
    events.emit("complete", {"uid": "u", "qc": {"snr": 3.0}})
    assert a.seen[0][1]["qc"] == b.seen[0][1]["qc"] == {"snr": 3.0}


def test_scan_events_reach_user_callbacks_off_the_runengine_thread(
    tiled_server, pipeline, monkeypatch, beamline, scan_plan, caplog
):
    monkeypatch.setattr(pipeline, "params", PipelineParams(qc_thresholds={"min_snr": 1e9}))  # an alert
    recorder, dropped = Recorder(), Recorder()
    re_threads: set[str] = set()
    pipeline.subscribe(recorder)
    pipeline.unsubscribe(pipeline.subscribe(dropped))
    pipeline.subscribe(lambda kind, payload: 1 / 0, kinds=("complete",))  # a broken user callback
    RE = RunEngine()
    RE.subscribe(lambda name, doc: re_threads.add(threading.current_thread().name))
    RE.subscribe(pipeline)
    (uid,) = RE(scan_plan(beamline, n_angles=90, md={"sample": "foam-events"}))
    assert pipeline.wait(uid, timeout=300).status == "complete"
    (failed,) = RE(scan_plan(beamline, n_angles=10, n_darks=0))
    assert pipeline.wait(failed, timeout=120).status == "failed"

    kinds = [(kind, payload["uid"]) for kind, payload, _ in recorder.seen]
    md = connect(tiled_server.uri, api_key=tiled_server.api_key)["processed"][uid].metadata
    alerts = md["qc"]["alerts"]
    assert alerts and any("signal-to-noise" in a for a in alerts)
    assert kinds == [*[("qc_alert", uid)] * len(alerts), ("complete", uid), ("failed", failed)]
    assert [p["alert"] for k, p, _ in recorder.seen if k == "qc_alert"] == alerts
    complete = next(p for k, p, _ in recorder.seen if k == "complete")
    assert complete["uri"].endswith(f"/processed/{uid}") and complete["status"] == "complete"
    assert complete["stages"] == md["stages"] and complete["qc"] == md["qc"]
    assert complete["sample"] == "foam-events" and complete["scan_id"] == md["scan_id"]
    fail = recorder.seen[-1][1]
    assert fail["status"] == "failed" and "no dark frames" in fail["reason"]
    assert not dropped.seen
    threads = {name for _, _, name in recorder.seen}
    assert threads.isdisjoint(re_threads) and all(name.startswith("tomolive-") for name in threads), threads
    assert any("ZeroDivisionError" in (r.exc_text or "") for r in caplog.records)  # logged, not raised
    assert set(EVENT_KINDS) >= set(k for k, _ in kinds)
