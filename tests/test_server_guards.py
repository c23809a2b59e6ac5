"""The server process's guards, tried on real servers: file modes at every start, request bodies
capped before they are read, key material kept out of the log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from tiled.client import from_uri

from tomolive.config import Settings
from tomolive.server import SERVER_MODULE, running_server
from tomolive.server.keys import ADMIN_SCOPES, WRITER_SCOPES, create_key, issue_key, key_headers, key_scopes
from tomolive.server.limits import ANONYMOUS_LIMIT
from tomolive.server.modes import mode_of
from tomolive.server.redact import REDACTED, redact

from .conftest import free_port

MiB = 1 << 20
GiB = 1 << 30
SMALL_KEYED_LIMIT = MiB


def _server_process(settings: Settings) -> psutil.Process:
    for child in psutil.Process().children(recursive=True):
        if SERVER_MODULE in child.cmdline() and str(settings.port) in child.cmdline():
            return child
    raise LookupError(f"no tiled server process on port {settings.port}")


def _peak_rss(process: psutil.Process) -> int:
    """The process's peak resident memory so far (Linux ``VmHWM``), in bytes."""
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise LookupError("no VmHWM in /proc/PID/status")


def _zeros(total: int, sent: list[int]) -> Iterator[bytes]:
    """``total`` zero bytes in 1 MiB pieces, counting in ``sent`` what the client took."""
    chunk = bytes(MiB)
    for _ in range(total // MiB):
        sent.append(len(chunk))
        yield chunk


def _post(url: str, body: Iterator[bytes], headers: dict[str, str]) -> httpx.Response:
    with httpx.Client(timeout=120) as http:
        return http.post(url, content=body, headers=headers)


def test_an_unauthenticated_gigabyte_is_refused_without_being_read(tiled_server):
    server = _server_process(tiled_server)
    peak_before = _peak_rss(server)
    url = f"{tiled_server.uri}/api/v1/metadata/"
    reader = create_key(tiled_server.uri, tiled_server.admin_key)
    declared = {"Content-Length": str(GiB), "Content-Type": "application/json"}
    attempts = {
        "no key, Content-Length": declared,
        "no key, chunked": {"Content-Type": "application/json"},
        "unknown key": {**declared, **key_headers("ab" * 36)},
        "unknown key in the query, chunked": {"Content-Type": "application/json"},
        "read-only key": {**declared, **key_headers(reader)},
    }
    for what, headers in attempts.items():
        sent: list[int] = []
        target = f"{url}?api_key={'cd' * 36}" if "query" in what else url
        response = _post(target, _zeros(GiB, sent), headers)
        assert response.status_code == 401, (what, response.status_code, response.text)
        assert sum(sent) < 64 * MiB, (what, sum(sent))  # the client stopped early: nobody read it
    grown = _peak_rss(server) - peak_before
    assert grown < 100 * MiB, f"server peak memory grew by {grown / MiB:.0f} MiB"
    as_writer = key_headers(tiled_server.api_key)
    assert httpx.get(url, headers=as_writer).status_code == 200  # still serving
    small = httpx.post(url, content=b"x" * (ANONYMOUS_LIMIT + 1), headers={"Content-Type": "application/json"})
    assert small.status_code == 401


def test_no_key_reaches_the_server_log(tiled_server):
    reader = create_key(tiled_server.uri, tiled_server.admin_key, note="for the web link")
    marker = f"log-marker-{uuid.uuid4().hex}"
    with httpx.Client() as http:
        http.get(f"{tiled_server.uri}/custom/tomolive/?api_key={reader}")  # the web view's link
        http.get(f"{tiled_server.uri}/api/v1/metadata/?api_key={reader}&page[limit]=1")
        http.get(f"{tiled_server.uri}/api/v1/metadata/", headers=key_headers(tiled_server.api_key))
        http.get(f"{tiled_server.uri}/api/v1/metadata/?api_key={tiled_server.api_key[:-1]}x")  # 401
        http.get(f"{tiled_server.uri}/api/v1/metadata/{marker}?api_key={tiled_server.api_key}")
    log_path = tiled_server.data_dir / "tiled-server.log"
    deadline = time.monotonic() + 30
    while marker not in log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = log_path.read_text()
    assert marker in log and f"api_key={REDACTED}" in log
    for key in (reader, tiled_server.api_key, tiled_server.admin_key):
        assert key[:16] not in log


def test_redact_covers_query_strings_headers_and_bare_keys():
    key = "0123456789abcdef" * 4 + "01234567"
    assert redact(f"GET /x/?a=1&api_key={key}&b=2") == f"GET /x/?a=1&api_key={REDACTED}&b=2"
    assert redact(f"GET /x/?api_key%3D{key}") == f"GET /x/?api_key%3D{REDACTED}"
    assert redact(f"Authorization: Apikey {key}") == f"Authorization: Apikey {REDACTED}"
    assert redact("Authorization: Bearer eyJ.a.b") == f"Authorization: Bearer {REDACTED}"
    assert redact(f"key {key} leaked") == f"key {REDACTED} leaked"
    assert redact("GET /api/v1/metadata/ 200") == "GET /api/v1/metadata/ 200"


def _collect(process: subprocess.Popen, lines: list[str], banner: threading.Event) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if line.lstrip().startswith("connect:"):
            banner.set()


def _make_careless(data: Path) -> None:
    """Everything readable by every local user, as an older tomolive (or a cp -r) left it."""
    os.chmod(data, 0o755)
    for path in data.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)


def test_every_start_makes_the_data_dir_private_and_reports_it_truly(tmp_path):
    data, port = tmp_path / "data", free_port()
    with running_server(Settings(data_dir=data, port=port)) as first:
        from_uri(first.uri, api_key=first.api_key).write_array(np.arange(4.0), key="ramp")
        old = issue_key(first.uri, key_headers(first.admin_key or ""), ADMIN_SCOPES, "writer of an older tomolive")
        first.save_api_key(old)  # a key that may delete and administer, left in the key file
    _make_careless(data)
    assert {mode_of(data / name) for name in ("catalog.db", "auth.db", "api_key", "admin_key")} == {0o644}

    env = {**os.environ, "TOMOLIVE_MAX_BODY_BYTES": str(SMALL_KEYED_LIMIT)}
    command = [sys.executable, "-m", "tomolive.cli", "serve", "--data-dir", str(data), "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    banner = threading.Event()
    reader = threading.Thread(target=_collect, args=(process, lines, banner), daemon=True)
    reader.start()
    try:
        assert banner.wait(180), "".join(lines)
        said = "".join(lines)
        assert f"{data / 'api_key'} (mode 600)" in said and f"{data / 'admin_key'} (mode 600)" in said
        assert f"data in {data} (mode 700)" in said
        assert mode_of(data) == 0o700 and mode_of(data / "zarr") == 0o700
        top = {path.name: mode_of(path) for path in data.iterdir()}
        assert {"catalog.db", "auth.db", "api_key", "admin_key", "zarr"} <= set(top)
        assert all(mode == (0o700 if (data / name).is_dir() else 0o600) for name, mode in top.items()), top

        uri = f"http://127.0.0.1:{port}"
        writer = (data / "api_key").read_text().strip()
        assert key_scopes(uri, old) is None  # the all-powerful key was revoked at start
        assert key_scopes(uri, writer) == frozenset(WRITER_SCOPES)
        client = from_uri(uri, api_key=writer)
        np.testing.assert_array_equal(client["ramp"].read(), np.arange(4.0))
        client.write_array(np.zeros(SMALL_KEYED_LIMIT // 16, dtype=np.float64), key="fresh")  # half the limit
        fresh = [p for p in (data / "zarr").rglob("*") if p.is_dir() and "fresh" in p.name]
        assert fresh and all(mode_of(p) == 0o700 for p in fresh)  # new directories private too

        url = f"{uri}/api/v1/metadata/"
        headers = {**key_headers(writer), "Content-Type": "application/json"}
        declared = _post(url, _zeros(2 * MiB, []), {**headers, "Content-Length": str(2 * MiB)})
        assert declared.status_code == 413, declared.text
        streamed = _post(url, _zeros(4 * SMALL_KEYED_LIMIT, []), headers)  # chunked: cut off while read
        assert streamed.status_code == 413, streamed.text
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(10)
    assert "tomolive: stopping the Tiled server" in "".join(lines)
    assert writer[:16] not in "".join(lines) and old[:16] not in "".join(lines)


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_a_non_positive_body_limit_is_refused(monkeypatch, limit):
    monkeypatch.setenv("TOMOLIVE_MAX_BODY_BYTES", limit)
    with pytest.raises(ValueError, match=f"TOMOLIVE_MAX_BODY_BYTES={limit}"):
        Settings.from_env()
