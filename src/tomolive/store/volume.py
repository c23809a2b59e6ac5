"""What a Dask worker writes a volume's blocks with: :class:`VolumeTarget`, picklable, no client.

Workers that can see the volume's Zarr directory (the Tiled server's own, on one machine or
a shared file system; or an outbox entry) write their blocks straight into its chunks;
others send them through Tiled's HTTP API. Both give the same array.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from tiled.client import from_uri
from tiled.client.base import BaseClient
from zarr.codecs import BloscCodec

from .internals import open_for_writing

VOLUME_COMPRESSORS = (BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"),)
"""How tomolive's volumes are compressed: Blosc with bit-shuffle + LZ4, the algorithm of the
bitshuffle/LZ4 filter of HDF5 detector files; faster than Zarr's default Zstd (see
docs/measurements/store.md)."""


@dataclass
class VolumeTarget:
    """What a Dask worker needs to write blocks of one volume: picklable, no client.

    ``zarr_path`` is the volume's Zarr directory; a worker that can see it writes chunks
    there directly (no HTTP, no server CPU), any other goes through Tiled at ``uri``.
    """

    uri: str
    api_key: str | None
    rows_per_block: int
    zarr_path: str | None = None

    def open(self) -> Any:
        """The volume for reading: its Zarr array where visible, else its Tiled array client."""
        local = _local_zarr(self.zarr_path) if self.zarr_path else None
        return local if local is not None else from_uri(self.uri, api_key=self.api_key)

    def write_block(self, index: int, block: np.ndarray) -> str:
        """Write rows ``[index * rows_per_block, ...)`` of the volume; return ``"zarr"`` or ``"http"``."""
        block = np.ascontiguousarray(block)
        local = _local_zarr(self.zarr_path) if self.zarr_path else None
        if local is not None:
            start = index * self.rows_per_block
            local[start : start + len(block)] = block
            return "zarr"
        _array_client(self.uri, self.api_key).write_block(block, block=(index, *(0,) * (block.ndim - 1)))
        return "http"


@functools.lru_cache(maxsize=8)
def _array_client(uri: str, api_key: str | None) -> BaseClient:
    """One client per array per worker process: connecting costs more than writing a block."""
    return from_uri(uri, api_key=api_key)


def _local_zarr(path: str) -> zarr.Array | None:
    """The array's Zarr directory opened for writing (each chunk on disk when written), or
    None where this process cannot see it."""
    try:
        made = (Path(path) / "zarr.json").stat()
    except OSError:
        return None
    return _open_local_zarr(path, made.st_ino, made.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _open_local_zarr(path: str, inode: int, mtime_ns: int) -> zarr.Array:
    """One open array per worker process and version of its ``zarr.json``: an array made
    anew at the same path (a run processed again, with other blocks or frames) is opened
    anew, not written with the old one's shape and chunks."""
    return open_for_writing(path)
