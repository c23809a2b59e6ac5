"""store: volumes written block by block, straight into the server's Zarr or over HTTP."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import zarr

from tomolive.config import Settings
from tomolive.errors import BadInputError
from tomolive.store import (
    STATUSES,
    VOLUME_COMPRESSORS,
    OutboxResult,
    ResultStore,
    TiledResult,
    VolumeTarget,
    check_status,
    connect,
    internals,
    pending,
    upload,
)


def test_blocks_written_directly_and_over_http_read_back_the_same(tiled_server: Settings) -> None:
    client = connect(tiled_server.uri, api_key=tiled_server.api_key)
    record = TiledResult.create(client, "store-test-write-paths", {"sample": "blocks"}, tiled_server.api_key)
    target = record.new_volume("recon", (6, 4, 4), rows_per_block=2)
    assert target.zarr_path is not None  # same machine: the worker can see the server's Zarr
    over_http = dataclasses.replace(target, zarr_path=None)
    unseen = dataclasses.replace(target, zarr_path="/nonexistent/recon")
    volume = np.arange(6 * 16, dtype=np.float32).reshape(6, 4, 4)

    assert target.write_block(0, volume[0:2]) == "zarr"
    assert over_http.write_block(1, volume[2:4]) == "http"
    assert unseen.write_block(2, volume[4:6]) == "http"  # falls back where the path is not visible

    np.testing.assert_array_equal(record.node["recon"].read(), volume)
    np.testing.assert_array_equal(connect(record.node.uri, tiled_server.api_key)["recon"][3], volume[3])


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_volumes_are_stored_bitshuffle_lz4_and_read_back_through_tiled(tiled_server: Settings, dtype: type) -> None:
    client = connect(tiled_server.uri, api_key=tiled_server.api_key)
    record = TiledResult.create(client, f"store-test-codec-{np.dtype(dtype).name}", {}, tiled_server.api_key)
    target = record.new_volume("labels", (4, 64, 64), rows_per_block=2, dtype=np.dtype(dtype))
    (blosc,) = zarr.open_array(target.zarr_path, mode="r").compressors
    assert (blosc.cname.value, blosc.shuffle.value, blosc.typesize) == ("lz4", "bitshuffle", np.dtype(dtype).itemsize)
    volume = (np.arange(4 * 64 * 64) % 7).astype(dtype).reshape(4, 64, 64)

    assert target.write_block(0, volume[0:2]) == "zarr"
    assert dataclasses.replace(target, zarr_path=None).write_block(1, volume[2:4]) == "http"  # written by the server

    np.testing.assert_array_equal(record.node["labels"].read(), volume)
    chunks = [Path(target.zarr_path) / "c" / str(i) / "0" / "0" for i in (0, 1)]
    for chunk, rows in zip(chunks, (volume[0:2], volume[2:4]), strict=True):  # both are Blosc frames
        assert numcodecs.blosc.decompress(chunk.read_bytes()) == rows.tobytes()
        assert chunk.stat().st_size < rows.nbytes / 4
    assert not internals.set_compressors(target.zarr_path, VOLUME_COMPRESSORS)  # holds chunks: left as it is


def test_an_array_that_cannot_be_rewritten_keeps_the_default_codec(
    tiled_server: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    client = connect(tiled_server.uri, api_key=tiled_server.api_key)
    record = TiledResult.create(client, "store-test-codec-readonly", {}, tiled_server.api_key)

    write_chunk = internals.write_synced

    def refuse(path: Path, data: bytes) -> int:  # the metadata only: chunks are written the same way
        if path.name == "zarr.json":
            raise PermissionError(f"read-only file system: {path}")
        return write_chunk(path, data)

    monkeypatch.setattr(internals, "write_synced", refuse)
    target = record.new_volume("recon", (4, 8, 8), rows_per_block=2)

    assert [c.to_dict()["name"] for c in zarr.open_array(target.zarr_path, mode="r").compressors] == ["zstd"]
    assert "keeps Zarr's default codec" in caplog.text and "read-only file system" in caplog.text
    volume = np.ones((4, 8, 8), np.float32)
    target.write_block(0, volume[0:2])
    target.write_block(1, volume[2:4])
    np.testing.assert_array_equal(record.node["recon"].read(), volume)


def test_a_volume_made_anew_at_the_same_path_is_written_as_the_new_one(tmp_path: Path) -> None:
    """Processing a run again remakes its volume where it was; a worker's open array must follow."""
    path = str(tmp_path / "recon.zarr")
    zarr.create_array(path, shape=(8, 4, 4), chunks=(4, 4, 4), dtype="float32")
    VolumeTarget("http://unused", None, rows_per_block=4, zarr_path=path).write_block(1, np.ones((4, 4, 4)))

    zarr.create_array(path, shape=(16, 4, 4), chunks=(8, 4, 4), dtype="float32", overwrite=True)  # other blocks
    block = np.arange(8 * 16, dtype=np.float32).reshape(8, 4, 4)
    VolumeTarget("http://unused", None, rows_per_block=8, zarr_path=path).write_block(1, block)

    again = zarr.open_array(path, mode="r")
    np.testing.assert_array_equal(again[8:], block)
    assert not again[:8].any()


def test_a_preview_publish_without_an_image_updates_its_metadata_only(tiled_server: Settings) -> None:
    client = connect(tiled_server.uri, api_key=tiled_server.api_key)
    record = TiledResult.create(client, "store-test-preview", {"sample": "preview"}, tiled_server.api_key)
    with pytest.raises(BadInputError, match="no preview image yet"):
        record.write_preview(None, {"n_angles": 0})
    image = np.random.default_rng(2).random((3, 8, 8), dtype=np.float32)
    record.write_preview(image, {"n_angles": 10, "frames_dropped": None})
    record.write_preview(None, {"n_angles": 10, "frames_dropped": 4})

    preview = connect(tiled_server.uri, api_key=tiled_server.api_key)["processed"]["store-test-preview"]["preview"]
    np.testing.assert_array_equal(preview.read(), image)
    assert preview.metadata["frames_dropped"] == 4 and preview.metadata["n_angles"] == 10


def test_both_stores_check_a_status_in_one_place(tiled_server: Settings, tmp_path: Path) -> None:
    client = connect(tiled_server.uri, api_key=tiled_server.api_key)
    stores: list[ResultStore] = [
        TiledResult.create(client, "store-test-status", {}, tiled_server.api_key),
        OutboxResult.create(tmp_path, "store-test-status", {}),
    ]
    assert [check_status(s) for s in STATUSES] == ["running", "complete", "failed", "aborted"]
    for result in stores:
        with pytest.raises(BadInputError, match="status must be one of"):
            result.set_status("done")  # not a status
        result.set_status("aborted", reason="stopped")
    assert client["processed"]["store-test-status"].metadata["status"] == "aborted"
    assert OutboxResult(tmp_path / "store-test-status").metadata()["status"] == "aborted"


def test_an_outbox_result_keeps_volumes_and_preview_and_upload_sends_both(
    tiled_server: Settings, tmp_path: Path
) -> None:
    entry: ResultStore = OutboxResult.create(tmp_path, "store-test-outbox", {"sample": "outbox"})
    assert (entry.uid, entry.uri, entry.models_client) == ("store-test-outbox", None, None)
    assert "upload-outbox" in entry.describe()
    with pytest.raises(BadInputError, match="no preview image yet"):
        entry.write_preview(None, {"n_angles": 0})
    volume = np.arange(6 * 16, dtype=np.float32).reshape(6, 4, 4)
    target = entry.new_volume("recon", (6, 4, 4), rows_per_block=4, metadata={"stage": "recon"})
    assert target.write_block(0, volume[0:4]) == "zarr" and target.write_block(1, volume[4:6]) == "zarr"
    other_ranks = {  # a ptychography result: loss curve, positions, a probe with mode axes
        "loss": np.linspace(1, 0, 7, dtype=np.float32),
        "positions": np.arange(10, dtype=np.float32).reshape(5, 2),
        "probe": np.arange(2 * 1 * 3 * 3, dtype=np.complex64).reshape(2, 1, 3, 3),
    }
    for key, array in other_ranks.items():
        entry.new_volume(key, array.shape, rows_per_block=len(array), dtype=array.dtype).write_block(0, array)
    entry.new_volume("scratch", (2, 4, 4), rows_per_block=2)
    entry.remove("scratch")
    assert "recon" in entry and "scratch" not in entry
    image = np.random.default_rng(3).random((3, 8, 8), dtype=np.float32)
    entry.write_preview(image, {"n_angles": 5})
    entry.write_preview(None, {"n_angles": 9})
    entry.set_status("complete")

    client = connect(tiled_server.uri, api_key=tiled_server.api_key)
    (waiting,) = pending(tmp_path)
    uri = upload(waiting, client, tiled_server.api_key)

    uploaded = connect(uri, api_key=tiled_server.api_key)
    assert uploaded.metadata["status"] == "complete" and uploaded.metadata["sample"] == "outbox"
    np.testing.assert_array_equal(uploaded["recon"].read(), volume)
    assert uploaded["recon"].metadata["stage"] == "recon"
    np.testing.assert_array_equal(uploaded["preview"].read(), image)
    assert uploaded["preview"].metadata["n_angles"] == 9
    for key, array in other_ranks.items():
        np.testing.assert_array_equal(uploaded[key].read(), array)
    assert not pending(tmp_path)


def test_metadata_updates_from_many_threads_are_all_kept(tiled_server: Settings) -> None:
    """Tiled applies each patch read-modify-write: concurrent patches to one container lost keys,
    and the next patch built on the client's copy then failed with a 500 (a CI flake of test_flats)."""
    client = connect(tiled_server.uri, api_key=tiled_server.api_key)
    record = TiledResult.create(client, "store-test-concurrent", {}, tiled_server.api_key)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: record.update(**{f"key_{i}": i}), range(48)))
    record.set_status("complete", **{f"key_{i}": -i for i in range(48)})  # replaces every key the server kept
    stored = connect(tiled_server.uri, api_key=tiled_server.api_key)["processed"]["store-test-concurrent"].metadata
    assert stored["status"] == "complete" and [stored[f"key_{i}"] for i in range(48)] == [-i for i in range(48)]
