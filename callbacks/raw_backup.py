"""Raw runs kept on local disk when Tiled dies mid-scan, and their later upload.

``RE.subscribe(raw_writer(client, outbox))`` saves each run as ``raw/<uid>`` through
bluesky-tiled-plugins' ``TiledWriter``. If the server fails during a run, the writer
abandons Tiled for that run and writes all of its documents (from the start document
on) to ``<outbox>/raw/<uid prefix>.jsonl``, one ``{"name": ..., "doc": ...}`` per line;
``tomolive upload-outbox`` replays them into ``raw/<uid>`` with :func:`replay_raw`.

TiledWriter's own ``backup_directory`` writer cannot encode numpy arrays (inline detector
images) and leaves a half-written line when it fails, so the backup here is
:class:`RawBackup`, handed over through TiledWriter's documented ``backup_dictionary``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
from bluesky_tiled_plugins import TiledWriter
from tiled.client.base import BaseClient

from tomolive.errors import MissingDataError
from tomolive.store import raw_root, to_json

logger = logging.getLogger(__name__)
RAW_BACKUP = "raw"


def raw_backup_dir(outbox: Path) -> Path:
    """Where raw runs that did not reach Tiled wait: ``<outbox>/raw``."""
    return Path(outbox) / RAW_BACKUP


class _JSONLinesFile:
    """The ``list`` TiledWriter's JSONDictWriter appends a run's documents to."""

    def __init__(self, path: Path):
        self.path = path

    def append(self, item: dict[str, Any]) -> None:
        line = to_json(item) + "\n"  # encoded whole first: a failure never leaves half a line
        with open(self.path, "a") as file:
            file.write(line)


class RawBackup:
    """TiledWriter's ``backup_dictionary``, kept as one JSON-lines file per run in ``directory``.

    Only what JSONDictWriter uses is provided: ``key in backup``, ``backup[key] = []`` and
    ``backup[key].append(item)``. Arrays are written as nested lists; the descriptor's
    ``dtype_numpy`` restores their type on replay.
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.jsonl"

    def __contains__(self, key: str) -> bool:
        return self._path(key).exists()

    def __setitem__(self, key: str, items: Iterable[dict[str, Any]]) -> None:
        self._path(key).touch()
        for item in items:
            self[key].append(item)

    def __getitem__(self, key: str) -> _JSONLinesFile:
        return _JSONLinesFile(self._path(key))


def raw_writer(client: BaseClient, outbox: Path, **kwargs: Any) -> TiledWriter:
    """A ``TiledWriter`` into ``raw/`` whose runs fall back to ``<outbox>/raw`` if Tiled fails.

    TiledWriter keeps each run's documents in memory until its stop, to back the whole run
    up: with inline frames, the whole scan (docs/faults.md).
    """
    return TiledWriter(raw_root(client), backup_dictionary=RawBackup(raw_backup_dir(outbox)), **kwargs)


def pending_raw(outbox: Path) -> list[Path]:
    """Raw-run backups waiting in ``outbox``, oldest first."""
    directory = raw_backup_dir(outbox)
    if not directory.is_dir():
        return []
    return sorted(directory.glob("*.jsonl"), key=lambda p: p.stat().st_mtime)


def read_backup(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """The ``(name, doc)`` pairs of one backup file; it must hold a whole run, start to stop."""
    try:
        docs = [(item["name"], item["doc"]) for item in map(json.loads, Path(path).read_text().splitlines())]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise MissingDataError(f"{path} is not a raw-run backup (JSON lines of name/doc): {err}") from err
    names = [name for name, _ in docs]
    if not names or names[0] != "start" or names.count("start") != 1:
        raise MissingDataError(f"{path} must begin with the run's one start document; it has {names[:1]}.")
    if names[-1] != "stop":
        raise MissingDataError(
            f"{path} has no stop document: its run is still going or was cut off, so it is kept, not uploaded."
        )
    return docs


def _events_per_stream(docs: list[tuple[str, dict[str, Any]]]) -> dict[str, int]:
    streams = {doc["uid"]: doc.get("name", "primary") for name, doc in docs if name == "descriptor"}
    counts = dict.fromkeys(streams.values(), 0)
    for name, doc in docs:
        if name == "event":
            counts[streams[doc["descriptor"]]] += 1
        elif name == "event_page":
            counts[streams[doc["descriptor"]]] += len(doc["seq_num"])
    return counts


def _replace_partial_copy(node: BaseClient, uid: str) -> None:
    """Delete the partial copy of ``raw/<uid>`` a dead server left: an operator's act (admin key)."""
    try:
        node.delete(recursive=True, external_only=False)
    except httpx.HTTPStatusError as err:
        if err.response.status_code not in (401, 403):
            raise
        raise PermissionError(
            f"raw/{uid} holds a partial copy that a dead server left; replacing it deletes data, which the "
            'writer key may not: run tomolive upload-outbox --api-key "$(cat DATA_DIR/admin_key)"'
        ) from None


def replay_raw(path: Path, client: BaseClient, **kwargs: Any) -> str:
    """Write the run backed up in ``path`` to ``raw/<uid>``, then delete ``path``; return its URI.

    Idempotent: a run already in Tiled with its stop document is left as it is. A partial
    copy (no stop: the server died while writing it) is replaced by the whole run from the
    backup, so raw data ends up as the RunEngine produced it. The backup is deleted only
    after the run reads back with its stop document and the number of events the stop
    document declares.
    """
    docs = read_backup(path)
    uid, stop = docs[0][1]["uid"], docs[-1][1]
    counted, declared = _events_per_stream(docs), stop.get("num_events")
    if declared is not None and counted != declared:
        raise MissingDataError(f"{path} holds {counted} events but its stop document declares {stop['num_events']}.")
    root = raw_root(client)
    if uid in root and "stop" not in root[uid].metadata:
        _replace_partial_copy(root[uid], uid)
    if uid not in root:
        writer = TiledWriter(root, **kwargs)
        for name, doc in docs:
            writer(name, doc)
    if root[uid].metadata.get("stop", {}).get("uid") != stop["uid"]:
        raise MissingDataError(f"replay of {path} did not leave raw/{uid} with its stop document; kept.")
    Path(path).unlink()
    logger.info("uploaded raw run %s from %s", uid, path)
    return root[uid].uri
