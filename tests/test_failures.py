"""Aborted scans, processing errors and bad input: the RunEngine goes on, Tiled says why."""

from __future__ import annotations

import importlib
import threading
import time

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.utils import RunEngineInterrupted
from tiled.client import from_uri

from tomolive.errors import BadInputError
from tomolive.plans import tomo_scan
from tomolive.sim.devices import SimTomoDetector
from tomolive.techniques.tomo import PipelineParams


def container_md(tiled_server, uid):
    return from_uri(tiled_server.uri, api_key=tiled_server.api_key)["processed"][uid].metadata


class FaultyDetector(SimTomoDetector):
    """Simulated detector that goes wrong after ``good_frames`` triggers."""

    def __init__(self, *args, fault: str, good_frames: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.fault, self.good_frames, self.frames = fault, good_frames, 0

    def trigger(self):
        status = super().trigger()
        self.frames += 1
        if self.frames > self.good_frames:
            image = self.image.get().astype(np.float32)
            if self.fault == "nan":
                image[3, 5:9] = np.nan
            elif self.fault == "shape":
                image = image[:, :-4]
            self.image.put(image)
        return status


def faulty(beamline, fault, good_frames):
    b = beamline
    return FaultyDetector(
        name="faulty_det",
        phantom=b.phantom,
        rotation=b.rotation,
        sample_x=b.sample_x,
        shutter=b.shutter,
        photons=None,
        fault=fault,
        good_frames=good_frames,
    )


def pause_after(n_events, plan):
    """``plan`` with a pause inserted after its ``n_events``-th 'save' message (an operator's Ctrl-C)."""
    saved = 0

    def insert_pause(msg):
        nonlocal saved
        if msg.command == "save":
            saved += 1
            if saved == n_events:
                return None, bps.pause()
        return None, None

    return bpp.plan_mutator(plan, insert_pause)


def test_aborted_scan_is_marked_aborted_and_its_empty_volume_marked_unwritten(tiled_server, pipeline, beamline):
    RE = RunEngine()
    RE.subscribe(pipeline)
    starts = []
    RE.subscribe(lambda name, doc: starts.append(doc["uid"]), "start")
    b = beamline
    plan = tomo_scan(
        b.detector,
        b.rotation,
        np.linspace(0, 180, 60, endpoint=False),
        2,
        2,
        shutter=b.shutter,
        sample_x=b.sample_x,
        sample_out=b.sample_out,
        md={"sample": "aborted"},
    )
    with pytest.raises(RunEngineInterrupted):
        RE(pause_after(10, plan))  # 2 darks, 2 flats, 6 projections
    assert RE.state == "paused"
    processed = from_uri(tiled_server.uri, api_key=tiled_server.api_key)["processed"]
    deadline = time.monotonic() + 30
    while not (starts[0] in processed and "recon" in processed[starts[0]]) and time.monotonic() < deadline:
        time.sleep(0.1)  # the record, then its array once a projection gave the frame shape
    assert processed[starts[0]]["recon"].shape == (16, 96, 96)
    (uid,) = RE.abort(reason="operator stopped the scan")
    outcome = pipeline.wait(uid, timeout=60)
    assert outcome.status == "aborted"
    md = container_md(tiled_server, uid)
    assert md["status"] == "aborted" and "abort" in md["reason"] and md["unwritten"] == ["recon"]


def test_processing_error_marks_failed_with_message(tiled_server, pipeline, beamline, run_scan, monkeypatch):
    # 100 degrees of rotation cannot be reconstructed: the error happens on the Dask worker.
    # tomo_scan refuses such angles; a plan from elsewhere may not, so its check is bypassed here.
    monkeypatch.setattr(
        importlib.import_module("tomolive.plans.tomo_scan"), "check_angles", lambda angles: [float(a) for a in angles]
    )
    uid = run_scan(beamline, angles=np.linspace(0, 100, 50), sample="too-narrow")
    outcome = pipeline.wait(uid, timeout=120)
    assert outcome.status == "failed"
    md = container_md(tiled_server, uid)
    assert md["status"] == "failed" and "180" in md["reason"]
    assert "provenance" in md


def test_unknown_backend_fails_cleanly(tiled_server, tmp_path, dask_client, beamline):
    from tomolive.callbacks import TomoPipeline

    with TomoPipeline.from_uri(
        tiled_server.uri,
        api_key=tiled_server.api_key,
        dask=dask_client,
        params=PipelineParams(method="no-such-backend"),
        scratch_dir=tmp_path,
        progress=False,
    ) as pipe:
        RE = RunEngine()
        RE.subscribe(pipe)
        b = beamline
        (uid,) = RE(
            tomo_scan(
                b.detector,
                b.rotation,
                np.linspace(0, 180, 30, endpoint=False),
                1,
                1,
                shutter=b.shutter,
                sample_x=b.sample_x,
                sample_out=b.sample_out,
            )
        )
        outcome = pipe.wait(uid, timeout=120)
    assert outcome.status == "failed" and "no-such-backend" in outcome.reason


@pytest.mark.parametrize(
    ("fault", "expected"),
    [("nan", "NaN"), ("shape", "shape")],
)
def test_bad_frames_fail_the_run_not_the_runengine(tiled_server, pipeline, beamline, fault, expected):
    RE = RunEngine()
    RE.subscribe(pipeline)
    b = beamline
    detector = faulty(b, fault, good_frames=2 + 2 + 5)  # darks + flats + 5 projections
    (uid,) = RE(
        tomo_scan(
            detector,
            b.rotation,
            np.linspace(0, 180, 20, endpoint=False),
            2,
            2,
            shutter=b.shutter,
            sample_x=b.sample_x,
            sample_out=b.sample_out,
        )
    )
    outcome = pipeline.wait(uid, timeout=60)
    assert outcome.status == "failed" and expected in outcome.reason
    md = container_md(tiled_server, uid)
    assert md["status"] == "failed" and expected in md["reason"]


@pytest.mark.parametrize("missing", ["dark", "flat"])
def test_missing_darks_or_flats_are_named(tiled_server, pipeline, beamline, run_scan, missing):
    counts = {"n_darks": 0 if missing == "dark" else 2, "n_flats": 0 if missing == "flat" else 2}
    uid = run_scan(beamline, n_angles=10, **counts)
    outcome = pipeline.wait(uid, timeout=60)
    assert outcome.status == "failed"
    assert f"no {missing} frames" in outcome.reason
    assert f"no {missing} frames" in container_md(tiled_server, uid)["reason"]


def test_plan_refuses_fewer_than_four_angles(beamline):
    b = beamline
    with pytest.raises(BadInputError, match="at least 4"):
        list(
            tomo_scan(
                b.detector, b.rotation, [0.0], 1, 1, shutter=b.shutter, sample_x=b.sample_x, sample_out=b.sample_out
            )
        )


def test_plan_refuses_darks_without_shutter(beamline):
    with pytest.raises(BadInputError, match="shutter"):
        list(tomo_scan(beamline.detector, beamline.rotation, [0.0, 45.0, 90.0, 135.0], n_darks=2, n_flats=0))


def test_non_tomography_runs_are_ignored(pipeline, beamline):
    import bluesky.plans as bp

    RE = RunEngine()
    RE.subscribe(pipeline)
    RE(bp.count([beamline.detector], num=2))  # no "tomo" metadata: nothing happens
    with pytest.raises(TimeoutError):
        pipeline.wait(timeout=0.5)


def test_a_scan_ended_while_its_first_frame_is_taken_in_leaves_no_spool_or_preview(pipeline, tmp_path, monkeypatch):
    """The end is recorded on another thread than the frames': it waits for the frame in hand."""
    from tomolive.techniques.tomo.acquisition import TomoAcquisition

    inside, release = threading.Event(), threading.Event()
    real_start = TomoAcquisition._start

    def slow_start(self, frame):  # the first projection makes the spool and the preview
        inside.set()
        release.wait(10)
        real_start(self, frame)

    monkeypatch.setattr(TomoAcquisition, "_start", slow_start)
    scan = pipeline.engine.start_run(pipeline.techniques[0], "ended-mid-frame", {"sample": "ended mid-frame"})
    scan.add("dark", np.zeros((16, 96), np.uint16))
    scan.add("flat", np.full((16, 96), 1000, np.uint16))
    scan.add("projection", np.full((16, 96), 500, np.uint16), 0.0)
    assert inside.wait(10)
    scan.end("aborted", "operator stopped the scan")
    release.set()
    assert pipeline.wait("ended-mid-frame", timeout=60).status == "aborted"
    scan._ingest.join(10)
    assert not scan._ingest.is_alive()
    assert not list(tmp_path.glob("tomolive-spool-*")) and scan.acquisition.preview is None


def test_a_run_failing_before_its_blocks_marks_its_empty_volume(
    tiled_server, pipeline, beamline, run_scan, monkeypatch
):
    """Processing made the array itself (none was made during the scan), then the centre search failed."""
    import tomolive.techniques.tomo.stages as stages_module
    from tomolive.techniques.tomo.acquisition import TomoAcquisition

    def broken_centre(*args, **kwargs):
        raise BadInputError("the centre search broke")

    monkeypatch.setattr(TomoAcquisition, "_make_recon_volume", lambda self, store, shape: None)
    monkeypatch.setattr(stages_module, "find_scan_center", broken_centre)
    uid = run_scan(beamline, n_angles=30, sample="centre fails")
    outcome = pipeline.wait(uid, timeout=60)
    assert outcome.status == "failed" and "the centre search broke" in outcome.reason
    assert container_md(tiled_server, uid)["unwritten"] == ["recon"]
