"""No result is lost or mislabelled: uid reuse refused, physics sanity, scripts that end early or lack a guard."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from bluesky import RunEngine

from tomolive.callbacks import TomoPipeline
from tomolive.engine import Engine
from tomolive.store import connect
from tomolive.techniques import TomoTechnique
from tomolive.techniques.tomo import PipelineParams

from .toy_technique import memory_opener

SHAPE = (8, 32)


def test_a_start_reusing_a_completed_uid_is_refused_and_the_result_kept(
    tiled_server, pipeline, dask_client, beamline, scan_plan, tmp_path
):
    RE = RunEngine()
    documents = []
    RE.subscribe(pipeline)
    RE.subscribe(lambda name, doc: documents.append((name, doc)))
    (uid,) = RE(scan_plan(beamline, n_angles=30, md={"sample": "original"}))
    assert pipeline.wait(uid, timeout=120).status == "complete"
    processed = connect(tiled_server.uri, api_key=tiled_server.api_key)["processed"]
    before = processed[uid]["recon"].read(), dict(processed[uid].metadata)

    spoofed = [(name, {**doc, "sample": "SPOOFED"} if name == "start" else doc) for name, doc in documents]
    with TomoPipeline.from_uri(
        tiled_server.uri, api_key=tiled_server.api_key, dask=dask_client, scratch_dir=tmp_path, progress=False
    ) as replay:
        for name, doc in spoofed:
            replay(name, doc)
        outcome = replay.wait(uid, timeout=120)
    assert outcome.status == "failed" and "already exists" in outcome.reason and outcome.uri is None
    np.testing.assert_array_equal(processed[uid]["recon"].read(), before[0])
    assert dict(processed[uid].metadata) == before[1] and processed[uid].metadata["sample"] == "original"
    assert list(processed.keys()).count(uid) == 1 and f"{uid}-v2" not in processed


class FramesOnly(TomoTechnique):
    """Tomography's acquisition (where the checks are), with no processing stage: no Dask needed."""

    def stages(self):
        return []


def feed(frames: dict[str, list[np.ndarray]], tmp_path, uid: str = "sanity"):
    """Darks, flats and projections through a tomography run on an in-memory store; its outcome."""
    technique = FramesOnly(PipelineParams(center=15.5, preview_rows=()))
    with Engine(open_store=memory_opener({}), scratch_dir=tmp_path, outbox_dir=tmp_path, progress=False) as engine:
        run = engine.start_run(technique, uid, {"sample": "sanity"})
        for role in ("dark", "flat", "projection"):
            for i, frame in enumerate(frames[role]):
                run.add(role, frame, float(i) if role == "projection" else None)
        run.finish()
        return engine.wait(uid, timeout=30)


def frames(dark=10, flat=1000, projection=500, n=4):
    return {
        "dark": [np.full(SHAPE, dark, np.uint16)] * 2,
        "flat": [np.full(SHAPE, flat, np.uint16)] * 2,
        "projection": [np.full(SHAPE, projection, np.uint16)] * n,
    }


def test_good_frames_pass_the_sanity_checks(tmp_path):
    assert feed(frames(), tmp_path).status == "complete"


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ({"flat": 0}, "flat frame 0 (stream 'flat') is all zero"),
        ({"flat": 10}, "the flats (stream 'flat') are not brighter than the darks (stream 'dark') at 100% of pixels"),
        ({"dark": 2000}, "not brighter than the darks"),
        ({"projection": 4000}, "projection frame 0 (stream 'primary') is brighter than the flats"),
        ({"projection": 0}, "projection frame 0 (stream 'primary') is all zero"),
        ({"flat": 65535}, "flat frame 0 (stream 'flat') is saturated: 100% of its pixels"),
    ],
)
def test_frames_against_physics_fail_the_scan_naming_stream_and_frame(tmp_path, bad, expected):
    outcome = feed(frames(**bad), tmp_path)
    assert outcome.status == "failed" and expected in outcome.reason, outcome.reason


SCRIPT = """
import sys
from bluesky import RunEngine
from tomolive.callbacks import TomoPipeline
from tomolive.plans import tomo_scan
from tomolive.sim import make_foam, make_sim_beamline
import numpy as np

def main():
    pipe = TomoPipeline.from_uri(sys.argv[1], api_key=sys.argv[2], dask=DASK, progress=False)
    RE = RunEngine()
    RE.subscribe(pipe)
    bl = make_sim_beamline(make_foam((16, 64, 64), seed=1), photons=5000)
    (uid,) = RE(tomo_scan(bl.detector, bl.rotation, np.linspace(0, 180, 40, endpoint=False), 2, 2,
                          shutter=bl.shutter, sample_x=bl.sample_x, sample_out=bl.sample_out,
                          md={"sample": "script-exit"}))
    print(uid, flush=True)  # and no pipe.wait(): the script simply ends

GUARD
"""


def run_script(tmp_path, tiled_server, dask, guard: bool) -> subprocess.CompletedProcess:
    body = SCRIPT.replace("DASK", dask).replace(
        "GUARD", 'if __name__ == "__main__":\n    main()' if guard else "main()"
    )
    path = tmp_path / "scan_script.py"
    path.write_text(textwrap.dedent(body))
    return subprocess.run(
        [sys.executable, str(path), tiled_server.uri, tiled_server.api_key],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )


def test_a_script_ending_without_wait_still_gets_its_result(tmp_path, tiled_server, dask_client):
    done = run_script(tmp_path, tiled_server, repr(dask_client.scheduler.address), guard=True)
    assert done.returncode == 0, done.stderr
    uid = done.stdout.split()[-1]
    result = connect(tiled_server.uri, api_key=tiled_server.api_key)["processed"][uid]
    assert result.metadata["status"] == "complete" and result["recon"].shape == (16, 64, 64)
    assert "finishing 1 run(s) before exit" in done.stderr


def test_a_script_without_a_main_guard_is_refused_before_any_scan(tmp_path, tiled_server):
    done = run_script(tmp_path, tiled_server, "None", guard=False)
    assert done.returncode != 0
    assert 'if __name__ == "__main__":' in done.stderr and "scan_script.py, line" in done.stderr
    assert "Nanny failed to start" not in done.stderr and not done.stdout.strip()  # no scan ran
