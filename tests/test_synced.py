"""synced: volume chunks are flushed to disk before they appear, and a failed write leaves no trace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.core.buffer import default_buffer_prototype

import tomolive.synced as synced
from tomolive.store import VOLUME_COMPRESSORS


def test_blocks_are_flushed_before_they_appear_and_read_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "recon.zarr"
    zarr.create_array(
        str(path), shape=(4, 8, 8), chunks=(2, 8, 8), dtype="float32", fill_value=0, compressors=VOLUME_COMPRESSORS
    )
    chunks_at_each_flush: list[int] = []
    real_sync = synced._sync_data

    def sync_and_count(fd: int) -> None:
        real_sync(fd)
        chunks_at_each_flush.append(sum(1 for p in path.glob("c/*/*/*") if not p.name.endswith(".partial")))

    monkeypatch.setattr(synced, "_sync_data", sync_and_count)
    volume = np.random.default_rng(1).random((4, 8, 8), dtype=np.float32)
    array = synced.open_for_writing(path)
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
    monkeypatch.setattr(synced, "_sync_data", flushed.append)
    store = synced.SyncedLocalStore(tmp_path)

    store.set_sync("c/0/0", default_buffer_prototype().buffer.from_bytes(b"block"))

    assert len(flushed) == 1 and (tmp_path / "c" / "0" / "0").read_bytes() == b"block"


def test_a_failed_write_keeps_the_old_chunk_and_leaves_no_partial_file(tmp_path: Path) -> None:
    chunk = tmp_path / "c" / "0"
    synced.write_synced(chunk, b"old block")

    with pytest.raises(TypeError):
        synced.write_synced(chunk, 12345)  # type: ignore[arg-type]  # not bytes: the write fails

    assert chunk.read_bytes() == b"old block"
    assert [p.name for p in chunk.parent.iterdir()] == ["0"]
