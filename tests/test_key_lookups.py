"""One API-key lookup per request: reused within a task, never across tasks or past its age."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import inspect
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.orm import make_transient_to_detached
from tiled.authn_database import core
from tiled.authn_database.orm import APIKey
from tiled.server import authentication

from tomolive.server.keys import create_key
from tomolive.store import internals

VALID, UNKNOWN = b"\x01" * 32, b"\x02" * 32


class Session:
    """Stands in for an AsyncSession: records what is attached to it."""

    def __init__(self, refuse: bool = False, bind: str = "auth.db") -> None:
        self.added: list[object] = []
        self.refuse = refuse
        self.bind = bind

    def add(self, instance: object) -> None:
        if self.refuse:
            raise InvalidRequestError("Object is already attached to session 1")
        self.added.append(instance)


def loaded_key(secret: bytes, expires: datetime | None = None) -> APIKey:
    """An APIKey as a closed session leaves it: loaded, then detached."""
    key = APIKey(first_eight=secret.hex()[:8], hashed_secret=secret, expiration_time=expires, scopes=[])
    for name in inspect(key).unloaded:  # a lookup loads every column and the principal
        setattr(key, name, None)
    make_transient_to_detached(key)
    return key


def counting_lookup(expires: datetime | None = None) -> tuple[internals.Lookup, list[bytes]]:
    calls: list[bytes] = []

    async def lookup(db: Session, secret: bytes) -> APIKey | None:
        calls.append(secret)
        await asyncio.sleep(0)
        return loaded_key(secret, expires) if secret == VALID else None

    return lookup, calls


def test_a_task_looks_a_valid_key_up_once_and_attaches_it_to_each_session():
    lookup, calls = counting_lookup()
    shared = internals.shared_per_task(lookup)

    async def one_request() -> list[object]:
        sessions = [Session(), Session(), Session()]
        keys = [await shared(db, VALID) for db in sessions]
        assert keys[0] is keys[1] is keys[2]
        assert [db.added for db in sessions] == [[], [keys[0]], [keys[0]]]  # reused ones are attached
        return keys

    async def two_requests() -> None:
        first, second = await asyncio.gather(asyncio.create_task(one_request()), asyncio.create_task(one_request()))
        assert first[0] is not second[0]

    asyncio.run(two_requests())
    assert calls == [VALID, VALID]  # one lookup per task


def test_unknown_keys_are_never_kept():
    lookup, calls = counting_lookup()
    shared = internals.shared_per_task(lookup)

    async def request() -> None:
        assert await shared(Session(), UNKNOWN) is None
        assert await shared(Session(), UNKNOWN) is None

    asyncio.run(request())
    assert calls == [UNKNOWN, UNKNOWN]


def test_a_key_is_looked_up_again_past_its_age_or_when_another_session_holds_it(monkeypatch):
    lookup, calls = counting_lookup()
    shared = internals.shared_per_task(lookup, max_age_s=1.0)
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])

    async def request() -> None:
        await shared(Session(), VALID)
        clock[0] += 0.9
        await shared(Session(), VALID)  # reused
        clock[0] += 0.2
        await shared(Session(), VALID)  # 1.1 s old: looked up again
        await shared(Session(refuse=True), VALID)  # held by an open session: looked up again
        await shared(Session(bind="other.db"), VALID)  # another database: looked up there

    asyncio.run(request())
    assert calls == [VALID] * 4


def test_a_key_that_expired_since_is_looked_up_again():
    lookup, calls = counting_lookup(expires=datetime.now(UTC) + timedelta(milliseconds=50))
    shared = internals.shared_per_task(lookup)

    async def request() -> None:
        first = await shared(Session(), VALID)
        assert await shared(Session(), VALID) is first
        await asyncio.sleep(0.1)  # it expires here: Tiled's lookup must see it (and delete it)
        assert await shared(Session(), VALID) is not first

    asyncio.run(request())
    assert calls == [VALID] * 2


def test_a_key_changed_by_a_session_since_is_looked_up_again():
    lookup, calls = counting_lookup()
    shared = internals.shared_per_task(lookup)

    async def request() -> None:
        first = await shared(Session(), VALID)
        first.note = "changed by a session that did not commit"
        assert await shared(Session(), VALID) is not first

    asyncio.run(request())
    assert calls == [VALID] * 2


def test_install_wraps_tiled_lookup_once(monkeypatch):
    monkeypatch.setattr(authentication, "lookup_valid_api_key", core.lookup_valid_api_key)
    internals.share_api_key_lookups()
    installed = authentication.lookup_valid_api_key
    assert installed is not core.lookup_valid_api_key
    internals.share_api_key_lookups()
    assert authentication.lookup_valid_api_key is installed


def test_server_still_records_latest_activity_and_refuses_a_revoked_key_at_once(tiled_server):
    api, as_admin = f"{tiled_server.uri}/api/v1", {"Authorization": f"Apikey {tiled_server.admin_key}"}
    reader = create_key(tiled_server.uri, tiled_server.admin_key, read_only=True)
    as_reader = {"Authorization": f"Apikey {reader}"}
    principal = httpx.get(f"{api}/auth/whoami", headers=as_reader).json()["uuid"]  # each key has its own

    def latest_activity() -> str:
        keys = httpx.get(f"{api}/auth/principal/{principal}", headers=as_admin).json()["api_keys"]
        return next(key["latest_activity"] for key in keys if key["first_eight"] == reader[:8])

    assert httpx.get(f"{api}/metadata/", headers=as_reader).status_code == 200
    before = latest_activity()
    time.sleep(1.1)  # Tiled records it to the second
    assert httpx.get(f"{api}/metadata/", headers=as_reader).status_code == 200
    assert latest_activity() > before

    with httpx.Client(headers=as_reader) as kept_alive:  # one connection: requests share it, not keys
        assert kept_alive.get(f"{api}/metadata/").status_code == 200
        httpx.delete(
            f"{api}/auth/principal/{principal}/apikey", params={"first_eight": reader[:8]}, headers=as_admin
        ).raise_for_status()
        assert kept_alive.get(f"{api}/metadata/").status_code == 401
