"""One API-key lookup per request in the Tiled server, instead of three or four.

Tiled checks an API key three or four times for every request: for its scopes (twice on
routes that ask for scopes twice), for its principal (which also records the key's latest
activity) and for its access tags.
Each is the same database query, loading the key's principal with its roles, identities
and sessions. On a 2-core machine that was most of a request's server CPU: a metadata
read cost 75-93 ms of it and a metadata PATCH 65-84 ms; with the lookups shared, 33-40 and
35-38 ms (measured on the embedded SQLite profile). The server shares the machine with
the Dask workers on a beamline workstation, so every request's CPU is taken from them.

:func:`install` wraps Tiled's lookup so that a key found valid is reused by the later
lookups of the same request (the same asyncio task: Starlette solves a request's
dependencies in one task), and never for longer than ``MAX_AGE_S``. Each lookup that
reuses the key attaches it to its own database session, so the key's latest activity is
still written. A key unknown, expired or revoked is looked up again by every request (only
valid keys are kept), so revoking a key takes effect on the next request, as in Tiled. One
difference remains: a key revoked in the milliseconds between one request's lookups is
refused only by its next request (the request fails, with 500, when it writes the key's
latest activity). A key that expires meanwhile is looked up again.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import weakref
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy
from sqlalchemy.exc import InvalidRequestError

MAX_AGE_S = 1.0
"""Longest a looked-up key is reused, even within one long-lived task (a websocket)."""

Lookup = Callable[[Any, bytes], Awaitable[Any]]


def shared_per_task(lookup: Lookup, max_age_s: float = MAX_AGE_S) -> Lookup:
    """``lookup(db, secret)`` whose valid results are reused by the same asyncio task, for
    the same database, for ``max_age_s`` seconds, each time attached to the caller's ``db``
    session; a key that has expired, or whose row was deleted or changed, is looked up anew."""
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


def install() -> None:
    """Share API-key lookups within a request in this process's Tiled server (call before it starts)."""
    import tiled.authn_database.core as core
    import tiled.server.authentication as authentication

    if authentication.lookup_valid_api_key is core.lookup_valid_api_key:  # not yet installed
        authentication.lookup_valid_api_key = shared_per_task(core.lookup_valid_api_key)
