"""synced: volume chunks are flushed to disk before they appear, and a failed write leaves no trace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

import tomolive.synced as synced
from tomolive.store import VOLUME_COMPRESSORS


def test_blocks_are_flushed_before_they_appear_and_read_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "recon.zarr"
    zarr.create_array(str(path), shape=(4, 8, 8), chunks=(2, 8, 8), dtype="float32", fill_value=0,
                      compressors=VOLUME_COMPRESSORS)  # fmt: skip
    flushed: list[str] = []
    real_sync = synced._sync_data

    def sync_and_record(fd: int) -> None:
        real_sync(fd)
        flushed.append(Path(f"/proc/self/fd/{fd}").resolve().name)

    monkeypatch.setattr(synced, "_sync_data", sync_and_record)
    volume = np.random.default_rng(1).random((4, 8, 8), dtype=np.float32)
    array = synced.open_for_writing(path)
    array[0:2] = volume[0:2]
    array[2:4] = np.zeros((2, 8, 8), np.float32)  # an all-fill block is still written: no empty-chunk pass

    np.testing.assert_array_equal(zarr.open_array(str(path), mode="r")[:], np.concatenate([volume[0:2], np.zeros((2, 8, 8))]))
    chunks = sorted(p.relative_to(path).as_posix() for p in (path / "c").rglob("*") if p.is_file())
    assert chunks == ["c/0/0/0", "c/1/0/0"]
    assert len(flushed) == 2 and all(name.endswith(".partial") for name in flushed)  # synced, then renamed


def test_a_failed_write_keeps_the_old_chunk_and_leaves_no_partial_file(tmp_path: Path) -> None:
    chunk = tmp_path / "c" / "0"
    synced.write_synced(chunk, b"old block")

    with pytest.raises(TypeError):
        synced.write_synced(chunk, 12345)  # type: ignore[arg-type]  # not bytes: the write fails

    assert chunk.read_bytes() == b"old block"
    assert [p.name for p in chunk.parent.iterdir()] == ["0"]
