"""examples/ run as a newcomer runs them: separate processes against the test server."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def run_example(tiled_server, dask_client):
    """Run ``examples/<name>`` with the server's URI and key in the environment; return stdout."""
    env = {k: v for k, v in os.environ.items() if k != "TILED_API_KEY"}
    env.update(TOMOLIVE_TILED_URI=tiled_server.uri, TOMOLIVE_API_KEY=tiled_server.api_key)
    scheduler = dask_client.scheduler.address

    def run(name: str, *args: str, dask: bool = True) -> str:
        command = [sys.executable, str(REPO / "examples" / name), *args, *(["--dask", scheduler] if dask else [])]
        done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    return run


def test_session_then_query_follow_the_scan_from_plan_to_raw_run(run_example):
    sample = f"example-{uuid.uuid4().hex[:8]}"
    out = run_example("ipython_session.py", "--sample", sample, "--size", "64", "--angles", "90")
    uid = out.split()[1].rstrip(":")
    assert f"scan {uid}: complete" in out and "recon:  (16, 64, 64)" in out and f"raw/{uid}" in out

    out = run_example("query_tiled.py", "--sample", sample, dask=False)
    assert f"1 complete scan(s) of sample {sample!r}" in out
    assert f"latest {uid}: recon (16, 64, 64) float32" in out
    assert "plan tomo_scan" in out and "projections (90, 16, 64)" in out
    assert f"results of raw run {uid}: [{uid!r}]" in out


def test_custom_callback_sees_the_scan_beside_the_pipeline(run_example):
    out = run_example("custom_callback.py", "--size", "48")
    assert "TransmissionCheck: 90 projections, transmission" in out
    low, high = map(float, out.split("transmission ")[1].split()[0].split("-"))
    assert 0.05 < low <= high <= 1.05
    assert "complete" in out.splitlines()[-1]


def test_custom_stage_runs_after_the_pipeline_and_events_report_it(run_example):
    out = run_example("custom_stage.py", "--size", "64")
    assert "complete: http" in out and "'solid_mask', 'solid_fraction']" in out
    assert "solid_mask: (16, 64, 64) uint8" in out
    mask_solid = float(out.split("solid_mask: (16, 64, 64) uint8, solid fraction ")[1].split()[0])
    solid = float(out.split("solid_fraction: solid ")[1].split(",")[0])
    assert 0.3 < solid < 0.95 and abs(mask_solid - solid) < 0.1, out
    assert out.splitlines()[-1].endswith("complete")
