"""Every byte in and out of Tiled: scan containers, volume arrays, status, queries.

Layout (DESIGN.md)::

    processed/<raw uid>/      container; metadata: sample, scan_id, raw_uid, status, provenance,
                              links: {"raw": "raw/<raw uid>"}
        recon                 3D float32 (z, y, x), written block by block by Dask workers
    raw/<raw uid>             the Bluesky run (TiledWriter); never modified by tomolive

Raw and processed are linked both ways without touching the raw run: processed metadata
names the raw run (``raw_uid``, ``links.raw``), and :func:`processed_for` finds the results
of a raw run by searching ``raw_uid``.

Workers that can see the server's storage directory (one machine, or a shared/parallel
file system) write their blocks straight into the array's Zarr chunks; others send them
through Tiled's HTTP API. Both give the same array: the server only registers it.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlparse

import dask
import httpx
import numpy as np
import zarr
from tiled.client import from_uri
from tiled.client.base import BaseClient
from tiled.queries import Key, Like
from tiled.structures.array import ArrayStructure, BuiltinDtype
from tiled.structures.core import Spec, StructureFamily
from tiled.structures.data_source import DataSource
from zarr.abc.codec import BytesBytesCodec
from zarr.codecs import BloscCodec
from zarr.storage import MemoryStore

from .errors import BadInputError, MissingDataError
from .synced import open_for_writing, write_synced

logger = logging.getLogger(__name__)

PROCESSED = "processed"
RAW = "raw"
Status = Literal["running", "complete", "failed", "aborted"]
STATUSES = ("running", "complete", "failed", "aborted")
T = TypeVar("T")


def connect(uri: str, api_key: str | None = None, timeout_s: float = 30.0) -> BaseClient:
    """A Tiled client for ``uri`` (the server root, or any node below it).

    ``timeout_s`` bounds each request's wait for the server (connecting: at most 5 s).
    """
    return from_uri(uri, api_key=api_key, timeout=httpx.Timeout(timeout_s, connect=min(5.0, timeout_s)))


def is_unreachable(err: BaseException) -> bool:
    """True for errors that mean "the server is down, stalled or overloaded", worth retrying."""
    if isinstance(err, httpx.TransportError):
        return True
    if isinstance(err, httpx.HTTPStatusError):
        return err.response.status_code >= 500 or err.response.status_code == 429
    return isinstance(err, (ConnectionError, TimeoutError))


def patiently(call: Callable[[], T], what: str, patience_s: float) -> T:
    """``call()``, retried with back-off while the server is unreachable, for ``patience_s``.

    Other errors (a refused key, a bad request) are raised at once; when patience runs out
    the last unreachable error is raised.
    """
    deadline = time.monotonic() + patience_s
    delay = 0.5
    while True:
        try:
            return call()
        except Exception as err:
            if not is_unreachable(err) or time.monotonic() + delay > deadline:
                raise
            logger.warning("Tiled unreachable while trying to %s (%s); retrying in %.1f s", what, err, delay)
            time.sleep(delay)
            delay = min(2 * delay, 10.0)


def fetched_here() -> AbstractContextManager:
    """A block in which Tiled reads are fetched by this process.

    Tiled's client reads an array through a Dask array's ``compute()``: while a distributed
    client is the process's default scheduler, each read would become a task on that cluster,
    fetched by a worker (slow, and a worker may not reach the server).
    """
    return dask.config.set(scheduler="synchronous")


def processed_root(client: BaseClient) -> BaseClient:
    """The ``processed`` container, created on first use."""
    if PROCESSED not in client:
        client.create_container(PROCESSED, metadata={"description": "tomolive results"})
    return client[PROCESSED]


def raw_root(client: BaseClient) -> BaseClient:
    """The ``raw`` container for bluesky-tiled-plugins' ``TiledWriter``, created on first use.

    ``RE.subscribe(TiledWriter(raw_root(client)))`` saves every run there as ``raw/<uid>``,
    beside its processed result ``processed/<uid>``.
    """
    if RAW not in client:
        client.create_container(
            RAW,
            specs=[Spec("CatalogOfBlueskyRuns", version="3.0")],
            metadata={"description": "raw Bluesky runs (TiledWriter)"},
        )
    return client[RAW]


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars/arrays, paths and mappings turned into plain JSON types."""
    return json.loads(to_json(value))


def to_json(value: Any) -> str:
    """``value`` as JSON text, numpy scalars/arrays, paths and mappings included."""
    return json.dumps(value, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):  # e.g. Tiled's read-only metadata views
        return dict(value)
    return str(value)


def now() -> str:
    """The current UTC time, ISO 8601."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


VOLUME_COMPRESSORS = (BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"),)
"""How tomolive's volumes are compressed: Blosc with bit-shuffle + LZ4, the same algorithm as
the bitshuffle/LZ4 filter of HDF5 detector files.

On a reconstructed 16 x 512 x 512 float32 foam block (one thread), Zarr's default Zstd
takes 94 ms to write and 21 ms to read and keeps 92 % of the bytes; bit-shuffle + LZ4
takes 20 ms and 12.5 ms and keeps 86 %. With Zstd, writing was a third of a block
task's time on the workers (memory-bound work that two workers on two cores slow down).
"""


def use_volume_compressors(zarr_path: str) -> bool:
    """Give the empty Zarr v3 array at ``zarr_path`` :data:`VOLUME_COMPRESSORS`; True if done.

    Tiled makes writable arrays with Zarr's default codec and has no option for another,
    but keeps no codec in its catalog: it opens the array's ``zarr.json`` on each request.
    Replacing that file's compressors before any chunk exists therefore changes how every
    block is stored, whoever writes it (workers directly, or the server over HTTP), and
    nothing else. An array that already holds chunks is left as it is, and so is one this
    process may not rewrite (a warning says so): it keeps Zarr's default.
    """
    path = Path(zarr_path)
    try:
        array = zarr.open_array(str(path), mode="r")
        if array.nchunks_initialized:
            return False
        template = zarr.create_array(MemoryStore(), shape=(1,), dtype=array.dtype, compressors=VOLUME_COMPRESSORS)
        meta = json.loads((path / "zarr.json").read_text())
        meta["codecs"] = [
            *(c.to_dict() for c in array.metadata.codecs if not isinstance(c, BytesBytesCodec)),
            *(c.to_dict() for c in template.metadata.codecs if isinstance(c, BytesBytesCodec)),
        ]
        write_synced(path / "zarr.json", json.dumps(meta, indent=2).encode())
    except OSError as err:
        logger.warning("tomolive: %s keeps Zarr's default codec: %s", zarr_path, err)
        return False
    return True


@dataclass
class VolumeTarget:
    """What a Dask worker needs to write blocks of one Tiled array: picklable, no client.

    ``zarr_path`` is the server's own Zarr directory for the array; a worker that can see
    it writes chunks there directly (no HTTP, no server CPU), any other goes through Tiled.
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
        _array_client(self.uri, self.api_key).write_block(block, block=(index, 0, 0))
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


def _writable_zarr_path(array_client: BaseClient) -> str | None:
    """Local path of a server-managed Zarr array (``file://`` asset), else None."""
    for source in array_client.data_sources():
        if source.management != "writable" or source.mimetype != "application/x-zarr":
            continue
        for asset in source.assets:
            url = urlparse(asset.data_uri)
            if url.scheme == "file" and asset.is_directory:
                return url.path
    return None


class ScanRecord:
    """The ``processed/<raw uid>`` container of one scan and its status."""

    def __init__(self, node: BaseClient, api_key: str | None, models_client: BaseClient | None = None):
        self.node = node
        self.api_key = api_key
        self.models_client = models_client
        self._preview: BaseClient | None = None

    @property
    def uri(self) -> str:
        return self.node.uri

    def describe(self) -> str:
        return self.node.uri

    def __contains__(self, key: str) -> bool:
        return key in self.node

    @classmethod
    def create(cls, client: BaseClient, raw_uid: str, metadata: dict, api_key: str | None = None) -> ScanRecord:
        """Create (or reset, when re-processing) the container with status ``running``."""
        root = processed_root(client)
        if raw_uid in root:
            root[raw_uid].delete(recursive=True, external_only=False)
        md = {
            **jsonable(metadata),
            "raw_uid": raw_uid,
            "links": {"raw": raw_path(raw_uid)},
            "status": "running",
            "created": now(),
        }
        node = root.create_container(raw_uid, metadata=md)
        return cls(node, api_key, client)

    def update(self, **metadata: Any) -> None:
        """Merge top-level metadata keys (no revision kept: progress updates are frequent)."""
        self.node.update_metadata(metadata=jsonable(metadata), drop_revision=True)

    def set_status(self, status: Status, **metadata: Any) -> None:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES!r}; got {status!r}")
        self.update(status=status, updated=now(), **metadata)

    def new_volume(
        self,
        key: str,
        shape: tuple[int, int, int],
        rows_per_block: int,
        dtype: np.dtype = np.dtype(np.float32),
        metadata: dict | None = None,
    ) -> VolumeTarget:
        """Create an empty chunked array node; workers fill it with :meth:`VolumeTarget.write_block`."""
        n_rows = shape[0]
        row_chunks = [rows_per_block] * (n_rows // rows_per_block)
        if n_rows % rows_per_block:
            row_chunks.append(n_rows % rows_per_block)
        structure = ArrayStructure(
            data_type=BuiltinDtype.from_numpy_dtype(np.dtype(dtype)),
            shape=tuple(shape),
            chunks=(tuple(row_chunks), (shape[1],), (shape[2],)),
            dims=("z", "y", "x"),
        )
        array_client = self.node.new(
            StructureFamily.array,
            [DataSource(structure=structure, structure_family=StructureFamily.array)],
            key=key,
            metadata=jsonable(metadata or {}),
        )
        zarr_path = _writable_zarr_path(array_client)
        if zarr_path is not None and (Path(zarr_path) / "zarr.json").is_file():
            use_volume_compressors(zarr_path)
        return VolumeTarget(array_client.uri, self.api_key, rows_per_block, zarr_path)

    def remove(self, key: str) -> None:
        """Delete the child ``key`` and its data."""
        if not key:  # Tiled reads no key as every child
            raise ValueError(f"remove needs a child's key; got {key!r}")
        self.node.delete_contents(key, external_only=False)

    def write_preview(self, image: np.ndarray | None, metadata: dict) -> None:
        """Create or overwrite the ``preview`` array (one chunk), then its metadata; with
        ``image`` None (unchanged since the last call), the metadata only.

        Data first, metadata second: the metadata never claims more angles than the data holds.
        """
        if image is not None:
            image = np.ascontiguousarray(image, dtype=np.float32)
            if self._preview is None:
                structure = ArrayStructure(
                    data_type=BuiltinDtype.from_numpy_dtype(image.dtype),
                    shape=image.shape,
                    chunks=tuple((n,) for n in image.shape),
                    dims=("slice", "y", "x"),
                )
                self._preview = self.node.new(
                    StructureFamily.array,
                    [DataSource(structure=structure, structure_family=StructureFamily.array)],
                    key="preview",
                    metadata=jsonable(metadata),
                )
            self._preview.write_block(image, block=(0,) * image.ndim)
        elif self._preview is None:
            raise BadInputError("write_preview: no preview image yet, so one must be given.")
        self._preview.update_metadata(metadata=jsonable(metadata), drop_revision=True)


def find_scans(client: BaseClient, **equal: Any) -> BaseClient:
    """Processed scans whose metadata keys equal the given values, e.g. ``sample="foam-1"``."""
    results = processed_root(client)
    for key, value in equal.items():
        results = results.search(Key(key) == value)
    return results


def scan_rows(client: BaseClient) -> list[dict[str, Any]]:
    """One summary row per processed scan, newest first (for ``tomolive ls``)."""
    rows = []
    for uid, node in processed_root(client).items():
        md = node.metadata
        shape = node["recon"].shape if "recon" in node else None
        rows.append(
            {
                "uid": uid,
                "sample": md.get("sample"),
                "scan_id": md.get("scan_id"),
                "status": md.get("status"),
                "shape": tuple(shape) if shape else None,
                "when": md.get("updated") or md.get("created"),
                "reason": md.get("reason"),
            }
        )
    return sorted(rows, key=lambda row: row["when"] or "", reverse=True)


def raw_path(raw_uid: str) -> str:
    """Path from the server root to the raw run ``raw_uid`` (where TiledWriter puts it)."""
    return f"{RAW}/{raw_uid}"


def processed_for(client: BaseClient, raw: str | BaseClient) -> BaseClient:
    """The processed results of one raw run, given its uid or its node (``raw/<uid>``).

    A container of search results: ``.keys()``, ``.values()``, or narrow it further with
    ``.search(Key("status") == "complete")``. The raw run itself is only read.
    """
    raw_uid = raw if isinstance(raw, str) else raw.metadata["start"]["uid"]
    return processed_root(client).search(Key("raw_uid") == raw_uid)


def raw_for(client: BaseClient, processed: str | BaseClient) -> BaseClient:
    """The raw Bluesky run a processed result came from, given the result's key or node."""
    node = processed_root(client)[processed] if isinstance(processed, str) else processed
    md = node.metadata
    path = md.get("links", {}).get("raw") or raw_path(md["raw_uid"])
    try:
        return client[path]
    except KeyError:
        source = f" (it was processed from {md['source']})" if md.get("source") else ""
        raise MissingDataError(
            f"processed scan {node.item['id']!r} links to raw run {path!r}, which is not in {client.uri}{source}"
        ) from None


def find_scan(client: BaseClient, uid: str) -> BaseClient:
    """The processed scan whose raw uid is ``uid`` or starts with it (a unique prefix).

    Raises MissingDataError when nothing matches and BadInputError, listing the
    candidates, when the prefix is ambiguous.
    """
    root = processed_root(client)
    if uid in root:
        return root[uid]
    if not uid or any(c in uid for c in "%_\\"):
        raise BadInputError(f"uid {uid!r}: expected a uid or a prefix of one (no %, _ or \\)")
    matches = root.search(Like("raw_uid", f"{uid}%")).items().head(10)
    if not matches:
        raise MissingDataError(f"no processed scan has a uid starting with {uid!r} in {root.uri}")
    if len(matches) > 1:
        listed = "\n".join(
            f"  {key}  sample={node.metadata.get('sample')!r} status={node.metadata.get('status')}"
            for key, node in matches
        )
        raise BadInputError(f"uid prefix {uid!r} matches several processed scans; give more characters:\n{listed}")
    return matches[0][1]
