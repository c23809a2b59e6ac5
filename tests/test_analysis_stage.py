"""Segmentation and QC as pipeline stages: `segmented` in Tiled, phase numbers and QC in metadata."""

from __future__ import annotations

import numpy as np
import pytest
from bluesky import RunEngine
from tiled.queries import Key

from tomolive.callbacks import TomoPipeline
from tomolive.plans import tomo_scan
from tomolive.qc import qc_metrics
from tomolive.segment import dice_scores, phase_statistics
from tomolive.sim.devices import make_sim_beamline
from tomolive.sim.phantoms import make_foam
from tomolive.store import connect
from tomolive.techniques.tomo import PipelineParams


@pytest.mark.parametrize("method", ["auto", "otsu"])
def test_scan_is_segmented_with_phase_numbers_and_qc(method, tiled_server, dask_client, tmp_path):
    params = PipelineParams(segment=method, qc_thresholds={"max_ring_severity": 1e-9})
    beamline = make_sim_beamline(make_foam((16, 128, 128), seed=21), photons=5000, seed=4)
    sample = f"foam-seg-{method}"
    with TomoPipeline.from_uri(
        tiled_server.uri,
        api_key=tiled_server.api_key,
        dask=dask_client,
        params=params,
        scratch_dir=tmp_path,
        outbox_dir=tmp_path / "outbox",
        progress=False,
    ) as pipe:
        RE = RunEngine()
        RE.subscribe(pipe)
        (uid,) = RE(
            tomo_scan(
                beamline.detector,
                beamline.rotation,
                np.linspace(0, 180, 180, endpoint=False),
                3,
                3,
                shutter=beamline.shutter,
                sample_x=beamline.sample_x,
                sample_out=beamline.sample_out,
                md={"sample": sample},
            )
        )
        outcome = pipe.wait(uid, timeout=300)
    assert outcome.status == "complete", outcome.reason
    client = connect(tiled_server.uri, api_key=tiled_server.api_key)
    scan = client["processed"][uid]
    labels = scan["segmented"].read()
    assert labels.dtype == np.uint8 and labels.shape == (16, 128, 128)
    truth = beamline.phantom.labels()
    dice = dice_scores(labels, truth, 3)
    assert min(dice) > 0.85, dice
    md = scan.metadata
    assert md["provenance"]["segment"]["method"] == ("unet" if method == "auto" else "otsu")
    assert abs(md["porosity"] - phase_statistics(truth, 3)["porosity"]) < 0.05
    assert md["phases"]["pore_count"] > 0
    # QC measured the stored volume with its segmentation: the numbers recomputed here agree
    qc = md["qc"]
    stored = qc_metrics(scan["recon"].read(), labels, n_phases=3, center_confidence=qc["center_confidence"])
    assert {k: qc[k] for k in stored} == stored and qc["snr"] > 0
    assert qc["center_confidence"] == pytest.approx(md["provenance"]["center"]["confidence"], abs=1e-5)
    assert any("ring" in alert.lower() for alert in md["qc"]["alerts"])  # threshold set so it fires
    assert "segment" in md["stages"] and "qc" in md["stages"]
    assert uid in client["processed"].search(Key("sample") == sample).search(Key("porosity") > 0)
