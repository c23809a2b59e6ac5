"""ProjectionSpool: append (each frame on disk at once), growth past capacity, trimming, row-block reads, removal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from tomolive.errors import BadInputError
from tomolive.techniques.tomo.spool import FRAMES_PER_CHUNK, GROWTH, ProjectionSpool, read_rows

FRAME = (5, 6)


def _frames(n: int) -> np.ndarray:
    return np.random.default_rng(1).random((n, *FRAME)).astype(np.float32)


def test_append_finish_and_read_rows(tmp_path: Path) -> None:
    path = tmp_path / "spool.zarr"
    spool = ProjectionSpool.create(path, FRAME, rows_per_block=2, expected=4)
    assert spool.array.chunks == (32, 2, 6)  # 32 small frames per chunk
    assert spool.array.shape == (32, *FRAME)  # capacity rounded up to whole chunks
    assert spool.frame_shape == FRAME and len(spool) == 0
    frames = _frames(6)
    for i, frame in enumerate(frames):
        spool.append(frame, angle=0.5 * i)
    assert len(spool) == 6
    first_rows = spool.path / spool.array.metadata.encode_chunk_key((0, 0, 0))
    assert first_rows.stat().st_size == 6 * 2 * 6 * 4  # every frame's rows 0-1 are on disk already
    assert spool.angles == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    spool.finish()
    assert spool.array.shape == (6, *FRAME)
    assert spool.array.chunks[0] == FRAMES_PER_CHUNK
    with pytest.raises(BadInputError, match="finished"):
        spool.append(frames[0], angle=3.0)
    rows = read_rows(str(path), 1, 4)
    assert rows.shape == (6, 3, 6) and rows.dtype == np.float32
    np.testing.assert_array_equal(rows, frames[:, 1:4])
    np.testing.assert_array_equal(read_rows(str(path), 0, FRAME[0]), frames)


def test_grows_past_growth_more_than_once(tmp_path: Path) -> None:
    path = tmp_path / "long.zarr"
    spool = ProjectionSpool.create(path, (2, 3), rows_per_block=2, expected=1)
    n = 2 * GROWTH + 40  # capacity 32 -> grows at frames 32 and 32 + 288
    frames = np.arange(n * 6, dtype=np.float32).reshape(n, 2, 3)
    for i, frame in enumerate(frames):
        spool.append(frame, i)
    assert spool.array.shape[0] >= n - 32 and spool.array.shape[0] % 32 == 0
    spool.finish()
    assert spool.array.shape == (n, 2, 3)
    np.testing.assert_array_equal(read_rows(str(path), 0, 2), frames)


def test_create_replaces_an_old_spool(tmp_path: Path) -> None:
    path = tmp_path / "again.zarr"
    old = ProjectionSpool.create(path, FRAME, rows_per_block=2, expected=2)
    old.append(np.full(FRAME, 9.0, np.float32), 0.0)
    old.finish()
    new = ProjectionSpool.create(path, FRAME, rows_per_block=2, expected=2)
    new.append(np.ones(FRAME, np.float32), 0.0)
    new.finish()
    np.testing.assert_array_equal(read_rows(str(path), 0, 5), np.ones((1, *FRAME)))


def test_wrong_frame_shape_names_both_shapes(tmp_path: Path) -> None:
    spool = ProjectionSpool.create(tmp_path / "s.zarr", FRAME, rows_per_block=2)
    spool.append(_frames(1)[0], 0.0)
    with pytest.raises(BadInputError, match=r"projection 1 has shape \(5, 7\).*\(5, 6\)"):
        spool.append(np.zeros((5, 7), np.float32), 1.0)
    assert len(spool) == 1


def test_remove_deletes_the_directory(tmp_path: Path) -> None:
    path = tmp_path / "gone.zarr"
    spool = ProjectionSpool.create(path, FRAME, rows_per_block=5)
    spool.append(_frames(1)[0], 0.0)
    assert path.is_dir()
    spool.remove()
    assert not path.exists()
    spool.remove()  # idempotent


def test_read_rows_spans_partial_last_chunk(tmp_path: Path) -> None:
    spool = ProjectionSpool.create(tmp_path / "p.zarr", FRAME, rows_per_block=2, expected=40)
    frames = _frames(45)  # one full chunk of 32 and a partial one of 13
    for i, frame in enumerate(frames):
        spool.append(frame, i)
    spool.finish()
    np.testing.assert_array_equal(read_rows(str(spool.path), 2, 5), frames[:, 2:5])


def test_read_rows_matches_zarr_for_every_row_range(tmp_path: Path) -> None:
    spool = ProjectionSpool.create(tmp_path / "r.zarr", FRAME, rows_per_block=2, expected=40)
    frames = _frames(40)
    for i, frame in enumerate(frames):
        spool.append(frame, i)
    spool.finish()
    np.testing.assert_array_equal(spool.array[:], frames)  # Zarr reads the files the spool wrote
    frames[32:, 2:4] = 0.0  # a chunk with no file (as Zarr leaves one of fill values) reads as 0
    (spool.path / spool.array.metadata.encode_chunk_key((1, 1, 0))).unlink()
    for start in range(FRAME[0]):
        for stop in range(start + 1, FRAME[0] + 1):
            rows = read_rows(str(spool.path), start, stop)
            np.testing.assert_array_equal(rows, spool.array[:, start:stop])
            np.testing.assert_array_equal(rows, frames[:, start:stop])


@pytest.mark.parametrize("options", [{}, {"zarr_format": 2, "compressors": None}], ids=["zstd", "zarr-v2"])
def test_read_rows_refuses_an_array_that_is_not_a_spool(tmp_path: Path, options: dict) -> None:
    path = tmp_path / "other.zarr"
    zarr.create_array(str(path), shape=(4, *FRAME), chunks=(4, 2, 6), dtype="float32", **options)
    with pytest.raises(BadInputError, match="not a projection spool.*codecs"):
        read_rows(str(path), 0, 2)


@pytest.mark.parametrize(("start", "stop"), [(0, 6), (3, 3), (-1, 2), (4, 2)])
def test_read_rows_refuses_rows_outside_the_frames(tmp_path: Path, start: int, stop: int) -> None:
    spool = ProjectionSpool.create(tmp_path / "o.zarr", FRAME, rows_per_block=2)
    spool.append(_frames(1)[0], 0.0)
    spool.finish()
    with pytest.raises(BadInputError, match=rf"rows \[{start}, {stop}\) of spool .*0 <= start < stop <= 5"):
        read_rows(str(spool.path), start, stop)


def test_rows_per_block_needing_more_open_files_than_allowed_is_refused(tmp_path: Path, monkeypatch) -> None:
    import tomolive.techniques.tomo.spool

    monkeypatch.setattr(tomolive.techniques.tomo.spool, "_open_file_limit", lambda: 4)  # 2 files open per spool at most
    with pytest.raises(BadInputError, match=r"rows_per_block=2 cuts 5 detector rows into 3 blocks.*ulimit -n"):
        ProjectionSpool.create(tmp_path / "many.zarr", FRAME, rows_per_block=2)
    assert not (tmp_path / "many.zarr").exists()
    ProjectionSpool.create(tmp_path / "few.zarr", FRAME, rows_per_block=4)  # 2 blocks


def test_a_removed_spool_takes_no_frames_and_keeps_no_file_open(tmp_path: Path) -> None:
    spool = ProjectionSpool.create(tmp_path / "r.zarr", FRAME, rows_per_block=2)
    spool.append(_frames(1)[0], 0.0)
    files = list(spool._files.values())
    assert len(files) == 3  # one per row block while the chunk fills
    spool.remove()
    assert all(f.closed for f in files) and not spool.path.exists()
    with pytest.raises(BadInputError, match="finished or removed"):
        spool.append(_frames(1)[0], 1.0)


def test_an_unlimited_open_file_limit_is_no_limit(tmp_path: Path, monkeypatch) -> None:
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda _: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    ProjectionSpool.create(tmp_path / "unlimited.zarr", FRAME, rows_per_block=2)
