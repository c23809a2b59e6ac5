"""A simulated scan in a real RunEngine lands as a searchable, correct volume in real Tiled."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.callbacks.best_effort import BestEffortCallback
from tiled.client import from_uri
from tiled.queries import Key

from tomolive.qc import circle_mask, psnr

PROVENANCE_KEYS = {
    "tomolive_version",
    "git_commit",
    "packages",
    "host",
    "device",
    "started",
    "finished",
    "parameters",
    "inputs",
    "seconds_per_stage",
    "center",
    "dask",
}
PSNR_FLOOR_DB = 23.0
"""Noise-free 96-px foam (163 small spheres), 120 angles: even the exact sinogram
reconstructed in memory at the true centre reaches only 25.0 dB against the voxelised
phantom (partial-volume edges of small spheres limit it); a rotation centre 2 px off or a
transposed/flipped slice falls below 20 dB (test_psnr_floor_rejects_wrong_geometry), so
23 dB separates a correct pipeline from a broken one with 1.5 dB margin each side."""


def test_scan_is_reconstructed_into_tiled(tiled_server, pipeline, beamline, run_scan):
    RE = RunEngine()
    bec = BestEffortCallback()
    bec.disable_plots()
    RE.subscribe(bec)
    uid = run_scan(beamline, sample="foam-e2e", RE=RE)
    outcome = pipeline.wait(uid, timeout=300)
    assert outcome.status == "complete", outcome.reason

    client = from_uri(tiled_server.uri, api_key=tiled_server.api_key)  # fresh client
    found = client["processed"].search(Key("sample") == "foam-e2e")
    assert list(found) == [uid]
    scan = found[uid]
    md = scan.metadata
    assert md["status"] == "complete"
    assert md["raw_uid"] == uid and md["sample"] == "foam-e2e" and md["scan_id"] >= 1
    assert set(md["provenance"]) >= PROVENANCE_KEYS
    prov = md["provenance"]
    assert prov["parameters"]["pipeline"]["rows_per_block"] > 0
    assert prov["inputs"]["n_angles"] == 120 and prov["inputs"]["frame_shape"] == [16, 96]
    assert {"center", "recon"} <= set(prov["seconds_per_stage"])
    # The simulator's axis sits on the detector middle; the automatic finder must see that.
    assert abs(prov["center"]["center"] - (96 - 1) / 2) < 0.5 and prov["center"]["method"]
    assert prov["packages"]["tiled"] and prov["packages"]["numpy"]

    recon = scan["recon"]
    assert recon.shape == (16, 96, 96) and recon.dtype == np.float32
    assert_matches_phantom(recon, beamline.phantom)


def assert_matches_phantom(recon, phantom, row: int = 8) -> None:
    """Slice ``row`` of a Tiled ``recon`` array is the phantom's: PSNR floor, physical values."""
    middle = recon[row]  # a lazy read of one slice
    truth = phantom.attenuation()[row]
    assert psnr(middle, truth, mask=circle_mask(middle.shape), fit=True) >= PSNR_FLOOR_DB
    # The values are physical (attenuation per pixel), not just correlated.
    solid = phantom.labels()[row] == 1
    assert abs(np.median(middle[solid]) - phantom.mu_solid) < 0.15 * phantom.mu_solid


def test_psnr_floor_rejects_wrong_geometry(beamline):
    from tomolive.recon import reconstruct

    angles = np.linspace(0, np.pi, 120, endpoint=False)
    sino = beamline.phantom.sinogram(angles)[:, 8:9]
    truth = beamline.phantom.attenuation()[8]
    mask = circle_mask(truth.shape)
    right = reconstruct(sino, angles)[0]
    shifted = reconstruct(sino, angles, center=(96 - 1) / 2 + 2)[0]
    assert psnr(right, truth, mask=mask, fit=True) >= PSNR_FLOOR_DB
    assert psnr(shifted, truth, mask=mask, fit=True) < 20.0
    assert psnr(right.T, truth, mask=mask, fit=True) < 20.0


def test_tomolive_ls_lists_the_scan(tiled_server, pipeline, beamline, run_scan):
    uid = run_scan(beamline, sample="foam-ls", n_angles=60)
    assert pipeline.wait(uid, timeout=300).status == "complete"
    out = subprocess.run(
        [sys.executable, "-m", "tomolive.cli", "ls", "--uri", tiled_server.uri, "--api-key", tiled_server.api_key],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith(uid))
    assert "foam-ls" in line and "complete" in line and "16x96x96" in line


def test_wait_without_a_uid_waits_for_the_scan_started_last(pipeline, beamline, run_scan):
    first = run_scan(beamline, n_angles=30)
    assert pipeline.wait(timeout=120).uid == first
    pipeline.engine.start_run(
        pipeline.techniques[0], "a-scan-under-way", {"sample": "next"}
    )  # its stop not yet handled
    with pytest.raises(TimeoutError, match=r"latest"):
        pipeline.wait(timeout=0.3)  # the scan under way's outcome, not the first scan's
    assert pipeline.wait(first, timeout=1).uid == first
