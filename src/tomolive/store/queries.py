"""Finding results: processed scans by uid or prefix, and raw runs and their results both ways.

Raw and processed are linked without touching the raw run: processed metadata names the
raw run (``raw_uid``, ``links.raw``), and :func:`processed_for` searches ``raw_uid``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tiled.client.base import BaseClient
from tiled.client.container import Container
from tiled.queries import Key, Like

from ..errors import BadInputError, MissingDataError
from .client import PROCESSED, processed_root, raw_path


def scan_rows(
    client: BaseClient,
    *,
    sample: str | None = None,
    status: str | None = None,
    since: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Summary rows of processed scans, newest first (for ``tomolive ls``).

    The filters run on the server as Tiled queries (``sample`` and ``status`` equal, ``created``
    at or after the ISO date ``since``) and the server sorts by ``created``, newest first, so only
    ``limit`` containers travel. Containers without ``status`` or ``recon`` (an interrupted or
    foreign one) are listed with blanks, never skipped or fatal.
    """
    if PROCESSED not in client:
        return []
    found = client[PROCESSED]
    if sample is not None:
        found = found.search(Key("sample") == sample)
    if status is not None:
        found = found.search(Key("status") == status)
    if since is not None:
        found = found.search(Key("created") >= since)
    page = list(found.sort(("created", -1)).items().head(limit))  # one request for the page
    with ThreadPoolExecutor(max_workers=16) as pool:  # a request per recon shape: overlap them
        shapes = list(pool.map(_recon_shape, [node for _, node in page]))
    rows = []
    for (uid, node), shape in zip(page, shapes, strict=True):
        md = node.metadata
        rows.append(
            {
                "uid": uid,
                "sample": md.get("sample"),
                "scan_id": md.get("scan_id"),
                "status": md.get("status"),
                "shape": shape,
                "when": md.get("updated") or md.get("created"),
                "reason": md.get("reason"),
            }
        )
    return rows


def _recon_shape(node: BaseClient) -> tuple[int, ...] | None:
    """The shape of a processed container's ``recon`` array; None when it has none (yet)."""
    if isinstance(node.metadata.get("recon_shape"), list):  # written with the array since issue 26
        return tuple(int(n) for n in node.metadata["recon_shape"])
    if not isinstance(node, Container):
        return None
    if (node.item["attributes"].get("structure") or {}).get("count") == 0:  # known from the listing: no request
        return None
    try:
        shape = getattr(node["recon"], "shape", None)
    except KeyError:
        return None
    return tuple(shape) if shape else None


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


def versions(client: BaseClient, raw_uid: str) -> list[tuple[str, BaseClient]]:
    """Every processed result of raw run ``raw_uid`` as ``(key, node)``, oldest version first."""
    found = list(processed_for(client, raw_uid).items())
    return sorted(found, key=lambda item: int(item[1].metadata.get("version", 1)))


def newest_version(client: BaseClient, raw_uid: str) -> tuple[str, BaseClient]:
    """The newest processed result of raw run ``raw_uid`` as ``(key, node)``."""
    found = versions(client, raw_uid)
    if not found:
        raise MissingDataError(f"raw run {raw_uid!r} has no processed result")
    return found[-1]


def find_scan(client: BaseClient, uid: str) -> BaseClient:
    """The newest processed result of the raw run whose uid is ``uid`` or starts with it (a unique prefix).

    Raises MissingDataError when nothing matches and BadInputError, listing the
    candidates, when the prefix is ambiguous.
    """
    root = processed_root(client)
    if uid in root:  # a raw uid (its newest result), or the key of one version
        node = root[uid]
        return newest_version(client, uid)[1] if node.metadata.get("raw_uid") == uid else node
    if not uid or any(c in uid for c in "%_\\"):
        raise BadInputError(f"uid {uid!r}: expected a uid or a prefix of one (no %, _ or \\)")
    matches = root.search(Like("raw_uid", f"{uid}%")).items().head(10)
    if not matches:
        raise MissingDataError(f"no processed scan has a uid starting with {uid!r} in {root.uri}")
    if len({node.metadata.get("raw_uid") for _, node in matches}) == 1:  # versions of one run
        return newest_version(client, matches[0][1].metadata["raw_uid"])[1]
    if len(matches) > 1:
        listed = "\n".join(
            f"  {key}  sample={node.metadata.get('sample')!r} status={node.metadata.get('status')}"
            for key, node in matches
        )
        raise BadInputError(f"uid prefix {uid!r} matches several processed scans; give more characters:\n{listed}")
    return matches[0][1]
