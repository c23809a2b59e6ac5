"""An attacker on the 0MQ proxy: real proxy, real `tomolive worker`, real Tiled server, real RunEngine.

The attacker can reach both proxy ports: it listens to the output (capturing signed messages)
and sends into the input. Nothing it sends changes a result or stops the worker, and a signed
scan afterwards is processed to ``complete``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq
from bluesky import RunEngine

from tests.conftest import free_port, sim_tomo_scan
from tomolive.store import connect
from tomolive.wire import SECRET_ENV, SignedPublisher, Signer, pack

BIN = Path(sys.executable).parent
SECRET = secrets.token_hex(32)
BIG_MB = 300


class Output:
    """The lines a process prints, collected by a thread (so its pipe never fills)."""

    def __init__(self, process: subprocess.Popen):
        self.process, self.lines, self._new = process, [], threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            with self._new:
                self.lines.append(line.rstrip())
                self._new.notify_all()

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    def wait_for(self, text: str, count: int = 1, timeout: float = 60.0) -> bool:
        with self._new:
            return self._new.wait_for(
                lambda: self.count(text) >= count or self.process.poll() is not None, timeout
            ) and (self.count(text) >= count)


def _rss_mb(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {key: int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) / 1024 for key in ("VmRSS", "VmHWM")}


@pytest.fixture
def proxy() -> Iterator[tuple[int, int]]:
    port_in, port_out = free_port(), free_port()
    process = subprocess.Popen(
        [
            str(BIN / "bluesky-0MQ-proxy"),
            "--in-address",
            f"127.0.0.1:{port_in}",
            "--out-address",
            f"127.0.0.1:{port_out}",
        ]
    )
    yield port_in, port_out
    process.terminate()
    process.wait(timeout=10)


def _wait_done(client, uid: str) -> dict:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if uid in client["processed"] and client["processed"][uid].metadata["status"] != "running":
            break
        time.sleep(0.5)
    return dict(client["processed"][uid].metadata)


def _arrays_digest(client, uid: str) -> str:
    """SHA-256 over the result's arrays (recon and whichever others it holds)."""
    scan, digest = client["processed"][uid], hashlib.sha256()
    for key in [k for k in ("preview", "recon", "denoised", "segmented") if k in scan] or ["recon"]:
        digest.update(key.encode() + scan[key].read().tobytes())
    return digest.hexdigest()


def _reach_worker(attacker: zmq.Socket, out: Output) -> None:
    """Send unsigned probes until the worker drops one: its subscription reached the proxy."""
    for _ in range(20):
        seen = out.count("dropped a message")
        attacker.send(b" start probe")
        if out.wait_for("dropped a message", seen + 1, timeout=3.0):
            return
    raise AssertionError("the worker never received a probe")


def test_hostile_publisher_changes_nothing_and_the_worker_stays_alive(
    tiled_server, dask_client, beamline, tmp_path, proxy
):
    port_in, port_out = proxy
    client = connect(tiled_server.uri, api_key=tiled_server.api_key)
    server_args = [
        "--uri",
        tiled_server.uri,
        "--api-key",
        tiled_server.api_key,
        "--dask",
        dask_client.scheduler.address,
    ]
    env = {"TMPDIR": str(tmp_path), "TOMOLIVE_OUTBOX": str(tmp_path / "outbox"), "PATH": str(BIN), SECRET_ENV: SECRET}
    worker = subprocess.Popen(
        [str(BIN / "tomolive"), "worker", "--zmq", f"127.0.0.1:{port_out}", *server_args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    out = Output(worker)
    context = zmq.Context()
    attacker = context.socket(zmq.PUB)
    attacker.connect(f"tcp://127.0.0.1:{port_in}")
    eavesdropper = context.socket(zmq.SUB)
    eavesdropper.setsockopt(zmq.SUBSCRIBE, b"")
    eavesdropper.connect(f"tcp://127.0.0.1:{port_out}")
    publisher = SignedPublisher(f"127.0.0.1:{port_in}", secret=SECRET.encode())
    RE = RunEngine()
    RE.subscribe(publisher)
    try:
        assert out.wait_for("tomolive worker: connected to"), out.lines
        _reach_worker(attacker, out)

        # a genuine scan; the attacker records every signed message on the proxy's output
        (uid_a,) = RE(sim_tomo_scan(beamline, n_angles=60, md={"sample": "genuine-a"}))
        metadata_a = _wait_done(client, uid_a)
        assert metadata_a["status"] == "complete" and metadata_a["sample"] == "genuine-a"
        digest_a = _arrays_digest(client, uid_a)
        captured = []
        while eavesdropper.poll(1000):
            if (message := eavesdropper.recv()).split(b" ", 2)[2].startswith(b"TLW1"):  # signed, not the probes
                captured.append(message)
        eavesdropper.close(linger=0)
        names = [m.split(b" ", 2)[1] for m in captured]
        start_a, stop_a = captured[names.index(b"start")], captured[names.index(b"stop")]
        event_a = captured[names.index(b"event")]

        hostile = _hostile_messages(uid_a, start_a, stop_a, event_a)
        dropped_before = out.count("dropped a message")
        for message, _ in hostile:
            attacker.send(message)
        assert out.wait_for("dropped a message", dropped_before + len(hostile)), out.lines[-20:]
        reasons = [line.split("dropped a message: ", 1)[1] for line in out.lines if "dropped a message: " in line]
        for (_, why), reason in zip(hostile, reasons[-len(hostile) :], strict=True):
            assert why in reason, (why, reason)

        # 300 MB: libzmq refuses it unread and closes the connection; the worker reconnects
        before = _rss_mb(worker.pid)
        connected = out.count("tomolive worker: connected to")
        attacker.send(zmq.Frame(b" event " + bytes(BIG_MB * 2**20)), copy=False)
        assert out.wait_for("a message over the limit, or the proxy stopped", timeout=120), out.lines[-20:]
        assert out.wait_for("tomolive worker: connected to", connected + 1), out.lines[-20:]
        after = _rss_mb(worker.pid)
        print(f"worker memory (MB) before the {BIG_MB} MB message: {before}; after: {after}")
        assert after["VmHWM"] - before["VmHWM"] < 64  # never buffered: under the 64 MiB limit
        _reach_worker(attacker, out)

        # the worker is alive, and a genuine scan is still processed
        (uid_b,) = RE(sim_tomo_scan(beamline, n_angles=60, md={"sample": "genuine-b"}))
        assert _wait_done(client, uid_b)["status"] == "complete"
        assert worker.poll() is None
        assert dict(client["processed"][uid_a].metadata) == metadata_a  # status, sample, provenance
        assert _arrays_digest(client, uid_a) == digest_a
    finally:
        publisher._context.destroy(linger=0)
        context.destroy(linger=0)
        worker.terminate()
        code = worker.wait(timeout=60)
    assert code == 0, out.lines[-20:]
    assert out.count("Traceback") == 0, out.lines
    (stopping,) = [line for line in out.lines if "tomolive worker: stopping" in line]
    assert int(re.search(r"(\d+) messages dropped", stopping).group(1)) == out.count("dropped a message: ")


def _hostile_messages(uid: str, start: bytes, stop: bytes, event: bytes) -> list[tuple[bytes, str]]:
    """(message, the reason the worker must give) for each kind of attack."""
    spoof_start = {"uid": uid, "time": time.time(), "sample": "SPOOFED", "scan_id": 1}
    spoof_stop = {"uid": "x" * 32, "run_start": uid, "time": time.time(), "exit_status": "fail", "num_events": {}}
    stale = Signer(SECRET.encode(), clock=lambda: time.time_ns() - 10**12)
    wrong = Signer(secrets.token_hex(32).encode())
    right = Signer(SECRET.encode())
    prefix, name, body = event.split(b" ", 2)
    return [
        (b" start " + pack(spoof_start), "unsigned"),
        (b" stop " + pack(spoof_stop), "unsigned"),
        (b" event " + pack({"descriptor": "nope", "seq_num": 1, "data": {}}), "unsigned"),
        (b" start " + wrong.sign(b"", "start", pack(spoof_start)), "unknown key"),
        (b" stop " + stale.sign(b"", "stop", pack(spoof_stop)), "outside the 300 s window"),
        (start, "replayed"),
        (stop, "replayed"),
        (b" ".join([prefix, b"stop", body]), "bad signature"),  # a signed event relabelled a stop
        (b" ".join([prefix, name, body[:-1] + bytes([body[-1] ^ 1])]), "bad signature"),  # one bit flipped
        (b" bogusname " + pack({"uid": uid}), "unknown document name"),
        (b" bogusname " + right.sign(b"", "bogusname", pack({"uid": uid})), "unknown document name"),
        (b" \xff\xfe " + pack({}), "unknown document name"),
        (b"\x00garbage-without-spaces", "not 'prefix name document'"),
        (b" start " + right.sign(b"", "start", b"\xc1\xc1\xc1"), "not msgpack"),
        (b" start " + right.sign(b"", "start", pack([uid, "SPOOFED"])), "a list, not a mapping"),
        (b" start " + right.sign(b"", "start", pack(np.zeros(3))), "not a mapping"),
    ]
