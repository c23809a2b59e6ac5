"""A stalled or dead Tiled server never stalls the RunEngine and never loses a result."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import tiled.client.utils
import zarr
from bluesky import RunEngine

from tests.conftest import SAME_VOLUME, free_port, sim_tomo_scan
from tests.test_end_to_end import assert_matches_phantom
from tomolive.callbacks import TomoPipeline
from tomolive.callbacks.raw_backup import pending_raw, raw_writer, read_backup
from tomolive.cli import main as tomolive_main
from tomolive.config import Settings
from tomolive.server import SERVER_MODULE, running_server
from tomolive.store import OutboxResult, connect, find_scan, pending, processed_for


def _server_process(settings: Settings) -> psutil.Process:
    for child in psutil.Process().children(recursive=True):
        if SERVER_MODULE in child.cmdline() and str(settings.port) in child.cmdline():
            return child
    raise LookupError(f"no tiled server process on port {settings.port}")


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Settings]:
    """A server of this test's own, which it may stop or kill."""
    with running_server(Settings(data_dir=tmp_path / "tiled", port=free_port())) as settings:
        yield settings


@pytest.fixture
def short_tiled_retries(monkeypatch) -> None:
    """Tiled's client gives up on a dead server after 5 s, as ``TILED_RETRY_TIMEOUT=5`` makes it
    (default 45 s per request; docs/faults.md): the fall-backs under test start sooner."""
    monkeypatch.setattr(tiled.client.utils, "TILED_RETRY_TIMEOUT", 5.0)


def _pipeline(
    settings: Settings, dask_client, scratch_dir: Path, outbox: Path, patience_s: float = 3.0
) -> TomoPipeline:
    """A pipeline that gives up on Tiled after ``patience_s`` and spools to ``outbox``."""
    return TomoPipeline.from_uri(
        settings.uri,
        api_key=settings.api_key,
        dask=dask_client,
        timeout_s=2.0,
        scratch_dir=scratch_dir,
        outbox_dir=outbox,
        patience_s=patience_s,
        progress=False,
    )


def _scan(beamline, pipe: TomoPipeline, n_angles: int = 60, *also: Callable[[str, dict], None]) -> str:
    """Run ``tomo_scan`` with ``pipe`` and then each callback in ``also`` subscribed."""
    RE = RunEngine()
    for callback in (pipe, *also):
        RE.subscribe(callback)
    (uid,) = RE(sim_tomo_scan(beamline, n_angles=n_angles, n_darks=2, n_flats=2))
    return uid


def test_a_stalled_server_does_not_stall_the_scan_and_the_result_lands_when_it_returns(
    own_server, dask_client, beamline, tmp_path
):
    server = _server_process(own_server)
    with _pipeline(own_server, dask_client, tmp_path, tmp_path / "outbox", patience_s=300) as pipe:
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
    assert node["recon"].shape == (16, 96, 96)
    assert_matches_phantom(node["recon"], beamline.phantom)  # the blocks written during the stall landed
    preview = node["preview"].metadata  # frames queued behind the stalled publish at the stop were dropped
    assert preview["n_angles"] >= 1 and preview["n_angles"] + preview["frames_dropped"] == 60


def test_a_dead_server_sends_the_result_to_the_outbox_and_upload_outbox_delivers_it(
    tmp_path, dask_client, beamline, caplog, short_tiled_retries
):
    data_dir, port = tmp_path / "tiled", free_port()
    outbox = tmp_path / "outbox"
    with running_server(Settings(data_dir=data_dir, port=port)) as settings:
        pipe = _pipeline(settings, dask_client, tmp_path, outbox)
        _server_process(settings).kill()
    with pipe:
        uid = _scan(beamline, pipe)
        result = pipe.wait(uid, timeout=300)
    assert result.status == "complete" and result.uri is None
    assert result.outbox == str(outbox / uid)
    assert f"tomolive upload-outbox {outbox / uid}" in caplog.text
    local = zarr.open_array(str(outbox / uid / "recon.zarr"), mode="r")[:]
    assert local.shape == (16, 96, 96)
    assert_matches_phantom(local, beamline.phantom)

    with running_server(Settings(data_dir=data_dir, port=port)) as settings:  # the server is back
        code = tomolive_main(["upload-outbox", str(outbox / uid), "--uri", settings.uri, "--api-key", settings.api_key])
        assert code == 0
        node = connect(settings.uri, api_key=settings.api_key)["processed"][uid]
        assert node.metadata["status"] == "complete"
        assert node.metadata["uploaded"]["from"] == str(outbox / uid)
        assert node.metadata["provenance"]["inputs"]["n_angles"] == 60
        np.testing.assert_array_equal(node["recon"].read(), local)
    assert not (outbox / uid).exists()


def _kill_after(n_events: int, server: psutil.Process, client) -> Callable[[str, dict], None]:
    """A callback that SIGKILLs ``server`` on the ``n_events``-th primary event, once the scan's
    ``processed`` and ``raw`` containers exist there (so the server dies mid-write, not before)."""
    primary: set[str] = set()
    seen = {"events": 0, "uid": None}

    def kill(name: str, doc: dict) -> None:
        if name == "start":
            seen["uid"] = doc["uid"]
        elif name == "descriptor" and doc.get("name") == "primary":
            primary.add(doc["uid"])
        elif name == "event" and doc["descriptor"] in primary:
            seen["events"] += 1
            if seen["events"] == n_events:
                deadline = time.monotonic() + 60
                while not (seen["uid"] in client["processed"] and seen["uid"] in client["raw"]):
                    assert time.monotonic() < deadline, "the scan's containers never appeared in Tiled"
                    time.sleep(0.1)
                server.kill()
                server.wait(timeout=30)

    return kill


def test_tiled_killed_mid_scan_spools_result_and_raw_run_and_upload_outbox_delivers_both(
    tmp_path, dask_client, beamline, monkeypatch, capsys, short_tiled_retries
):
    data_dir, port, outbox = tmp_path / "tiled", free_port(), tmp_path / "outbox"
    monkeypatch.setenv("TOMOLIVE_OUTBOX", str(outbox))
    with running_server(Settings(data_dir=data_dir, port=port)) as settings:
        client = connect(settings.uri, api_key=settings.api_key, timeout_s=2.0)
        with _pipeline(settings, dask_client, tmp_path, outbox) as pipe:
            killer = _kill_after(20, _server_process(settings), client)
            uid = _scan(beamline, pipe, 60, raw_writer(client, outbox, batch_size=5), killer)  # the plan ran to its end
            result = pipe.wait(uid, timeout=300)

    # Spooled: the processed result, whole, and every document of the raw run.
    assert result.status == "complete" and result.uri is None and result.outbox == str(outbox / uid)
    entry = OutboxResult(outbox / uid)
    assert entry.metadata()["status"] == "complete" and entry.metadata()["provenance"]["inputs"]["n_angles"] == 60
    local = entry.volumes()["recon"][:]
    assert local.shape == (16, 96, 96) and np.isfinite(local).all() and np.ptp(local[8]) > 0
    (backup,) = pending_raw(outbox)
    docs = read_backup(backup)
    assert docs[0][1]["uid"] == uid and docs[-1][1]["exit_status"] == "success"
    assert docs[-1][1]["num_events"]["primary"] == 60

    with running_server(Settings(data_dir=data_dir, port=port)) as settings:  # the server is back
        client = connect(settings.uri, api_key=settings.api_key)
        # Nothing marked complete that is not: what the dead server left says so.
        assert client["processed"][uid].metadata["status"] == "running"
        assert "stop" not in client["raw"][uid].metadata
        kept = tmp_path / backup.name
        kept.write_bytes(backup.read_bytes())

        # The writer key may not replace the partial raw copy (a delete): the operator's admin key may.
        assert tomolive_main(["upload-outbox", "--uri", settings.uri, "--api-key", settings.api_key]) == 1
        assert "which the writer key may not" in capsys.readouterr().err and pending_raw(outbox) != []
        admin = settings.resolved_admin_key()
        assert tomolive_main(["upload-outbox", "--uri", settings.uri, "--api-key", admin]) == 0
        assert pending(outbox) == [] and pending_raw(outbox) == []
        client = connect(settings.uri, api_key=settings.api_key)
        node = find_scan(client, uid)  # a new version; the one the dead server left says it was superseded
        assert node.metadata["status"] == "complete" and node.metadata["uploaded"]["from"] == str(outbox / uid)
        assert sorted(processed_for(client, uid)) == sorted([uid, f"{uid}-v2"]) and node.item["id"] == f"{uid}-v2"
        stale = client["processed"][uid].metadata
        assert stale["status"] == "failed" and f"superseded by processed/{uid}-v2" in stale["reason"]
        np.testing.assert_array_equal(node["recon"].read(), local)
        run = client["raw"][uid]
        assert run.metadata["stop"]["exit_status"] == "success"
        frames = run["primary"]["sim_det_image"]
        assert frames.shape == (60, 16, 96) and frames.read().std() > 0

        # Re-running is safe: a backup of a run already in Tiled is only removed.
        backup.write_bytes(kept.read_bytes())
        assert tomolive_main(["upload-outbox", str(backup), "--uri", settings.uri, "--api-key", settings.api_key]) == 0
        assert not backup.exists() and client["raw"][uid]["primary"]["sim_det_image"].shape[0] == 60
        assert tomolive_main(["upload-outbox", "--uri", settings.uri, "--api-key", settings.api_key]) == 0
        assert "nothing to upload" in capsys.readouterr().out

        # Nothing lost: the uploaded raw run reconstructs to the volume spooled during the scan.
        code = tomolive_main(
            [
                "process",
                run.uri,
                "--uri",
                settings.uri,
                "--api-key",
                settings.api_key,
                "--dask",
                dask_client.scheduler.address,
            ]
        )
        assert code == 0
        again = find_scan(connect(settings.uri, api_key=settings.api_key), uid)["recon"].read()
        np.testing.assert_allclose(again, local, atol=SAME_VOLUME * np.ptp(local))
