"""Results kept on local disk while Tiled is unreachable, and their later upload.

When the server stays down or stalled longer than the pipeline's patience, a scan's
result is not dropped: it is written here, in the same layout Tiled would hold, and
``tomolive upload-outbox`` (or :func:`upload`) sends it once the server is back::

    <outbox>/<raw uid>/
        record.json        the container metadata (status, reason, provenance, ...)
        recon.zarr         each volume, same chunks as in Tiled, its metadata in the attrs
    <outbox>/raw/<uid prefix>.jsonl   raw runs TiledWriter could not write (see tomolive.callbacks.raw_backup)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from tiled.client.base import BaseClient

from .errors import MissingDataError
from .store import VOLUME_COMPRESSORS, ScanRecord, VolumeTarget, jsonable, now

logger = logging.getLogger(__name__)
RECORD_FILE = "record.json"


def default_outbox() -> Path:
    """``$TOMOLIVE_OUTBOX``, else ``$XDG_DATA_HOME/tomolive/outbox`` (``~/.local/share/...``).

    Not the temp dir: what waits here is a result that exists nowhere else.
    """
    if os.environ.get("TOMOLIVE_OUTBOX"):
        return Path(os.environ["TOMOLIVE_OUTBOX"])
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data_home / "tomolive" / "outbox"


class OutboxEntry:
    """One scan's result on local disk; quacks like :class:`~tomolive.store.ScanRecord`."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def create(cls, outbox: Path, raw_uid: str, metadata: dict) -> OutboxEntry:
        """A fresh entry for ``raw_uid`` (replacing an older one for the same run)."""
        path = Path(outbox) / raw_uid
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        entry = cls(path)
        entry._write_record({**jsonable(metadata), "raw_uid": raw_uid, "status": "running", "created": now()})
        return entry

    @property
    def uid(self) -> str:
        return self.path.name

    def metadata(self) -> dict[str, Any]:
        record = self.path / RECORD_FILE
        if not record.is_file():
            raise MissingDataError(f"{self.path} is not a tomolive outbox entry: it has no {RECORD_FILE}.")
        return json.loads(record.read_text())

    def _write_record(self, metadata: dict) -> None:
        tmp = self.path / (RECORD_FILE + ".tmp")
        tmp.write_text(json.dumps(metadata, indent=1))
        tmp.replace(self.path / RECORD_FILE)  # atomic: never a half-written record

    def update(self, **metadata: Any) -> None:
        self._write_record({**self.metadata(), **jsonable(metadata)})

    def set_status(self, status: str, **metadata: Any) -> None:
        self.update(status=status, updated=now(), **metadata)

    def new_volume(
        self,
        key: str,
        shape: tuple[int, int, int],
        rows_per_block: int,
        dtype: np.dtype = np.dtype(np.float32),
        metadata: dict | None = None,
    ) -> VolumeTarget:
        """A local Zarr volume chunked like its Tiled twin; workers write it directly."""
        path = self.path / f"{key}.zarr"
        array = zarr.create_array(
            store=str(path),
            shape=shape,
            chunks=(rows_per_block, *shape[1:]),
            dtype=dtype,
            fill_value=0,
            compressors=VOLUME_COMPRESSORS,
            overwrite=True,
        )
        array.attrs.update(jsonable(metadata or {}))
        return VolumeTarget("", None, rows_per_block, str(path))

    def volumes(self) -> dict[str, zarr.Array]:
        return {
            p.name.removesuffix(".zarr"): zarr.open_array(str(p), mode="r") for p in sorted(self.path.glob("*.zarr"))
        }

    def describe(self) -> str:
        return f"{self.path} (tomolive upload-outbox {self.path})"


def pending(outbox: Path) -> list[OutboxEntry]:
    """Entries waiting in ``outbox``, oldest first."""
    if not Path(outbox).is_dir():
        return []
    entries = [OutboxEntry(p) for p in Path(outbox).iterdir() if (p / RECORD_FILE).is_file()]
    return sorted(entries, key=lambda e: (e.path / RECORD_FILE).stat().st_mtime)


def upload(entry: OutboxEntry, client: BaseClient, api_key: str | None = None) -> str:
    """Send ``entry`` to Tiled, check it arrived whole, then delete it locally; return its URI.

    The container is created ``running`` and only marked with the entry's own status once
    every volume is written and reads back with the right shape and last slice.
    """
    metadata = entry.metadata()
    status = metadata.pop("status")
    record = ScanRecord.create(client, entry.uid, metadata, api_key)
    for key, local in entry.volumes().items():
        rows = local.chunks[0]
        target = record.new_volume(key, local.shape, rows, local.dtype, metadata=dict(local.attrs))
        for index, start in enumerate(range(0, local.shape[0], rows)):
            target.write_block(index, local[start : start + rows])
        stored = record.node[key]
        if tuple(stored.shape) != local.shape or not np.array_equal(stored[-1], local[-1]):
            raise MissingDataError(f"upload of {entry.path / key}.zarr did not read back intact; kept locally.")
    kept = {k: v for k, v in metadata.items() if k not in ("created", "updated", "raw_uid")}
    record.set_status(status, **kept, uploaded={"from": str(entry.path), "at": now()})
    shutil.rmtree(entry.path)
    logger.info("uploaded %s to %s", entry.path, record.node.uri)
    return record.node.uri
