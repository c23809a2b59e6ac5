"""``tomolive worker``: the pipeline in its own process, fed by bluesky's 0MQ proxy.

How beamlines deploy heavy callbacks: the RunEngine publishes documents
(:class:`tomolive.wire.SignedPublisher`) to ``bluesky-0MQ-proxy``, and any number of
consumers subscribe to the proxy's output. The worker is one such consumer running
:class:`~tomolive.callbacks.TomoPipeline`, so processing never shares a thread, an
interpreter or a GIL with the RunEngine.

Its own receive loop, not bluesky's ``RemoteDispatcher``: libzmq refuses a message over
``max_message_bytes`` before buffering it (``ZMQ_MAXMSGSIZE``, which closes the connection;
the worker reconnects), each message is checked (name, signature, freshness) before it is
decoded, and nothing a sender puts in a message stops the worker: a bad one is dropped with
one log line (at most 50 lines a minute when flooded).
"""

from __future__ import annotations

import logging
import signal
import time
from collections import Counter
from collections.abc import Callable

import zmq
from bluesky.run_engine import DocumentNames
from zmq.utils.monitor import recv_monitor_message

from .wire import Rejected, Verifier, unpack

logger = logging.getLogger(__name__)

DOCUMENT_NAMES = frozenset(name.name.encode() for name in DocumentNames)
MAX_MESSAGE_BYTES = 64 * 2**20
"""Default message limit: a 2048 x 2048 uint16 frame is 8 MiB; room for 4k x 4k with headroom."""


class DropLog:
    """One log line per dropped message, at most ``burst`` per ``window_s``; the rest counted."""

    def __init__(self, burst: int = 50, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.burst, self.window_s, self._clock = burst, window_s, clock
        self.total = 0
        self._window_start = clock()
        self._logged = 0
        self._quiet: Counter[str] = Counter()

    def drop(self, kind: str, detail: str) -> None:
        """Count a dropped message of ``kind`` and log ``detail`` unless flooded."""
        self.total += 1
        if self._clock() - self._window_start >= self.window_s:
            self.flush()
        if self._logged < self.burst:
            self._logged += 1
            logger.warning("tomolive worker: dropped a message: %s", detail)
        else:
            self._quiet[kind] += 1

    def flush(self) -> None:
        """Log how many drops went unlogged, and start a new window."""
        if self._quiet:
            counts = ", ".join(f"{n} {kind}" for kind, n in self._quiet.most_common())
            logger.warning(
                "tomolive worker: dropped %d more messages without a line each: %s", self._quiet.total(), counts
            )
        self._window_start, self._logged, self._quiet = self._clock(), 0, Counter()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _describe(name: bytes) -> str:
    """A sender's bytes, clipped and escaped: one log line stays one line."""
    return ascii(name[:40].decode("utf-8", "replace"))


def parse(message: bytes, prefix: bytes, verifier: Verifier | None) -> tuple[str, dict]:
    """The (name, document) in one message from the proxy; raises :class:`Rejected`."""
    parts = message.split(b" ", 2)
    if len(parts) != 3:
        raise Rejected(f"not 'prefix name document' ({len(message)} bytes)")
    sent_prefix, name, body = parts
    if prefix and sent_prefix != prefix:
        raise Rejected(f"prefix {_describe(sent_prefix)}, not {prefix.decode()!r}")
    if name not in DOCUMENT_NAMES:
        raise Rejected(f"unknown document name {_describe(name)} ({len(message)} bytes)")
    payload = verifier.verify(sent_prefix, name, body) if verifier is not None else memoryview(body)
    try:
        doc = unpack(payload)
    except Exception as err:  # msgpack raises many kinds on garbage
        raise Rejected(f"{name.decode()} document is not msgpack ({type(err).__name__}: {str(err)[:80]!a})") from None
    if not isinstance(doc, dict):
        raise Rejected(f"{name.decode()} document is a {type(doc).__name__}, not a mapping")
    return name.decode(), doc


class _Connection:
    """A SUB socket to the proxy with a size limit, and a monitor telling when it drops."""

    def __init__(self, context: zmq.Context, address: str, max_message_bytes: int):
        self.socket = context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self.socket.setsockopt(zmq.SUBSCRIBE, b"")
        self.monitor = self.socket.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        self.socket.connect(address)
        self.poller = zmq.Poller()
        self.poller.register(self.socket, zmq.POLLIN)
        self.poller.register(self.monitor, zmq.POLLIN)

    def receive(self) -> bytes | None:
        """The next message, or None when the connection was closed (libzmq then gives up on it)."""
        while True:
            ready = dict(self.poller.poll())
            if self.socket in ready:
                return self.socket.recv()
            if self.monitor in ready:
                event = recv_monitor_message(self.monitor)
                if event["event"] == zmq.EVENT_DISCONNECTED:
                    return None
                logger.info("tomolive worker: connected to %s", event["endpoint"].decode())

    def close(self) -> None:
        self.socket.disable_monitor()
        self.monitor.close(linger=0)
        self.socket.close(linger=0)


def run_worker(
    address: str,
    callback: Callable[[str, dict], None],
    *,
    verifier: Verifier | None,
    prefix: bytes = b"",
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> DropLog:
    """Give documents from the proxy at ``address`` to ``callback`` until SIGTERM/SIGINT.

    ``verifier`` None accepts unsigned documents (``--insecure-unsigned``). Returns the
    drop log (``total`` dropped).
    """
    url = address if "://" in address else f"tcp://{address}"
    context = zmq.Context()
    drops = DropLog()
    accepted = 0
    signal.signal(signal.SIGTERM, _interrupt)
    logger.info("tomolive worker: listening to %s (messages up to %d MiB)", url, max_message_bytes // 2**20)
    try:
        while True:
            connection = _Connection(context, url, max_message_bytes)
            try:
                while (message := connection.receive()) is not None:
                    accepted += _deliver(message, prefix, verifier, callback, drops)
            finally:
                connection.close()
            drops.drop("disconnect", f"the connection to {url} closed: a message over the limit, or the proxy stopped")
    except KeyboardInterrupt:
        drops.flush()
        logger.info("tomolive worker: stopping (%d documents taken, %d messages dropped)", accepted, drops.total)
    finally:
        context.destroy(linger=0)
    return drops


def _deliver(
    message: bytes, prefix: bytes, verifier: Verifier | None, callback: Callable[[str, dict], None], drops: DropLog
) -> int:
    """Check one message and hand its document on: 1 if taken, 0 if dropped."""
    try:
        name, doc = parse(message, prefix, verifier)
    except Rejected as why:
        drops.drop("refused", str(why))
        return 0
    try:
        callback(name, doc)
    except Exception as err:  # the pipeline fails the run it can; the worker carries on
        drops.drop("callback", f"the pipeline raised on a {name} document: {type(err).__name__}: {str(err)[:120]!a}")
        return 0
    return 1
