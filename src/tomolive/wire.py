"""Documents on the wire: msgpack with numpy arrays, never pickle; signed with the facility's secret.

bluesky's 0MQ ``Publisher``/``RemoteDispatcher`` pickle documents by default, which lets
whoever can reach the proxy run code in every consumer. tomolive's worker reads msgpack
instead: plain data, arrays as (dtype, shape, bytes), nothing executable. And it accepts only
documents signed with a secret shared by the publishers and the worker (HMAC-SHA256 over the
prefix, the document name and the payload, with a key id, a timestamp and a per-publisher
sequence number against replay)::

    from tomolive.wire import SignedPublisher
    RE.subscribe(SignedPublisher("127.0.0.1:5577"))   # secret from $TOMOLIVE_WIRE_SECRET

A signed message is ``prefix name body`` as bluesky sends it, with ``body`` =
header (magic, key id, time in ns, publisher id, sequence) + 32-byte MAC + msgpack payload.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
import stat
import struct
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
from bluesky.callbacks.zmq import Publisher

from .errors import BadInputError

SECRET_ENV = "TOMOLIVE_WIRE_SECRET"
MIN_SECRET_BYTES = 32
MAX_AGE_S = 300.0
"""A signed message older (or newer) than this is refused: the replay window."""

_NDARRAY = 1
_MAGIC = b"TLW1"
_HEADER = struct.Struct(">4s8sQ8sQ")  # magic, key id, time (ns), publisher id, sequence
_MAC_BYTES = 32


def _default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            return value.tolist()
        payload = [value.dtype.str, list(value.shape), np.ascontiguousarray(value).tobytes()]
        return msgpack.ExtType(_NDARRAY, msgpack.packb(payload))
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot send a {type(value).__name__} in a document: {value!r}")


def _ext_hook(code: int, data: bytes) -> Any:
    if code != _NDARRAY:
        raise ValueError(f"unknown msgpack extension type {code} in a document")
    dtype, shape, raw = msgpack.unpackb(data)
    return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape)


def pack(doc: dict) -> bytes:
    """Serialise one document (the ``serializer`` for bluesky's ``Publisher``)."""
    return msgpack.packb(doc, default=_default)


def unpack(data: bytes | memoryview) -> dict:
    """Deserialise one document (the ``deserializer`` for ``RemoteDispatcher``)."""
    return msgpack.unpackb(data, ext_hook=_ext_hook, strict_map_key=False)


class WireSecretError(BadInputError):
    """The wire secret is missing, too short or readable by other users."""


def load_secret(path: str | Path | None = None) -> bytes:
    """The wire secret from the file at ``path``, else from ``$TOMOLIVE_WIRE_SECRET``.

    Surrounding whitespace is stripped. A file readable by group or others is refused.
    """
    if path is not None:
        path = Path(path)
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
            secret = path.read_bytes().strip()
        except OSError as err:
            raise WireSecretError(f"cannot read the wire secret file {path}: {err.strerror}") from None
        if mode & 0o077:
            raise WireSecretError(
                f"wire secret file {path} is readable by other users (mode {mode:o}); chmod 600 {path}"
            )
        where = str(path)
    else:
        secret = os.environ.get(SECRET_ENV, "").strip().encode()
        where = f"${SECRET_ENV}"
        if not secret:
            raise WireSecretError(f"no wire secret: set {SECRET_ENV} or pass a secret file")
    if len(secret) < MIN_SECRET_BYTES:
        raise WireSecretError(
            f"the wire secret in {where} has {len(secret)} bytes, fewer than {MIN_SECRET_BYTES}; "
            'make one with: python -c "import secrets; print(secrets.token_hex(32))"'
        )
    return secret


def key_id(secret: bytes) -> bytes:
    """The 8-byte id of ``secret`` sent with each message (a hash: it tells nothing of the secret)."""
    return hashlib.sha256(b"tomolive wire key id\0" + secret).digest()[:8]


def _mac(secret: bytes, header: bytes | memoryview, prefix: bytes, name: bytes, payload: bytes | memoryview) -> bytes:
    digest = hmac.new(secret, header, hashlib.sha256)
    digest.update(len(prefix).to_bytes(2, "big") + prefix + len(name).to_bytes(2, "big") + name)
    digest.update(payload)
    return digest.digest()


class Signer:
    """Signs messages for one publisher: a random publisher id and a rising sequence number."""

    def __init__(self, secret: bytes, *, clock: Callable[[], int] = time.time_ns):
        self._secret = secret
        self._key_id = key_id(secret)
        self._publisher = os.urandom(8)
        self._sequence = itertools.count(1)
        self._clock = clock

    def sign(self, prefix: bytes, name: str, payload: bytes) -> bytes:
        """The signed body of a message carrying ``payload`` as document ``name``."""
        header = _HEADER.pack(_MAGIC, self._key_id, self._clock(), self._publisher, next(self._sequence))
        return header + _mac(self._secret, header, prefix, name.encode(), payload) + payload


class Rejected(Exception):
    """A message the worker drops; the message says why."""


class Verifier:
    """Checks signed messages: known key, valid MAC, fresh timestamp, sequence never seen.

    ``secrets`` may hold several (the old and the new while rotating). Each publisher's last
    sequence number is kept while its messages could still be replayed (``max_age_s``).
    """

    def __init__(
        self, secrets: Sequence[bytes], *, max_age_s: float = MAX_AGE_S, clock: Callable[[], int] = time.time_ns
    ):
        if not secrets:
            raise WireSecretError("a Verifier needs at least one secret")
        self._keys = {key_id(secret): secret for secret in secrets}
        self._max_age_ns = int(max_age_s * 1e9)
        self._clock = clock
        self._last: dict[bytes, tuple[int, int]] = {}  # publisher id -> (sequence, newest time)

    def verify(self, prefix: bytes, name: bytes, body: bytes) -> memoryview:
        """The payload of a genuine, fresh message; raises :class:`Rejected` otherwise."""
        view = memoryview(body)
        start = _HEADER.size + _MAC_BYTES
        if len(body) < start or body[:4] != _MAGIC:
            raise Rejected("unsigned (no tomolive signature)")
        _, kid, sent_ns, publisher, sequence = _HEADER.unpack_from(body)
        secret = self._keys.get(kid)
        if secret is None:
            raise Rejected(f"signed with an unknown key (id {kid.hex()}): a wrong or retired secret")
        if not hmac.compare_digest(
            view[_HEADER.size : start], _mac(secret, view[: _HEADER.size], prefix, name, view[start:])
        ):
            raise Rejected("bad signature: altered, or signed with another secret")
        now = self._clock()
        if abs(now - sent_ns) > self._max_age_ns:
            raise Rejected(
                f"signed {(now - sent_ns) / 1e9:.0f} s ago, outside the {self._max_age_ns / 1e9:.0f} s window"
            )
        last, newest = self._last.get(publisher, (0, 0))
        if sequence <= last:
            raise Rejected(f"replayed (sequence {sequence} of publisher {publisher.hex()} already seen)")
        if publisher not in self._last:
            self._forget_old(now)
        self._last[publisher] = (sequence, max(newest, sent_ns))
        return view[start:]

    def _forget_old(self, now: int) -> None:
        # safe: a message of a forgotten publisher is older than the window, so refused anyway
        for publisher, (_, newest) in list(self._last.items()):
            if now - newest > self._max_age_ns:
                del self._last[publisher]


class SignedPublisher(Publisher):
    """bluesky's 0MQ ``Publisher`` sending msgpack documents signed with the wire secret.

    ``secret`` defaults to :func:`load_secret` (``$TOMOLIVE_WIRE_SECRET``); other keywords
    (``prefix``, ``curve_config``) are ``Publisher``'s.
    """

    def __init__(self, address: str | tuple[str, int], *, secret: bytes | None = None, **kwargs: Any):
        super().__init__(address, serializer=pack, **kwargs)
        self._signer = Signer(load_secret() if secret is None else secret)

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        """Publish one document (the RunEngine's callback signature)."""
        body = self._signer.sign(self._prefix, name, pack(doc))
        self._socket.send(b" ".join([self._prefix, name.encode(), body]))
