"""Raw runs in Tiled (TiledWriter) beside processed results; ``tomolive process`` offline."""

from __future__ import annotations

import re

import numpy as np
import pytest
from distributed import default_client, get_task_stream

from tomolive.cli import main as tomolive_main
from tomolive.errors import BadInputError, MissingDataError
from tomolive.io.formats import FrameStack, StoredScan
from tomolive.io.offline import open_tiled_run, process_scan
from tomolive.store import connect, find_scan, versions

from .conftest import SAME_VOLUME


def test_raw_run_is_saved_beside_the_result_and_reprocesses_from_tiled(
    tiled_server, pipeline, dask_client, beamline, scan_with_raw_run, monkeypatch, capsys
):
    client = connect(tiled_server.uri, api_key=tiled_server.api_key)
    uid = scan_with_raw_run(beamline, n_angles=90, sample="foam-raw")

    run = client["raw"][uid]
    assert run.metadata["start"]["sample"] == "foam-raw"
    assert run["primary"]["sim_det_image"].shape == (90, 16, 96)
    assert run["dark"]["sim_det_image"].shape[0] == 3
    live = client["processed"][uid]
    assert live.metadata["raw_uid"] == uid
    live_volume = live["recon"].read()

    # Its frames are fetched by this process, not as tasks of the default Dask client.
    assert default_client() is dask_client
    scan = open_tiled_run(run.uri, tiled_server.api_key)
    with get_task_stream(dask_client) as stream:
        frame, angles = scan.projections[3], scan.angles_deg
    assert stream.data == []
    np.testing.assert_array_equal(frame, run["primary"]["sim_det_image"][3])
    np.testing.assert_allclose(angles, np.linspace(0, 180, 90, endpoint=False))

    # Reprocess straight from Tiled, no RunEngine: the same frames give the same volume, as a
    # second version beside the first, which is kept byte for byte.
    monkeypatch.setenv("TOMOLIVE_OUTBOX", str(pipeline.engine.outbox_dir))
    code = tomolive_main(_process_args(run.uri, tiled_server, pipeline))
    assert code == 0, capsys.readouterr()
    processed = connect(tiled_server.uri, api_key=tiled_server.api_key)["processed"]
    again = processed[f"{uid}-v2"]
    assert again.metadata["status"] == "complete" and again.metadata["version"] == 2
    assert again.metadata["previous_version"] == uid and again.metadata["raw_uid"] == uid
    assert again.metadata["source"] == run.uri and again.metadata["format"] == "bluesky-run"
    assert again.metadata["provenance"]["changed_parameters"] == {}
    np.testing.assert_allclose(again["recon"].read(), live_volume, atol=SAME_VOLUME * np.ptp(live_volume))
    assert processed[uid].metadata["status"] == "complete" and processed[uid].metadata["version"] == 1
    np.testing.assert_array_equal(processed[uid]["recon"].read(), live_volume)

    # A third version with other parameters: provenance names what changed; the newest is found.
    assert tomolive_main([*_process_args(run.uri, tiled_server, pipeline), "--stripes", "sort"]) == 0
    third = processed[f"{uid}-v3"]
    assert third.metadata["provenance"]["changed_parameters"] == {
        "pipeline.stripe_method": {"before": "mean", "now": "sort"}
    }
    assert find_scan(client, uid).item["id"] == f"{uid}-v3" and find_scan(client, f"{uid}-v2").item["id"] == f"{uid}-v2"
    assert [key for key, _ in versions(client, uid)] == [uid, f"{uid}-v2", f"{uid}-v3"]
    np.testing.assert_array_equal(processed[uid]["recon"].read(), live_volume)


def _process_args(source: str, tiled_server, pipeline) -> list[str]:
    """``tomolive process source`` into the test server, on the pipeline's Dask cluster."""
    return [
        "process",
        source,
        "--uri",
        tiled_server.uri,
        "--api-key",
        tiled_server.api_key,
        "--dask",
        pipeline.engine.dask_client().scheduler.address,
    ]


def test_process_a_dxchange_file_offline(tiled_server, pipeline, shared_data, monkeypatch, capsys):
    monkeypatch.setenv("TOMOLIVE_OUTBOX", str(pipeline.engine.outbox_dir))
    args = _process_args(str(shared_data / "tooth.h5"), tiled_server, pipeline)
    assert tomolive_main(args) == 0
    assert tomolive_main(args) == 0  # processing the same file again adds a version, keeping the first
    out = capsys.readouterr().out
    assert out.count("complete: http") == 2
    client = connect(tiled_server.uri, api_key=tiled_server.api_key)
    found = [node for node in client["processed"].values() if node.metadata.get("source", "").endswith("tooth.h5")]
    assert sorted(node.metadata["version"] for node in found) == [1, 2]
    assert found[0].metadata["raw_uid"] == found[1].metadata["raw_uid"]
    np.testing.assert_array_equal(found[0]["recon"].read(), found[1]["recon"].read())
    md = found[0].metadata
    assert md["status"] == "complete" and md["format"] == "dxchange"
    assert abs(md["provenance"]["center"]["center"] - 295.5) <= 1.0
    assert found[0]["recon"].shape == (2, 640, 640)


def test_process_names_a_bad_source(tiled_server, tmp_path, capsys):
    missing = tmp_path / "nope.h5"
    assert tomolive_main(["process", str(missing), "--uri", tiled_server.uri, "--api-key", tiled_server.api_key]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(missing) in err and "does not exist" in err
    with pytest.raises(MissingDataError, match=re.escape(str(missing))):  # --debug: the exception itself
        tomolive_main(
            ["--debug", "process", str(missing), "--uri", tiled_server.uri, "--api-key", tiled_server.api_key]
        )


def test_process_refuses_a_scan_whose_angles_do_not_match_its_projections(tmp_path):
    frames = np.ones((5, 2, 3), np.uint16)
    stack = FrameStack(frames, np.arange(5))
    scan = StoredScan(
        stack, stack, stack, angles_deg=np.zeros(4), metadata={}, source=tmp_path / "x.h5", format="dxchange"
    )
    with pytest.raises(BadInputError, match="4 angles for 5 projections"):
        process_scan(scan, "uid", engine=None, technique=None)  # refused before a run (or an engine) is needed
