"""Results kept on local disk while Tiled is unreachable, and their later upload.

When the server stays down or stalled longer than the pipeline's patience, a scan's
result is not dropped: it is written here, in the same layout Tiled would hold, and
``tomolive upload-outbox`` (or :func:`upload`) sends it once the server is back::

    <outbox>/<raw uid>/
        record.json        the container metadata (status, reason, provenance, ...)
        recon.zarr         each volume, same chunks as in Tiled, its metadata in the attrs
        preview.zarr       the live preview, if one was written here
        peaks.parquet      each table (Bragg peaks), its metadata in peaks.parquet.json
    <outbox>/raw/<uid prefix>.jsonl   raw runs TiledWriter could not write (see tomolive.callbacks.raw_backup)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from tiled.client.base import BaseClient

from ..errors import BadInputError, MissingDataError
from .metadata import jsonable, now
from .protocol import Status, check_status
from .queries import versions
from .tiled_result import TiledResult
from .volume import VOLUME_COMPRESSORS, VolumeTarget

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)
RECORD_FILE = "record.json"
PREVIEW = "preview"
TABLE_SUFFIX = ".parquet"


def default_outbox() -> Path:
    """``$TOMOLIVE_OUTBOX``, else ``$XDG_DATA_HOME/tomolive/outbox`` (``~/.local/share/...``).

    Not the temp dir: what waits here is a result that exists nowhere else.
    """
    if os.environ.get("TOMOLIVE_OUTBOX"):
        return Path(os.environ["TOMOLIVE_OUTBOX"])
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data_home / "tomolive" / "outbox"


class OutboxResult:
    """One scan's result on local disk: a :class:`~tomolive.store.ResultStore` with no Tiled URI."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.uid: str = self.path.name
        self.uri: str | None = None
        self.models_client: BaseClient | None = None
        self.previous_parameters: dict[str, Any] | None = None

    @classmethod
    def create(cls, outbox_dir: Path, raw_uid: str, metadata: dict) -> OutboxResult:
        """A fresh entry for ``raw_uid`` (replacing an older one for the same run)."""
        path = Path(outbox_dir) / raw_uid
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        entry = cls(path)
        entry._write_record({**jsonable(metadata), "raw_uid": raw_uid, "status": "running", "created": now()})
        return entry

    def describe(self) -> str:
        """The entry's path and how to upload it, for a log line."""
        return f"{self.path} (tomolive upload-outbox {self.path})"

    def metadata(self) -> dict[str, Any]:
        """The container metadata kept in ``record.json``."""
        record = self.path / RECORD_FILE
        if not record.is_file():
            raise MissingDataError(f"{self.path} is not a tomolive outbox entry: it has no {RECORD_FILE}.")
        return json.loads(record.read_text())

    def _write_record(self, metadata: dict) -> None:
        tmp = self.path / (RECORD_FILE + ".tmp")
        tmp.write_text(json.dumps(metadata, indent=1))
        tmp.replace(self.path / RECORD_FILE)  # atomic: never a half-written record

    def update(self, **metadata: Any) -> None:
        """Merge top-level metadata keys into ``record.json``."""
        self._write_record({**self.metadata(), **jsonable(metadata)})

    def set_status(self, status: Status, **metadata: Any) -> None:
        """Set ``status`` (one of :data:`~tomolive.store.STATUSES`), stamp ``updated``, merge ``metadata``."""
        self.update(status=check_status(status), updated=now(), **metadata)

    def new_volume(
        self,
        key: str,
        shape: tuple[int, ...],
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

    def write_preview(self, image: np.ndarray | None, metadata: dict) -> None:
        """Keep the preview as ``preview.zarr`` (one chunk), so :func:`upload` sends it; with
        ``image`` None, its metadata only."""
        path = self.path / f"{PREVIEW}.zarr"
        if image is not None:
            image = np.ascontiguousarray(image, dtype=np.float32)
            array = zarr.create_array(store=str(path), shape=image.shape, dtype=image.dtype, overwrite=True)
            array[...] = image
        elif not path.is_dir():
            raise BadInputError("write_preview: no preview image yet, so one must be given.")
        zarr.open_array(str(path), mode="r+").attrs.update(jsonable(metadata))

    def write_table(self, key: str, table: pd.DataFrame, metadata: dict | None = None) -> None:
        """Keep ``table`` as ``<key>.parquet`` and its metadata beside it, so :func:`upload` sends it."""
        if not key:
            raise BadInputError(f"write_table needs a child's key; got {key!r}")
        path = self.path / f"{key}{TABLE_SUFFIX}"
        partial = path.with_name(path.name + ".partial")
        table.to_parquet(partial, index=False)
        (self.path / f"{key}{TABLE_SUFFIX}.json").write_text(json.dumps(jsonable(metadata or {})))
        partial.replace(path)  # the table appears whole or not at all

    def remove(self, key: str) -> None:
        """Delete the volume or table ``key`` and its data."""
        if not key:
            raise BadInputError(f"remove needs a child's key; got {key!r}")
        table = self.path / f"{key}{TABLE_SUFFIX}"
        if table.is_file():
            table.unlink()
            (self.path / f"{key}{TABLE_SUFFIX}.json").unlink(missing_ok=True)
        else:
            shutil.rmtree(self.path / f"{key}.zarr")

    def __contains__(self, key: str) -> bool:
        return (self.path / f"{key}.zarr").is_dir() or (self.path / f"{key}{TABLE_SUFFIX}").is_file()

    def tables(self) -> dict[str, tuple[pd.DataFrame, dict[str, Any]]]:
        """Every table kept here, by key, with its metadata."""
        import pandas as pd

        out = {}
        for path in sorted(self.path.glob(f"*{TABLE_SUFFIX}")):
            meta = path.with_name(path.name + ".json")
            metadata = json.loads(meta.read_text()) if meta.is_file() else {}
            out[path.name.removesuffix(TABLE_SUFFIX)] = (pd.read_parquet(path), metadata)
        return out

    def volumes(self) -> dict[str, zarr.Array]:
        """Every array kept here (volumes and preview), by key."""
        return {
            p.name.removesuffix(".zarr"): zarr.open_array(str(p), mode="r") for p in sorted(self.path.glob("*.zarr"))
        }


def pending(outbox: Path) -> list[OutboxResult]:
    """Entries waiting in ``outbox``, oldest first."""
    if not Path(outbox).is_dir():
        return []
    entries = [OutboxResult(p) for p in Path(outbox).iterdir() if (p / RECORD_FILE).is_file()]
    return sorted(entries, key=lambda e: (e.path / RECORD_FILE).stat().st_mtime)


def _supersede_running(client: BaseClient, raw_uid: str, newest: str) -> None:
    """Mark earlier versions that a dead server left ``running`` as failed: the upload replaces them."""
    for key, node in versions(client, raw_uid):
        if key != newest and node.metadata.get("status") == "running":
            reason = f"superseded by processed/{newest}, uploaded from the outbox"
            node.update_metadata(metadata={"status": "failed", "reason": reason, "updated": now()}, drop_revision=True)


def upload(entry: OutboxResult, client: BaseClient, api_key: str | None = None) -> str:
    """Send ``entry`` to Tiled, check it arrived whole, then delete it locally; return its URI.

    The container is created ``running`` and only marked with the entry's own status once
    every array is written and reads back with the right shape and last slice.
    """
    metadata = entry.metadata()
    status = check_status(metadata.pop("status"))
    record = TiledResult.create(client, entry.uid, metadata, api_key, new_version=True)
    for key, local in entry.volumes().items():
        if key == PREVIEW:
            record.write_preview(np.asarray(local[...]), dict(local.attrs))
        else:
            rows = local.chunks[0]
            target = record.new_volume(key, tuple(local.shape), rows, local.dtype, metadata=dict(local.attrs))
            for index, start in enumerate(range(0, local.shape[0], rows)):
                target.write_block(index, np.asarray(local[start : start + rows]))
        stored = record.node[key]
        if tuple(stored.shape) != local.shape or not np.array_equal(stored[-1], local[-1]):
            raise MissingDataError(f"upload of {entry.path / key}.zarr did not read back intact; kept locally.")
    for key, (table, table_metadata) in entry.tables().items():
        record.write_table(key, table, table_metadata)
        if len(record.node[key].read()) != len(table):
            raise MissingDataError(f"upload of table {entry.path / key} did not read back intact; kept locally.")
    kept = {k: v for k, v in metadata.items() if k not in ("created", "updated", "raw_uid")}
    record.set_status(status, **kept, uploaded={"from": str(entry.path), "at": now()})
    _supersede_running(client, entry.uid, str(record.uid))
    shutil.rmtree(entry.path)
    logger.info("uploaded %s to %s", entry.path, record.uri)
    return str(record.uri)
