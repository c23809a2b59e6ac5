"""The command line explains itself: one line per expected failure, filters for ls, help for every option."""

from __future__ import annotations

import argparse
import logging
import uuid
from pathlib import Path

import h5py
import httpx
import numpy as np
import pytest

from tomolive.cli import SERVER_URI_FILE, build_parser, main
from tomolive.config import Settings
from tomolive.store import connect, processed_root

from .conftest import free_port


@pytest.fixture(autouse=True)
def _no_ambient_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "TOMOLIVE_API_KEY",
        "TOMOLIVE_ADMIN_KEY",
        "TOMOLIVE_TILED_URI",
        "TOMOLIVE_DATA_DIR",
        "TOMOLIVE_PORT",
        "TOMOLIVE_WIRE_SECRET",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # the default ./tomolive-data holds no key file


def _failures(server: Settings, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], int, str]]:
    """(argv, exit code, the start of the one line on stderr) for every expected failure."""
    port = free_port()
    down = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("TOMOLIVE_PORT", str(port))  # the default server (no --uri, no --data-dir) is down
    unreachable = f"cannot reach the Tiled server at {down}: start it with 'tomolive serve' or pass --uri"
    described = tmp / "described"  # a data dir whose server (now gone) wrote its URI
    described.mkdir()
    (described / SERVER_URI_FILE).write_text(down + "\n")
    not_hdf5 = tmp / "notes.h5"
    not_hdf5.write_text("not HDF5\n")
    not_a_scan = tmp / "other.h5"  # HDF5, but neither DXchange nor NXtomo
    with h5py.File(not_a_scan, "w") as f:
        f["entry/counts"] = np.zeros(3)
    no_flats = tmp / "no_flats.h5"  # DXchange projections and darks, no flats
    with h5py.File(no_flats, "w") as f:
        f["exchange/data"] = np.zeros((4, 2, 3), np.uint16)
        f["exchange/data_dark"] = np.zeros((1, 2, 3), np.uint16)
    empty = tmp / "empty"
    empty.mkdir()
    key = ["--uri", server.uri, "--api-key", server.api_key or ""]
    no_key = f"no API key for the Tiled server at {server.uri}: pass --api-key KEY, set TOMOLIVE_API_KEY"
    expected = "expected DXchange"
    return [
        # server down, named by --uri or by the data dir it wrote
        (["ls", "--uri", down], 1, f"tomolive ls: {unreachable}"),
        (["process", str(not_hdf5)], 1, f"tomolive process: {unreachable}"),  # neither --uri nor --data-dir
        (["process", str(not_hdf5), "--uri", down], 1, f"tomolive process: {unreachable}"),
        (["export", "abc", "--format", "zarr", "--uri", down], 1, f"tomolive export: {unreachable}"),
        (["upload-outbox", "x.npz", "--uri", down], 1, f"tomolive upload-outbox: {unreachable}"),
        (["key", "--uri", down, "--admin-key", "k"], 1, f"tomolive key: {unreachable}"),
        (["ls", "--data-dir", str(described)], 1, f"tomolive ls: {unreachable}"),
        (["process", str(not_hdf5), "--data-dir", str(described)], 1, f"tomolive process: {unreachable}"),
        (["export", "abc", "--format", "hdf5", "--data-dir", str(described)], 1, f"tomolive export: {unreachable}"),
        # port in use
        (["serve", "--port", str(server.port), "--data-dir", str(empty)], 1, f"tomolive serve: port {server.port} on"),
        (["demo", "--port", str(server.port), "--data-dir", str(empty)], 1, f"tomolive demo: port {server.port} on"),
        # no key found, or a key the server refuses
        (["ls", "--uri", server.uri, "--data-dir", str(empty)], 1, f"tomolive ls: {no_key}"),
        (["export", "abc", "--format", "hdf5", "--uri", server.uri], 1, f"tomolive export: {no_key}"),
        (["process", str(not_hdf5), "--uri", server.uri], 1, f"tomolive process: {no_key}"),
        (
            ["key", "--uri", server.uri, "--data-dir", str(empty)],
            1,
            "tomolive key: no admin key: set TOMOLIVE_ADMIN_KEY",
        ),
        (["worker", "--zmq", "127.0.0.1:1", *key], 2, "tomolive worker: no wire secret: set TOMOLIVE_WIRE_SECRET"),
        (
            ["ls", "--uri", server.uri, "--api-key", "not-a-key"],
            1,
            f"tomolive ls: the Tiled server at {server.uri} refused",
        ),
        # export into a missing folder
        (
            ["export", "abc", "--format", "hdf5", "--out", str(tmp / "no" / "such" / "x.h5"), *key],
            1,
            f"tomolive export: --out {tmp / 'no' / 'such' / 'x.h5'}: the folder {tmp / 'no' / 'such'} does not exist",
        ),
        # unknown uid
        (
            ["export", "0000dead", "--format", "hdf5", *key],
            1,
            "tomolive export 0000dead: no processed scan has a uid starting with '0000dead'",
        ),
        (
            ["process", f"{server.uri}/api/v1/metadata/raw/no-such-run", *key],
            1,
            f"tomolive process: /api/v1/metadata/raw/no-such-run not found on the Tiled server at {server.uri}",
        ),
        # unreadable or missing HDF5, or HDF5 that is not a whole scan
        (["process", str(not_hdf5), *key], 1, f"tomolive process: {str(not_hdf5)!r} is not a readable HDF5 file"),
        (
            ["process", str(tmp / "gone.h5"), *key],
            1,
            f"tomolive process: scan file {str(tmp / 'gone.h5')!r} does not exist",
        ),
        (
            ["process", str(not_a_scan), *key],
            1,
            f"tomolive process: {str(not_a_scan)!r} is not a tomography scan tomolive can read: {expected}",
        ),
        (["process", str(no_flats), *key], 1, f"tomolive process: {str(no_flats)!r} has no "),
        # bad option values
        (["key", "--expires-in", "0"], 2, "tomolive key: --expires-in 0: give a positive number of seconds"),
    ]


def test_every_expected_failure_is_one_line_without_a_traceback(tiled_server, tmp_path, capsys, monkeypatch):
    for argv, code, first_line in _failures(tiled_server, tmp_path, monkeypatch):
        assert main(argv) == code, (argv, capsys.readouterr().err)
        out, err = capsys.readouterr()
        assert err.startswith(first_line), (argv, err)
        assert err.count("\n") == 1 and "Traceback" not in err and "\x1b" not in err, (argv, err)
        assert "Username" not in out and "Password" not in out, argv


def test_debug_shows_the_exception_instead(tmp_path):
    with pytest.raises(httpx.ConnectError):
        main(["--debug", "ls", "--uri", f"http://127.0.0.1:{free_port()}", "--api-key", "k"])
    assert logging.getLogger("httpx").level == logging.DEBUG
    main(["ls", "--uri", f"http://127.0.0.1:{free_port()}"])
    assert logging.getLogger("httpx").level == logging.WARNING  # no per-request lines
    assert logging.getLogger("httpcore").level == logging.WARNING


def test_data_dir_finds_the_server_it_describes(tiled_server, tmp_path, capsys):
    data_dir = tmp_path / "elsewhere"
    data_dir.mkdir()
    (data_dir / SERVER_URI_FILE).write_text(tiled_server.uri + "\n")
    (data_dir / "api_key").write_text(f"{tiled_server.api_key}\n")
    sample = f"dd-{uuid.uuid4().hex[:8]}"
    key = _put(connect(tiled_server.uri, api_key=tiled_server.api_key), sample, "2026-01-01T00:00:00+00:00")
    assert main(["ls", "--data-dir", str(data_dir), "--sample", sample]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.splitlines()[1].startswith(key)


def _put(client, sample: str, created: str, **md) -> str:
    key = f"cli-{uuid.uuid4().hex[:12]}"
    processed_root(client).create_container(key, metadata={"sample": sample, "created": created, **md})
    return key


def test_ls_filters_on_the_server_and_survives_a_container_without_status(tiled_server, capsys):
    client = connect(tiled_server.uri, api_key=tiled_server.api_key)
    sample = f"ls-{uuid.uuid4().hex[:8]}"
    old = _put(client, sample, "2020-03-01T10:00:00+00:00", status="complete", scan_id=1)
    failed = _put(client, sample, "2026-01-02T10:00:00+00:00", status="failed", reason="no flats", scan_id=2)
    bare = _put(client, sample, "2026-01-03T10:00:00+00:00")  # no status, no recon, no scan_id
    newest = _put(client, sample, "2026-01-04T10:00:00+00:00", status="complete", scan_id=4)
    _put(client, f"{sample}-other", "2026-01-05T10:00:00+00:00", status="complete")
    base = ["ls", "--uri", tiled_server.uri, "--api-key", tiled_server.api_key or "", "--sample", sample]

    def listed(*extra: str) -> list[str]:
        assert main([*base, *extra]) == 0
        lines = capsys.readouterr().out.splitlines()
        return [line.split()[0] for line in lines[1:] if line.startswith("cli-")]

    assert listed() == [newest, bare, failed, old]  # newest first; the bare one listed with blanks
    assert listed("--status", "complete") == [newest, old]
    assert listed("--since", "2026-01-02") == [newest, bare, failed]
    assert listed("--since", "2026-01-02", "--limit", "2") == [newest, bare]
    assert main([*base, "--status", "failed"]) == 0
    out = capsys.readouterr().out
    assert failed in out and "reason: no flats" in out
    assert main([*base, "--status", "aborted"]) == 0
    assert capsys.readouterr().out.startswith(f"no processed scans in {tiled_server.uri}/processed with sample=")


def test_ls_rejects_a_bad_date(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["ls", "--since", "yesterday"])
    assert exit_.value.code == 2 and "ISO date" in capsys.readouterr().err


def _all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _all_parsers(sub)
    return found


def test_every_option_has_help_without_backticks():
    for parser in _all_parsers(build_parser()):
        assert "`" not in (parser.description or ""), parser.prog
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    assert choice.help and "`" not in choice.help, (parser.prog, choice.dest)
                continue
            assert action.help and "`" not in action.help, (parser.prog, action.option_strings or action.dest)


def test_version_and_help_are_plain_text(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("tomolive ")
    for argv, option in ((["--help"], "--debug"), (["ls", "--help"], "--limit"), (["process", "--help"], "--stripes")):
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        assert option in out and "\x1b" not in out and "`" not in out, argv


def test_demo_writes_the_png_it_was_given_and_names_port_and_data_dir(tmp_path, capsys):
    port = free_port()
    png = tmp_path / "x.png"
    data_dir = tmp_path / "demo-data"
    argv = ["demo", "--port", str(port), "--data-dir", str(data_dir), "--size", "48", "--angles", "40"]
    assert main([*argv, "--output", str(png)]) == 0
    out = capsys.readouterr().out
    assert png.is_file() and png.stat().st_size > 0
    assert f"tomolive serve --port {port} --data-dir {data_dir.absolute()}" in out


def test_ls_makes_a_few_requests_however_many_scans(tmp_path, capsys, monkeypatch):
    """Filters and sorting run on the server and shapes come from the metadata: the request
    count does not grow with the scans listed (timings: bench/, not here)."""
    import httpx
    import numpy as np

    from tomolive.server import running_server

    with running_server(Settings(data_dir=tmp_path / "many", port=free_port())) as server:
        root = processed_root(connect(server.uri, api_key=server.api_key))
        for i in range(120):
            created = f"2026-11-{1 + i // 24:02d}T{i % 24:02d}:00:00+00:00"
            md = {"sample": f"s{i % 5}", "status": "failed" if i % 3 == 0 else "complete", "created": created}
            node = root.create_container(f"scan-{i:03d}", metadata={**md, "recon_shape": [4, 8, 8]})
            if i >= 115:
                node.write_array(np.zeros((4, 8, 8), np.float32), key="recon")
        sent: list[str] = []
        send = httpx.Client.send
        monkeypatch.setattr(
            httpx.Client, "send", lambda self, request, **kw: sent.append(request.url.path) or send(self, request, **kw)
        )
        argv = ["ls", "--uri", server.uri, "--api-key", server.api_key or ""]
        for extra in ([], ["--sample", "s1", "--status", "complete", "--since", "2026-11-04"]):
            sent.clear()
            assert main([*argv, *extra]) == 0
            lines = capsys.readouterr().out.splitlines()
            assert lines[1].startswith("scan-119" if not extra else "scan-116") and "4x8x8" in lines[1], lines[:2]
            assert len(lines) == (51 if not extra else 1 + sum(1 for i in range(72, 120) if i % 5 == 1 and i % 3)), (
                lines
            )
            assert len(sent) <= 6, sent  # connect, the filtered and sorted page: none per scan
