"""Reaching Tiled: a client, patience with a server that is down, the ``processed`` and ``raw`` roots.

Layout (DESIGN.md)::

    processed/<raw uid>/      container; metadata: sample, scan_id, raw_uid, status, provenance,
                              links: {"raw": "raw/<raw uid>"}
    raw/<raw uid>             the Bluesky run (TiledWriter); never modified by tomolive
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TypeVar

import dask
import httpx
from tiled.client import from_uri
from tiled.client.base import BaseClient
from tiled.structures.core import Spec

logger = logging.getLogger(__name__)

PROCESSED = "processed"
RAW = "raw"
T = TypeVar("T")


def connect(uri: str, api_key: str | None = None, timeout_s: float = 30.0) -> BaseClient:
    """A Tiled client for ``uri`` (the server root, or any node below it).

    ``timeout_s`` bounds each request's wait for the server (connecting: at most 5 s). A server
    that refuses connections fails at once (``httpx.ConnectError``) instead of after the Tiled
    client's own retries (about 25 s); :func:`patiently` is the place for patience.
    """
    _reachable(uri, min(5.0, timeout_s))
    return from_uri(uri, api_key=api_key, timeout=httpx.Timeout(timeout_s, connect=min(5.0, timeout_s)))


def _reachable(uri: str, timeout_s: float) -> None:
    """Raise ``httpx.ConnectError`` unless something accepts TCP connections at ``uri``'s host and port."""
    url = httpx.URL(uri)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.host, port), timeout=timeout_s).close()
    except OSError as err:
        raise httpx.ConnectError(f"cannot connect to {url.host}:{port}: {err}") from err


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


def raw_path(raw_uid: str) -> str:
    """Path from the server root to the raw run ``raw_uid`` (where TiledWriter puts it)."""
    return f"{RAW}/{raw_uid}"
