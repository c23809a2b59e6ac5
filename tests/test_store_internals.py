"""store.internals: contract tests of what tomolive assumes of Tiled's and Zarr's internals.

Each test names the assumption it checks: when one fails after a Tiled or Zarr upgrade, the
matching code in ``tomolive/store/internals.py`` must change with it (written against
tiled 0.2.20 and zarr 3.1). Also: volume chunks are flushed to disk before they appear.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import tiled.authn_database.core as tiled_auth_db
import tiled.server.authentication as tiled_authentication
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import LocalStore

from tomolive.config import Settings
from tomolive.store import VOLUME_COMPRESSORS, TiledResult, connect, internals


def test_contract_tiled_keeps_a_writable_array_as_a_zarr_v3_directory_it_reads_per_request(
    tiled_server: Settings,
) -> None:
    """Workers write chunks into the server's Zarr directory, and the codec is set by
    rewriting its ``zarr.json``: both need Tiled to keep the array there and to read
    ``zarr.json`` anew on each request."""
    client = connect(tiled_server.uri, api_key=tiled_server.api_key)
    record = TiledResult.create(client, "contract-zarr-directory", {}, tiled_server.api_key)
    target = record.new_volume("volume", (4, 8, 8), rows_per_block=2)
    path = internals.writable_zarr_path(record.node["volume"])
    assert path is not None, "Tiled no longer keeps a writable array as a file:// Zarr directory asset"
    assert path == target.zarr_path
    meta = json.loads((Path(path) / "zarr.json").read_text())
    assert meta["zarr_format"] == 3, f"Tiled's writable arrays are no longer Zarr v3: {meta!r}"

    block = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    record.node["volume"].write_block(block, block=(0, 0, 0))  # written by the server
    chunk = (Path(path) / "c" / "0" / "0" / "0").read_bytes()
    assert numcodecs.blosc.decompress(chunk) == block.tobytes(), "Tiled ignored the codec in the rewritten zarr.json"
    internals.open_for_writing(path)[2:4] = block + 1  # written by a worker, straight into the chunks
    np.testing.assert_array_equal(
        connect(record.node.uri, tiled_server.api_key)["volume"].read(),
        np.concatenate([block, block + 1]),
        err_msg="Tiled does not serve chunks written into its Zarr directory by another process",
    )


def test_contract_zarr_local_store_has_the_hooks_synced_local_store_overrides(tmp_path: Path) -> None:
    """SyncedLocalStore overrides ``set``/``set_sync`` and calls LocalStore's private
    ``_is_open``, ``_open``, ``_ensure_open_sync`` and ``_check_writable``."""
    for name in ("set", "set_sync", "_open", "_ensure_open_sync", "_check_writable"):
        assert callable(getattr(LocalStore, name, None)), f"zarr's LocalStore no longer has {name}()"
    assert inspect.signature(LocalStore.set).parameters.keys() == {"self", "key", "value"}
    assert hasattr(LocalStore(tmp_path), "_is_open"), "zarr's LocalStore no longer has _is_open"
    assert LocalStore(tmp_path).root == tmp_path


def test_contract_tiled_looks_api_keys_up_through_one_module_global() -> None:
    """share_api_key_lookups replaces ``tiled.server.authentication.lookup_valid_api_key``:
    that works only while Tiled calls it by that module-global name, as ``(db, secret)``."""
    assert list(inspect.signature(tiled_auth_db.lookup_valid_api_key).parameters) == ["db", "secret"]
    source = inspect.getsource(tiled_authentication)
    assert "from ..authn_database.core import" in source and "lookup_valid_api_key," in source
    assert source.count("await lookup_valid_api_key(db, secret)") >= 3, (
        "Tiled's authentication no longer looks keys up through its module-global lookup_valid_api_key"
    )


def test_blocks_are_flushed_before_they_appear_and_read_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "recon.zarr"
    zarr.create_array(
        str(path), shape=(4, 8, 8), chunks=(2, 8, 8), dtype="float32", fill_value=0, compressors=VOLUME_COMPRESSORS
    )
    chunks_at_each_flush: list[int] = []
    real_sync = internals.sync_data

    def sync_and_count(fd: int) -> None:
        real_sync(fd)
        chunks_at_each_flush.append(sum(1 for p in path.glob("c/*/*/*") if not p.name.endswith(".partial")))

    monkeypatch.setattr(internals, "sync_data", sync_and_count)
    volume = np.random.default_rng(1).random((4, 8, 8), dtype=np.float32)
    array = internals.open_for_writing(path)
    array[0:2] = volume[0:2]
    array[2:4] = np.zeros((2, 8, 8), np.float32)  # an all-fill block is still written: no empty-chunk pass

    np.testing.assert_array_equal(
        zarr.open_array(str(path), mode="r")[:], np.concatenate([volume[0:2], np.zeros((2, 8, 8))])
    )
    chunks = sorted(p.relative_to(path).as_posix() for p in (path / "c").rglob("*") if p.is_file())
    assert chunks == ["c/0/0/0", "c/1/0/0"]
    assert chunks_at_each_flush == [0, 1]  # each chunk was flushed before it appeared under its name


def test_synchronous_writes_are_flushed_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flushed: list[int] = []
    monkeypatch.setattr(internals, "sync_data", flushed.append)
    store = internals.SyncedLocalStore(tmp_path)

    store.set_sync("c/0/0", default_buffer_prototype().buffer.from_bytes(b"block"))

    assert len(flushed) == 1 and (tmp_path / "c" / "0" / "0").read_bytes() == b"block"


def test_a_failed_write_keeps_the_old_chunk_and_leaves_no_partial_file(tmp_path: Path) -> None:
    chunk = tmp_path / "c" / "0"
    internals.write_synced(chunk, b"old block")

    with pytest.raises(TypeError):
        internals.write_synced(chunk, 12345)  # type: ignore[arg-type]  # not bytes: the write fails

    assert chunk.read_bytes() == b"old block"
    assert [p.name for p in chunk.parent.iterdir()] == ["0"]
