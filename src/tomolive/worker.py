"""``tomolive worker``: the pipeline in its own process, fed by bluesky's 0MQ proxy.

How beamlines deploy heavy callbacks: the RunEngine publishes documents
(``bluesky.callbacks.zmq.Publisher``) to ``bluesky-0MQ-proxy``, and any number of
consumers subscribe to the proxy's output with a ``RemoteDispatcher``. The worker is one
such consumer running :class:`~tomolive.callbacks.TomoPipeline`, so processing never
shares a thread, an interpreter or a GIL with the RunEngine.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable

from bluesky.callbacks.zmq import RemoteDispatcher

from .wire import unpack

logger = logging.getLogger(__name__)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_worker(
    address: str,
    callback: Callable[[str, dict], None],
    *,
    prefix: bytes = b"",
    deserializer: Callable[[bytes], dict] = unpack,
) -> None:
    """Dispatch documents from the proxy at ``address`` to ``callback`` until SIGTERM/SIGINT."""
    dispatcher = RemoteDispatcher(address, prefix=prefix, deserializer=deserializer)
    dispatcher.subscribe(callback)
    signal.signal(signal.SIGTERM, _interrupt)
    logger.info("tomolive worker: listening to %s", address)
    try:
        dispatcher.start()
    except KeyboardInterrupt:
        logger.info("tomolive worker: stopping")
