"""A Zarr store whose chunk writes are on disk, and out of memory, when they return.

Reconstructed volumes are written once, block by block, and read back later, mostly
from disk: a 2048^3 float32 volume is 32 GiB. Through the page cache, each block would
stay in memory as a dirty page until the kernel writes it back, pushing out the spool the
workers are reading, and a block reported written could still be lost in a crash.
:class:`SyncedLocalStore` writes each chunk like Zarr's ``LocalStore`` (temporary file,
then rename), but flushes it to disk and drops it from the page cache before the rename.

Measured on a 2-vCPU cloud VM writing 48 chunks of 14 MB to fresh files: 53-60 ms per
chunk through the page cache (all of it kernel time, filling pages the hypervisor had
not yet backed), 11-13 ms with the flush, whose freed pages the next chunk reuses.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import zarr
from zarr.core.buffer import Buffer
from zarr.storage import LocalStore

_sync_data = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync


def write_synced(path: Path, data: bytes | memoryview) -> int:
    """Write ``data`` to ``path`` atomically, flushed to disk and dropped from the page cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with partial.open("wb") as f:
            written = f.write(data)
            f.flush()
            _sync_data(f.fileno())
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return written


class SyncedLocalStore(LocalStore):
    """Zarr's ``LocalStore``, with every ``set`` done by :func:`write_synced`."""

    async def set(self, key: str, value: Buffer) -> None:
        """Store ``value`` at ``key``, on disk when this returns."""
        if not self._is_open:
            await self._open()
        self._check_writable()
        if not isinstance(value, Buffer):
            raise TypeError(f"SyncedLocalStore.set: value must be a zarr Buffer; got {type(value).__name__}")
        await asyncio.to_thread(write_synced, self.root / key, value.as_buffer_like())


def open_for_writing(path: str | Path) -> zarr.Array:
    """The Zarr array at ``path``, for writing whole blocks that land on disk when written.

    Reconstructed blocks are never all fill value, so Zarr's check for empty chunks (a
    pass over every block, a third of a write's CPU time) is skipped.
    """
    return zarr.open_array(SyncedLocalStore(path), mode="r+").with_config({"write_empty_chunks": True})
