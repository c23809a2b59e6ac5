"""Malformed documents never crash the RunEngine: the run ends ``failed`` in Tiled, naming the fault.

A real RunEngine runs ``tomo_scan``; a relay subscribed to it mutates the real documents
(drops keys, reshapes frames, reorders or repeats the stop) before handing them to the
pipeline, exactly as a faulty plan, detector or transport would.
"""

from __future__ import annotations

import copy
import logging
import time
import uuid
from collections.abc import Callable

import numpy as np
import pytest
from bluesky import RunEngine
from tiled.client import from_uri

Docs = list[tuple[str, dict]]


class Relay:
    """RunEngine subscriber: passes each document through ``mutate`` on its way to the pipeline."""

    def __init__(self, pipe, mutate: Callable[[Relay, str, dict], Docs]):
        self.pipe, self.mutate = pipe, mutate
        self.start: dict = {}
        self.streams: dict[str, str] = {}
        self.held: Docs = []
        self.primary_events = 0

    def __call__(self, name: str, doc: dict) -> None:
        doc = copy.deepcopy(doc)
        if name == "start":
            self.start = doc
        elif name == "descriptor":
            self.streams[doc["uid"]] = doc["name"]
        for out_name, out_doc in self.mutate(self, name, doc):
            self.pipe(out_name, out_doc)  # an exception here would reach the RunEngine

    def stream(self, doc: dict) -> str | None:
        return self.streams.get(doc.get("descriptor"))

    @property
    def image(self) -> str:
        return self.start["tomo"]["image_field"]

    @property
    def angle(self) -> str:
        return self.start["tomo"]["angle_field"]


def drop_tomo_key(relay, name, doc):
    if name == "start":
        del doc["tomo"]["image_field"]
    return [(name, doc)]


def tomo_not_a_mapping(relay, name, doc):
    if name == "start":
        doc["tomo"] = "yes"
    return [(name, doc)]


def descriptor_without_image(relay, name, doc):
    if name == "descriptor" and doc["name"] == "primary":
        del doc["data_keys"][relay.image]
    return [(name, doc)]


def descriptor_without_data_keys(relay, name, doc):
    if name == "descriptor" and doc["name"] == "flat":
        del doc["data_keys"]
    return [(name, doc)]


def event_without_angle(relay, name, doc):
    if name == "event" and relay.stream(doc) == "primary":
        del doc["data"][relay.angle]
    return [(name, doc)]


def event_without_data(relay, name, doc):
    if name == "event" and relay.stream(doc) == "primary":
        del doc["data"]
    return [(name, doc)]


def projection_narrower_than_darks(relay, name, doc):
    if name == "event" and relay.stream(doc) == "primary":
        doc["data"][relay.image] = np.asarray(doc["data"][relay.image])[:, :-4]
    return [(name, doc)]


def one_dimensional_frames(relay, name, doc):
    if name == "event":
        doc["data"][relay.image] = np.asarray(doc["data"][relay.image]).ravel()
    return [(name, doc)]


def empty_frames(relay, name, doc):
    if name == "event":
        doc["data"][relay.image] = np.asarray(doc["data"][relay.image])[:0]
    return [(name, doc)]


def stop_before_descriptors(relay, name, doc):
    if name == "start":
        stop = {
            "uid": str(uuid.uuid4()),
            "time": time.time(),
            "run_start": doc["uid"],
            "exit_status": "success",
            "reason": "",
            "num_events": {},
        }
        return [(name, doc), ("stop", stop)]
    return [(name, doc)]


def event_after_stop(relay, name, doc):
    if name == "event" and relay.stream(doc) == "primary" and not relay.held:
        relay.held.append((name, doc))  # the first projection comes after the stop
        return []
    if name == "stop":
        return [(name, doc), *relay.held]
    return [(name, doc)]


def second_stop(relay, name, doc):
    return [(name, doc), (name, doc)] if name == "stop" else [(name, doc)]


CASES = [
    (drop_tomo_key, "'image_field'"),
    (tomo_not_a_mapping, "must be a mapping"),
    (descriptor_without_image, "no image field"),
    (descriptor_without_data_keys, "'data_keys' is missing"),
    (event_without_angle, "no angle field"),
    (event_without_data, "'data' is missing"),
    (projection_narrower_than_darks, "shape (16, 92) but the frames before it have (16, 96)"),
    (one_dimensional_frames, "expected a 2-D detector image"),
    (empty_frames, "shape (0, 96); expected a 2-D detector image (rows, columns) of at least 1 row"),
    (stop_before_descriptors, "stop"),
    (event_after_stop, "after the run's stop"),
    (second_stop, "after the run's stop"),
]


@pytest.mark.parametrize(("mutate", "expected"), CASES, ids=[c[0].__name__ for c in CASES])
def test_malformed_documents_fail_the_run_not_the_runengine(
    tiled_server, pipeline, beamline, scan_plan, caplog, mutate, expected
):
    RE = RunEngine()
    RE.subscribe(Relay(pipeline, mutate))
    (uid,) = RE(scan_plan(beamline, n_angles=20, n_darks=2, n_flats=2, md={"sample": f"malformed-{mutate.__name__}"}))
    assert RE.state == "idle"  # the plan ran to its end

    outcome = pipeline.wait(uid, timeout=120)
    assert outcome.status == "failed" and expected in outcome.reason, outcome
    md = from_uri(tiled_server.uri, api_key=tiled_server.api_key)["processed"][uid].metadata
    assert md["status"] == "failed" and expected in md["reason"], md["reason"]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(uid in m and expected in m for m in errors), errors


def stray_event(relay, name, doc):
    if name == "event" and relay.stream(doc) == "primary":
        relay.primary_events += 1
        if relay.primary_events == 3:  # a copy naming a descriptor no run announced
            return [(name, doc), (name, {**doc, "descriptor": "no-such-descriptor", "uid": str(uuid.uuid4())})]
    return [(name, doc)]


def test_an_event_no_run_announced_is_dropped_and_fails_no_run(pipeline, beamline, scan_plan, caplog):
    RE = RunEngine()
    RE.subscribe(Relay(pipeline, stray_event))
    (uid,) = RE(scan_plan(beamline, n_angles=20, n_darks=2, n_flats=2, md={"sample": "stray event"}))
    outcome = pipeline.wait(uid, timeout=120)
    assert outcome.status == "complete", outcome
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("'no-such-descriptor', which no descriptor document announced" in m and "dropped" in m for m in errors)


def test_a_good_scan_after_malformed_ones_completes(pipeline, beamline, scan_plan, run_scan):
    RE = RunEngine()
    RE.subscribe(Relay(pipeline, event_without_angle))
    (bad,) = RE(scan_plan(beamline, n_angles=20))
    good = run_scan(beamline, n_angles=60)
    assert pipeline.wait(bad, timeout=120).status == "failed"
    assert pipeline.wait(good, timeout=120).status == "complete"
