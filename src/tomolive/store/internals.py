"""Every place tomolive relies on Tiled's or Zarr's internals, and why; nothing else does.

Each assumption has a contract test in ``tests/test_store_internals.py`` (or
``tests/test_key_lookups.py``) that fails, naming the assumption, on an upgrade that breaks it:

- Tiled stores a writable array as a Zarr v3 directory (a ``file://`` asset) and opens its
  ``zarr.json`` on every request, keeping no codec in its catalog: workers that see the
  directory write chunks there (:func:`writable_zarr_path`), and :func:`set_compressors`
  gives an empty array another codec (Tiled's ``init_storage`` takes none).
- Zarr's ``LocalStore`` writes chunks through ``set``/``set_sync`` and opens itself through
  ``_is_open``/``_open``/``_ensure_open_sync``: :class:`SyncedLocalStore` overrides them.
- Tiled's server looks API keys up through ``tiled.server.authentication.lookup_valid_api_key``
  by module-global name: :func:`share_api_key_lookups` replaces it.

Measurements behind each: docs/measurements/store.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import sqlalchemy
import zarr
from sqlalchemy.exc import InvalidRequestError
from tiled.client.base import BaseClient
from zarr.abc.codec import BytesBytesCodec
from zarr.core.buffer import Buffer
from zarr.core.metadata import ArrayV3Metadata
from zarr.storage import LocalStore, MemoryStore

logger = logging.getLogger(__name__)

sync_data = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync


def writable_zarr_path(array_client: BaseClient) -> str | None:
    """Local path of a server-managed Zarr array (a ``file://`` directory asset), else None."""
    for source in array_client.data_sources():
        if source.management != "writable" or source.mimetype != "application/x-zarr":
            continue
        for asset in source.assets:
            url = urlparse(asset.data_uri)
            if url.scheme == "file" and asset.is_directory:
                return url.path
    return None


def set_compressors(zarr_path: str, compressors: Sequence[BytesBytesCodec]) -> bool:
    """Give the empty Zarr v3 array at ``zarr_path`` these compressors; True if done.

    Tiled's ``init_storage`` makes writable arrays with Zarr's default codec and takes no other.

    Rewriting ``zarr.json`` before any chunk exists changes how every block is stored,
    whoever writes it (workers directly, or the Tiled server over HTTP). An array that
    holds chunks is left as it is, and so is one this process may not rewrite (a warning
    says so): it keeps Zarr's default.
    """
    path = Path(zarr_path)
    try:
        array = zarr.open_array(str(path), mode="r")
        if array.nchunks_initialized or not isinstance(array.metadata, ArrayV3Metadata):
            return False
        template = zarr.create_array(MemoryStore(), shape=(1,), dtype=array.dtype, compressors=list(compressors))
        meta = json.loads((path / "zarr.json").read_text())
        meta["codecs"] = [
            *(c.to_dict() for c in array.metadata.codecs if not isinstance(c, BytesBytesCodec)),
            *(c.to_dict() for c in template.compressors if isinstance(c, BytesBytesCodec)),  # typesize set
        ]
        write_synced(path / "zarr.json", json.dumps(meta, indent=2).encode())
    except OSError as err:
        logger.warning("tomolive: %s keeps Zarr's default codec: %s", zarr_path, err)
        return False
    return True


def write_synced(path: Path, data: bytes | bytearray | memoryview) -> int:
    """Write ``data`` to ``path`` atomically, its bytes flushed to disk and dropped from the page cache.

    Volumes are far larger than memory: through the page cache each block would stay as
    dirty pages, pushing out the spool the workers read. After a power cut a file written
    just before may be missing, but never half-written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with partial.open("wb") as f:
            written = f.write(data)
            f.flush()
            sync_data(f.fileno())
            _drop_from_page_cache(f.fileno())
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return written


def _drop_from_page_cache(fd: int) -> None:
    """Ask the kernel to drop a flushed file's pages; only a hint, so a refusal is ignored."""
    if hasattr(os, "posix_fadvise"):
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass


class SyncedLocalStore(LocalStore):
    """Zarr's ``LocalStore``, with ``set`` and ``set_sync`` done by :func:`write_synced`.

    Zarr 3.1 writes chunks through ``set`` (``set_sync`` is its synchronous twin); only
    metadata goes through ``set_if_not_exists``, which stays Zarr's own.
    """

    async def set(self, key: str, value: Buffer) -> None:
        """Store ``value`` at ``key``, flushed to disk when this returns."""
        if not self._is_open:
            await self._open()
        await asyncio.to_thread(write_synced, self._path_for(key, value), value.as_buffer_like())

    def set_sync(self, key: str, value: Buffer) -> None:
        """Store ``value`` at ``key``, flushed to disk when this returns."""
        self._ensure_open_sync()
        write_synced(self._path_for(key, value), value.as_buffer_like())

    def _path_for(self, key: str, value: Buffer) -> Path:
        """The file of ``key``, once the store and ``value`` are checked writable."""
        self._check_writable()
        if not isinstance(key, str) or not isinstance(value, Buffer):
            raise TypeError(
                f"SyncedLocalStore.set: expected a str key and a zarr Buffer; got {type(key).__name__}, "
                f"{type(value).__name__}"
            )
        return self.root / key


def open_for_writing(path: str | Path) -> zarr.Array:
    """The Zarr array at ``path``, for writing whole blocks, each flushed to disk when written.

    Every block is stored, empty or not: Zarr's all-fill-value check costs a third of a
    write's CPU time, for blocks that are almost never empty.
    """
    return zarr.open_array(SyncedLocalStore(path), mode="r+").with_config({"write_empty_chunks": True})


MAX_KEY_AGE_S = 1.0
"""Longest a looked-up API key is reused, even within one long-lived task (a websocket)."""

Lookup = Callable[[Any, bytes], Awaitable[Any]]


def shared_per_task(lookup: Lookup, max_age_s: float = MAX_KEY_AGE_S) -> Lookup:
    """``lookup(db, secret)`` whose valid results are reused by the same asyncio task, for
    the same database, for ``max_age_s`` seconds, each time attached to the caller's ``db``
    session; a key that has expired, or whose row was deleted or changed, is looked up anew.

    Tiled looks a key up three or four times per request (scopes, principal, access tags);
    Starlette solves a request's dependencies in one task, so the task scopes the reuse.
    Only valid keys are kept: a revoked key is refused by the next request.
    """
    found: weakref.WeakKeyDictionary[asyncio.Task, dict[tuple[Any, bytes], tuple[float, Any]]]
    found = weakref.WeakKeyDictionary()

    async def shared_lookup(db: Any, secret: bytes) -> Any:
        task = asyncio.current_task()
        kept = found.setdefault(task, {}) if task is not None else {}
        name = (db.bind, hashlib.sha256(secret).digest())  # never the secret itself
        entry = kept.pop(name, None)
        if entry is not None and time.monotonic() - entry[0] < max_age_s and _reusable(entry[1]):
            try:
                db.add(entry[1])  # so the caller's changes (latest activity) are committed
                kept[name] = entry
                return entry[1]
            except InvalidRequestError:  # still held by a session that is open: look it up anew
                pass
        api_key = await lookup(db, secret)
        if api_key is not None:
            kept[name] = (time.monotonic(), api_key)
        return api_key

    return shared_lookup


def _reusable(api_key: Any) -> bool:
    """Whether a key found valid earlier in this request may stand for a new lookup: not
    expired since, and its row neither deleted nor changed by a session since."""
    state = sqlalchemy.inspect(api_key)
    if state.deleted or state.was_deleted or state.expired_attributes or state.modified:
        return False
    expires = api_key.expiration_time
    return expires is None or expires.replace(tzinfo=UTC) >= datetime.now(UTC)


def share_api_key_lookups() -> None:
    """Share API-key lookups within a request in this process's Tiled server (call before it starts)."""
    import tiled.authn_database.core as core
    import tiled.server.authentication as authentication

    if authentication.lookup_valid_api_key is core.lookup_valid_api_key:  # not yet installed
        authentication.lookup_valid_api_key = shared_per_task(core.lookup_valid_api_key)
