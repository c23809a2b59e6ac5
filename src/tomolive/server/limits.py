"""Request bodies capped before they are read: an ASGI middleware in the Tiled server process.

Tiled's handlers read a whole request body before they check its key, so an anonymous
1.2 GB upload was once held in memory only to be answered 401. :class:`BodyLimit` decides from
the headers first:

- a request without an API key may send at most ``anonymous_limit`` bytes (64 KiB: the
  password login form is the largest body it needs); more is refused with 401, from its
  ``Content-Length`` without reading a byte, or after at most that many bytes of a chunked body;
- a request whose API key may write (checked by asking this same server's ``/auth/apikey``,
  remembered for :data:`VERDICT_S` seconds) may send ``keyed_limit`` bytes (default
  :data:`~tomolive.config.DEFAULT_MAX_BODY_BYTES`, ``TOMOLIVE_MAX_BODY_BYTES``); more is 413;
- a key that is unknown, expired or read-only counts as no key.

Refusals close the connection, so the server never reads the rest of the body.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ANONYMOUS_LIMIT = 64 * 1024
VERDICT_S = 30.0
"""How long a key's verdict (may it write?) is kept; a revoked key keeps a large limit this long
at most, and Tiled itself still refuses its writes at once."""
WRITING_SCOPES = frozenset({"write:data", "write:metadata", "create:node", "register", "inherit"})
KEY_COOKIE = b"tiled_api_key="
MAX_VERDICTS = 4096


class BodyLimit:
    """ASGI middleware: refuse request bodies over the limit of their key before reading them."""

    def __init__(self, app: ASGIApp, keyed_limit: int, anonymous_limit: int = ANONYMOUS_LIMIT) -> None:
        self.app = app
        self.keyed_limit = keyed_limit
        self.anonymous_limit = anonymous_limit
        self._verdicts: dict[bytes, tuple[bool, float]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = _content_length(headers)
        if length == 0 or (length is None and b"transfer-encoding" not in headers):
            await self.app(scope, receive, send)  # no body
            return
        if length is not None and length <= self.anonymous_limit:
            await self.app(scope, receive, send)  # small: Tiled checks the key as usual
            return
        if await self._may_write(scope, headers):
            if length is not None and length > self.keyed_limit:
                await _refuse(send, 413, f"request body of {length} bytes is over this server's limit")
                return
            await self._counted(scope, receive, send)
            return
        if length is not None:
            await _refuse(send, 401, "a request body this large needs an API key that may write")
            return
        body = await _read_at_most(receive, self.anonymous_limit)
        if body is None:
            await _refuse(send, 401, "a request body this large needs an API key that may write")
            return
        await self.app(scope, _replay(body, receive), send)

    async def _may_write(self, scope: Scope, headers: dict[bytes, bytes]) -> bool:
        """Whether the request carries an API key that this server knows and that may write."""
        credentials = _credentials(scope, headers)
        if not credentials:
            return False
        digest = hashlib.sha256(repr(credentials).encode()).digest()
        verdict = self._verdicts.get(digest)
        if verdict is not None and verdict[1] > time.monotonic():
            return verdict[0]
        # A task of its own: the sub-request's context variables do not leak into this request.
        allowed = await asyncio.create_task(self._ask_server(scope, credentials))
        if len(self._verdicts) >= MAX_VERDICTS:
            self._verdicts.clear()
        self._verdicts[digest] = (allowed, time.monotonic() + VERDICT_S)
        return allowed

    async def _ask_server(self, scope: Scope, credentials: list[tuple[bytes, bytes]]) -> bool:
        """Ask this server's ``GET /api/v1/auth/apikey`` about the request's key, in process."""
        query = [(k, v) for k, v in credentials if k == b"api_key"]
        sub = {
            **scope,
            "method": "GET",
            "path": "/api/v1/auth/apikey",
            "raw_path": b"/api/v1/auth/apikey",
            "query_string": urlencode(query).encode(),
            "headers": [(k, v) for k, v in credentials if k != b"api_key"],
            "state": dict(scope.get("state", {})),  # what Tiled notes on request.state stays there
        }
        answer: dict[str, Any] = {"status": 500, "body": b""}
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.Event().wait()  # the client stays connected
            raise AssertionError("unreachable")

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
            elif message["type"] == "http.response.body":
                answer["body"] += message.get("body", b"")

        await self.app(sub, receive, send)
        if answer["status"] != 200:
            return False
        try:
            scopes = set(json.loads(answer["body"]).get("scopes", ()))
        except (ValueError, AttributeError):
            return False
        return bool(scopes & WRITING_SCOPES)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, ending its body (413) once more than the keyed limit arrived."""
        received, tripped, started = 0, False, False

        async def counted_receive() -> Message:
            nonlocal received, tripped
            if tripped:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.keyed_limit:
                    tripped = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if tripped and not started:
                return  # the app's answer to a cut-off body: ours goes instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not tripped:
                raise
        if tripped and not started:
            await _refuse(send, 413, f"request body over this server's limit of {self.keyed_limit} bytes")


def _content_length(headers: dict[bytes, bytes]) -> int | None:
    value = headers.get(b"content-length")
    if value is None:
        return None
    try:
        return max(int(value), 0)
    except ValueError:
        return None


def _credentials(scope: Scope, headers: dict[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    """The request's possible API keys: its Authorization header, ``api_key`` query and key cookie."""
    found = [(k.encode(), v.encode()) for k, v in parse_qsl(scope.get("query_string", b"").decode()) if k == "api_key"]
    if headers.get(b"authorization", b"").lower().startswith(b"apikey "):
        found.append((b"authorization", headers[b"authorization"]))
    if KEY_COOKIE in headers.get(b"cookie", b""):
        found.append((b"cookie", headers[b"cookie"]))
    return found


async def _read_at_most(receive: Receive, limit: int) -> bytes | None:
    """The whole body if it has at most ``limit`` bytes, else None (having read just over ``limit``)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` once, then defers to the real one."""
    given = False

    async def replayed() -> Message:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),  # the rest of the body is never read
    ]
    if status == 401:
        headers.append((b"www-authenticate", b"Apikey"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def install(keyed_limit: int) -> None:
    """Make Tiled's app builder (``tiled serve config``) wrap every app it builds in :class:`BodyLimit`."""
    import tiled.server.app as tiled_app

    build = tiled_app.build_app_from_config
    if getattr(build, "body_limit", None) is not None:
        return

    def build_limited(*args: Any, **kwargs: Any) -> Any:
        app = build(*args, **kwargs)
        app.add_middleware(BodyLimit, keyed_limit=keyed_limit)
        return app

    build_limited.body_limit = keyed_limit  # type: ignore[attr-defined]
    tiled_app.build_app_from_config = build_limited
