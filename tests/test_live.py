"""Live during the scan: the preview is in Tiled before the stop document and sharpens."""

from __future__ import annotations

import time

import numpy as np
from bluesky import RunEngine

from tomolive.qc import circle_mask, psnr
from tomolive.store import connect

CHECKPOINTS = (30, 60, 120)


def _wait_for_preview(client, uid: str, n_angles: int, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        node = client["processed"][uid] if "processed" in client and uid in client["processed"] else None
        if node is not None and "preview" in node:
            preview = node["preview"]
            preview.refresh()
            if preview.metadata["n_angles"] >= n_angles:
                return preview
        time.sleep(0.1)
    raise AssertionError(f"no preview with >= {n_angles} angles within {timeout} s")


def test_preview_lands_before_the_stop_and_sharpens_as_angles_accumulate(tiled_server, pipeline, beamline, run_scan):
    client = connect(tiled_server.uri, api_key=tiled_server.api_key)
    truth = beamline.phantom.attenuation()[8]
    mask = circle_mask(truth.shape, 0.9)
    seen: dict[int, float] = {}
    state = {"uid": None, "primary": None, "events": 0, "preview_at_stop": None}

    def watcher(name: str, doc: dict) -> None:  # subscribed before the pipeline: runs first
        if name == "start":
            state["uid"] = doc["uid"]
        elif name == "descriptor" and doc["name"] == "primary":
            state["primary"] = doc["uid"]
        elif name == "event" and doc["descriptor"] == state["primary"]:
            state["events"] += 1
            if state["events"] - 1 in CHECKPOINTS:  # the pipeline has had events - 1 frames
                preview = _wait_for_preview(client, state["uid"], state["events"] - 1)
                rows = preview.metadata["rows"]
                n = preview.metadata["n_angles"]
                seen[n] = psnr(preview.read()[rows.index(8)], truth, mask=mask, fit=True)
        elif name == "stop":
            state["preview_at_stop"] = _wait_for_preview(client, state["uid"], 1).metadata["n_angles"]

    RE = RunEngine()
    RE.subscribe(watcher)
    uid = run_scan(beamline, n_angles=121, RE=RE)
    assert pipeline.wait(uid, timeout=120).status == "complete"

    assert state["preview_at_stop"] >= CHECKPOINTS[-1]  # there before the stop document
    scores = [seen[n] for n in sorted(seen)]
    assert sorted(seen)[0] >= CHECKPOINTS[0] and len(scores) == len(CHECKPOINTS)
    assert all(a < b for a, b in zip(scores, scores[1:])), seen
    assert scores[-1] - scores[0] > 3.0 and scores[-1] > 22.0, seen
    final = client["processed"][uid]["preview"]
    # every frame is in the last preview, or was still queued for it at the stop
    assert final.metadata["n_angles"] + final.metadata["frames_dropped"] == 121
    assert final.metadata["n_angles"] >= state["preview_at_stop"]
    assert final.metadata["center_source"] == "detector middle"
    assert np.isfinite(final.read()).all()
