"""Security: scoped read-only keys, weights loaded as tensors only, documents never unpickled."""

from __future__ import annotations

import ast
import asyncio
import inspect
import io
import json
import os
import pickle
import threading
import time
import tomllib
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import zmq
from bluesky.callbacks.zmq import RemoteDispatcher
from tiled.client import from_uri
from tiled.client.utils import ClientError

from tomolive.cli import main as tomolive_main
from tomolive.config import Settings
from tomolive.errors import BadInputError, TomoliveError
from tomolive.ml import model_store, segmentation
from tomolive.server import running_server
from tomolive.server.keys import READ_ONLY_SCOPES, create_key, key_headers, revoke_key
from tomolive.wire import pack, unpack
from tomolive.worker import run_worker

from .conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = [
    ROOT / d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
]
"""Every directory the installed ``tomolive`` package is built from (src/tomolive, plans/, callbacks/, ...)."""


def test_read_only_key_reads_but_cannot_write(tiled_server, capsys):
    writer = from_uri(tiled_server.uri, api_key=tiled_server.api_key)
    scan = writer.create_container(key=f"security-{uuid.uuid4().hex[:8]}", metadata={"status": "complete"})
    volume = np.arange(4 * 6 * 6, dtype=np.float32).reshape(4, 6, 6)
    scan.write_array(volume, key="recon")

    code = tomolive_main(["key", "--read-only", "--uri", tiled_server.uri, "--admin-key", tiled_server.admin_key])
    read_only = capsys.readouterr().out.strip()
    assert code == 0 and len(read_only) == 72 and read_only != tiled_server.api_key
    scopes = httpx.get(f"{tiled_server.uri}/api/v1/auth/apikey", headers={"Authorization": f"Apikey {read_only}"})
    assert set(scopes.json()["scopes"]) == set(READ_ONLY_SCOPES)

    reader = from_uri(tiled_server.uri, api_key=read_only)
    mine = reader[scan.item["id"]]
    np.testing.assert_array_equal(mine["recon"].read(), volume)
    assert mine.metadata["status"] == "complete"
    with pytest.raises(ClientError) as refused:
        mine.write_array(np.zeros(3), key="vandal")
    assert refused.value.response.status_code in (401, 403)
    with pytest.raises(ClientError) as refused:
        mine.update_metadata({"status": "failed"})
    assert refused.value.response.status_code in (401, 403)
    with pytest.raises(ClientError) as refused:
        mine["recon"].write(np.zeros_like(volume))
    assert refused.value.response.status_code in (401, 403)
    with pytest.raises(TomoliveError, match="for a 'tomolive read-only' key"):
        create_key(tiled_server.uri, read_only, read_only=True)  # cannot mint keys either
    after = writer[scan.item["id"]]
    assert list(after) == ["recon"] and after.metadata["status"] == "complete"
    np.testing.assert_array_equal(after["recon"].read(), volume)

    # Revoked with the admin key (docs/security.md): the key stops reading at once.
    revoke_key(tiled_server.uri, key_headers(tiled_server.admin_key), read_only[:8])
    api = f"{tiled_server.uri}/api/v1"
    assert httpx.get(f"{api}/metadata/", headers={"Authorization": f"Apikey {read_only}"}).status_code == 401


def test_server_refuses_an_explicit_key_it_did_not_issue(tmp_path):
    settings = Settings(data_dir=tmp_path, port=free_port(), api_key="ab" * 36)
    with pytest.raises(TomoliveError, match="TOMOLIVE_API_KEY/--api-key is not known"), running_server(settings):
        pass
    assert not (tmp_path / "api_key").exists()


class _Mkdir:
    """A pickle payload that runs ``os.mkdir(path)`` when unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_weights_with_pickled_code_are_refused(tmp_path):
    ran = tmp_path / "code-ran"
    buffer = io.BytesIO()
    torch.save({"format": model_store.WEIGHTS_FORMAT, "evil": _Mkdir(ran)}, buffer)
    evil = buffer.getvalue()
    torch.load(io.BytesIO(evil), weights_only=False)  # the payload is live: a plain load runs it
    assert ran.is_dir()
    ran.rmdir()

    with pytest.raises(BadInputError, match="not a loadable tomolive weights file"):
        model_store.model_from_bytes(evil)
    assert not ran.exists()

    weights = tmp_path / "evil.pt"
    weights.write_bytes(evil)
    weights.with_suffix(".json").write_text(json.dumps({"architecture": {}, "sha256": "0" * 64}))
    with pytest.raises(BadInputError, match="cannot read the weights"):
        segmentation.load_segmenter(weights)
    assert not ran.exists()


def _package_files() -> list[Path]:
    return [path for directory in PACKAGE_DIRS for path in directory.rglob("*.py")]


def _calls(name: str) -> list[tuple[Path, ast.Call]]:
    found = []
    for path in _package_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == name:
                found.append((path, node))
    return found


def _keyword(call: ast.Call, name: str) -> object:
    return next((ast.literal_eval(k.value) for k in call.keywords if k.arg == name), None)


def test_every_load_in_the_package_refuses_pickled_code():
    scanned = {path.relative_to(ROOT).as_posix() for path in _package_files()}
    assert {"src/tomolive/ml/model_store.py", "callbacks/raw_backup.py", "plans/replay_scan.py"} <= scanned
    torch_loads = _calls("torch.load")
    assert len(torch_loads) >= 2  # the model store (weights) and training checkpoints
    assert all(_keyword(call, "weights_only") is True for _, call in torch_loads), torch_loads
    assert all(_keyword(call, "allow_pickle") is False for _, call in _calls("np.load"))
    unpicklers = {path.name for name in ("pickle.loads", "pickle.load") for path, _ in _calls(name)}
    assert unpicklers == set()  # `tomolive worker` decodes msgpack only, after checking the signature
    assert "deserializer" not in inspect.signature(run_worker).parameters


def test_pickled_document_on_0mq_is_dropped_without_running_code(tmp_path):
    ran = tmp_path / "code-ran"
    evil = pickle.dumps({"uid": "evil", "payload": _Mkdir(ran)})
    with pytest.raises(ValueError):
        unpack(evil)
    assert not ran.exists()

    context = zmq.Context()
    publisher = context.socket(zmq.PUB)
    port = publisher.bind_to_random_port("tcp://127.0.0.1")
    dispatcher = RemoteDispatcher(f"127.0.0.1:{port}", deserializer=unpack)  # as `tomolive worker`
    received: list[dict] = []
    dispatcher.subscribe(lambda name, doc: received.append(doc))

    def dispatch() -> None:
        try:
            dispatcher.start()
        except asyncio.CancelledError:  # our stop below
            pass

    def cancel_all() -> None:
        for task in asyncio.all_tasks():
            task.cancel()

    thread = threading.Thread(target=dispatch, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not received and time.monotonic() < deadline:  # 0MQ subscribers join late
            publisher.send(b" start " + evil)
            publisher.send(b" start " + pack({"uid": "good", "time": 0.0}))
            time.sleep(0.2)
    finally:
        dispatcher.loop.call_soon_threadsafe(cancel_all)
        thread.join(10)
        publisher.close()
        context.term()
    assert received and {doc["uid"] for doc in received} == {"good"}
    assert not ran.exists()
