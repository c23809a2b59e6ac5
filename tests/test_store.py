"""store: volumes written block by block, straight into the server's Zarr or over HTTP."""

from __future__ import annotations

import dataclasses

import numpy as np

from tomolive.config import Settings
from tomolive.store import ScanRecord, connect


def test_blocks_written_directly_and_over_http_read_back_the_same(tiled_server: Settings) -> None:
    client = connect(tiled_server.uri, api_key=tiled_server.api_key)
    record = ScanRecord.create(
        client, "store-test-write-paths", {"sample": "blocks"}, tiled_server.api_key
    )
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
