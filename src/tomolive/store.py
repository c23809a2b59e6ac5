"""Every byte in and out of Tiled: scan containers, volume arrays, status, queries.

Layout (DESIGN.md)::

    processed/<raw uid>/      container; metadata: sample, scan_id, raw_uid, status, provenance
        recon                 3D float32 (z, y, x), written block by block by Dask workers
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from tiled.client import from_uri
from tiled.client.base import BaseClient
from tiled.queries import Key
from tiled.structures.array import ArrayStructure, BuiltinDtype
from tiled.structures.core import StructureFamily
from tiled.structures.data_source import DataSource

PROCESSED = "processed"
Status = Literal["running", "complete", "failed", "aborted"]
STATUSES = ("running", "complete", "failed", "aborted")


def connect(uri: str, api_key: str | None = None) -> BaseClient:
    """A Tiled client for ``uri`` (the server root, or any node below it)."""
    return from_uri(uri, api_key=api_key)


def processed_root(client: BaseClient) -> BaseClient:
    """The ``processed`` container, created on first use."""
    if PROCESSED not in client:
        client.create_container(PROCESSED, metadata={"description": "tomolive results"})
    return client[PROCESSED]


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars/arrays and paths turned into plain JSON types."""
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def now() -> str:
    """The current UTC time, ISO 8601."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class VolumeTarget:
    """What a Dask worker needs to write blocks of one Tiled array: picklable, no client."""

    uri: str
    api_key: str | None
    rows_per_block: int

    def write_block(self, index: int, block: np.ndarray) -> None:
        """Write rows ``[index * rows_per_block, ...)`` of the volume."""
        array_client = _array_client(self.uri, self.api_key)
        array_client.write_block(np.ascontiguousarray(block), block=(index, 0, 0))


@functools.lru_cache(maxsize=8)
def _array_client(uri: str, api_key: str | None) -> BaseClient:
    """One client per array per worker process: connecting costs more than writing a block."""
    return from_uri(uri, api_key=api_key)


class ScanRecord:
    """The ``processed/<raw uid>`` container of one scan and its status."""

    def __init__(self, node: BaseClient, api_key: str | None):
        self.node = node
        self.api_key = api_key

    @classmethod
    def create(
        cls, client: BaseClient, raw_uid: str, metadata: dict, api_key: str | None = None
    ) -> ScanRecord:
        """Create (or reset, when re-processing) the container with status ``running``."""
        root = processed_root(client)
        if raw_uid in root:
            root[raw_uid].delete(recursive=True)
        md = {**jsonable(metadata), "raw_uid": raw_uid, "status": "running", "created": now()}
        node = root.create_container(raw_uid, metadata=md)
        return cls(node, api_key)

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
        return VolumeTarget(array_client.uri, self.api_key, rows_per_block)


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
