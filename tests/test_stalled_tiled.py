"""A stalled or dead Tiled server never stalls the RunEngine and never loses a result."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import zarr
from bluesky import RunEngine

from tests.conftest import free_port
from tomolive.callbacks import TomoPipeline
from tomolive.cli import main as tomolive_main
from tomolive.config import Settings
from tomolive.plans import tomo_scan
from tomolive.server import running_server
from tomolive.store import connect


def _server_process(settings: Settings) -> psutil.Process:
    for child in psutil.Process().children(recursive=True):
        if "tiled" in child.cmdline() and str(settings.port) in child.cmdline():
            return child
    raise LookupError(f"no tiled server process on port {settings.port}")


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Settings]:
    """A server of this test's own, which it may stop or kill."""
    with running_server(Settings(data_dir=tmp_path / "tiled", port=free_port())) as settings:
        yield settings


def _scan(beamline, pipe: TomoPipeline, n_angles: int = 60) -> str:
    RE = RunEngine()
    RE.subscribe(pipe)
    (uid,) = RE(
        tomo_scan(
            beamline.detector, beamline.rotation, np.linspace(0, 180, n_angles, endpoint=False), 2, 2,
            shutter=beamline.shutter, sample_x=beamline.sample_x, sample_out=beamline.sample_out,
        )  # fmt: skip
    )
    return uid


def test_a_stalled_server_does_not_stall_the_scan_and_the_result_lands_when_it_returns(
    own_server, dask_client, beamline, tmp_path
):
    server = _server_process(own_server)
    with TomoPipeline.from_uri(
        own_server.uri, api_key=own_server.api_key, dask=dask_client, timeout_s=2.0,
        scratch_dir=tmp_path, outbox_dir=tmp_path / "outbox", patience_s=300, progress=False,
    ) as pipe:  # fmt: skip
        os.kill(server.pid, signal.SIGSTOP)  # the server accepts connections but never answers
        try:
            uid = _scan(beamline, pipe)  # returns: nothing on the RunEngine thread waits for Tiled
            assert server.status() == psutil.STATUS_STOPPED
        finally:
            os.kill(server.pid, signal.SIGCONT)
        result = pipe.wait(uid, timeout=300)
    assert result.status == "complete" and result.outbox is None
    node = connect(own_server.uri, api_key=own_server.api_key)["processed"][uid]
    assert node.metadata["status"] == "complete"
    assert node["recon"].shape == (16, 96, 96) and np.isfinite(node["recon"][8]).all()
    assert node["preview"].metadata["n_angles"] == 60


def test_a_dead_server_sends_the_result_to_the_outbox_and_upload_spool_delivers_it(
    tmp_path, dask_client, beamline, caplog
):
    data_dir, port = tmp_path / "tiled", free_port()
    outbox = tmp_path / "outbox"
    with running_server(Settings(data_dir=data_dir, port=port)) as settings:
        pipe = TomoPipeline.from_uri(
            settings.uri, api_key=settings.api_key, dask=dask_client, timeout_s=2.0,
            scratch_dir=tmp_path, outbox_dir=outbox, patience_s=3.0, progress=False,
        )  # fmt: skip
        _server_process(settings).kill()
    with pipe:
        uid = _scan(beamline, pipe)
        result = pipe.wait(uid, timeout=300)
    assert result.status == "complete" and result.uri is None
    assert result.outbox == str(outbox / uid)
    assert f"tomolive upload-spool {outbox / uid}" in caplog.text
    local = zarr.open_array(str(outbox / uid / "recon.zarr"), mode="r")[:]
    assert local.shape == (16, 96, 96) and np.ptp(local[8]) > 0

    with running_server(Settings(data_dir=data_dir, port=port)) as settings:  # the server is back
        code = tomolive_main(["upload-spool", str(outbox / uid), "--uri", settings.uri, "--api-key", settings.api_key])
        assert code == 0
        node = connect(settings.uri, api_key=settings.api_key)["processed"][uid]
        assert node.metadata["status"] == "complete"
        assert node.metadata["uploaded"]["from"] == str(outbox / uid)
        assert node.metadata["provenance"]["inputs"]["n_angles"] == 60
        np.testing.assert_array_equal(node["recon"].read(), local)
    assert not (outbox / uid).exists()
