"""Out of process: RunEngine -> 0MQ Publisher -> bluesky-0MQ-proxy -> `tomolive worker` -> Tiled."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from bluesky import RunEngine

from tests.conftest import free_port
from tomolive.plans import tomo_scan
from tomolive.qc import circle_mask, psnr
from tomolive.store import connect
from tomolive.wire import SECRET_ENV, SignedPublisher, pack, unpack

BIN = Path(sys.executable).parent
SECRET = secrets.token_hex(32)


def test_wire_round_trips_documents_with_arrays():
    doc = {
        "uid": "x",
        "seq_num": [1, 2],
        "nested": {"a": np.float32(1.5), "b": (1, 2)},
        "image": np.arange(12, dtype=np.uint16).reshape(3, 4),
        "f": np.linspace(0, 1, 3),
    }
    back = unpack(pack(doc))
    np.testing.assert_array_equal(back["image"], doc["image"])
    assert back["image"].dtype == np.uint16 and back["nested"] == {"a": 1.5, "b": [1, 2]}
    np.testing.assert_array_equal(back["f"], doc["f"])


def test_wire_refuses_what_it_cannot_send_as_data():
    with pytest.raises(TypeError, match="cannot send a object"):
        pack({"bad": object()})


def _wait_for_line(process: subprocess.Popen, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if text in line:
            return
        if process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode} before printing {text!r}")
    raise AssertionError(f"no {text!r} within {timeout} s")


def test_worker_process_reconstructs_scans_published_through_the_proxy(tiled_server, dask_client, beamline, tmp_path):
    port_in, port_out = free_port(), free_port()
    proxy = subprocess.Popen(
        [
            str(BIN / "bluesky-0MQ-proxy"),
            "--in-address",
            f"127.0.0.1:{port_in}",
            "--out-address",
            f"127.0.0.1:{port_out}",
        ]
    )
    env_args = ["--uri", tiled_server.uri, "--api-key", tiled_server.api_key, "--dask", dask_client.scheduler.address]
    worker = subprocess.Popen(
        [str(BIN / "tomolive"), "worker", "--zmq", f"127.0.0.1:{port_out}", *env_args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={
            "TMPDIR": str(tmp_path),
            "TOMOLIVE_OUTBOX": str(tmp_path / "outbox"),
            "PATH": str(BIN),
            SECRET_ENV: SECRET,
        },
    )
    publisher = SignedPublisher(f"127.0.0.1:{port_in}", secret=SECRET.encode())
    try:
        _wait_for_line(worker, "tomolive worker: connected to")
        time.sleep(3.0)  # 0MQ subscriptions take a moment to reach the proxy (slow joiner)
        RE = RunEngine()
        RE.subscribe(publisher)
        angles = np.linspace(0, 180, 90, endpoint=False)
        (uid,) = RE(
            tomo_scan(
                beamline.detector,
                beamline.rotation,
                angles,
                2,
                2,
                shutter=beamline.shutter,
                sample_x=beamline.sample_x,
                sample_out=beamline.sample_out,
                md={"sample": "over-zmq"},
            )
        )
        client = connect(tiled_server.uri, api_key=tiled_server.api_key)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if uid in client["processed"] and client["processed"][uid].metadata["status"] != "running":
                break
            time.sleep(0.5)
        scan = client["processed"][uid]
        assert scan.metadata["status"] == "complete", scan.metadata.get("reason")
        truth = beamline.phantom.attenuation()[8]
        assert psnr(scan["recon"][8], truth, mask=circle_mask(truth.shape), fit=True) >= 23.0
    finally:
        # linger 0: a PUB socket with messages queued for a stopped proxy otherwise blocks
        # zmq_ctx_term forever when the garbage collector finalises it (pytest then never exits).
        publisher._context.destroy(linger=0)
        worker.terminate()
        proxy.terminate()
        worker_code = worker.wait(timeout=60)
        proxy.wait(timeout=10)
    assert worker_code == 0  # SIGTERM stops it cleanly, after finishing its queue
