"""Processed-results events: users' own callbacks hear when a scan's result lands.

Modelled on bluesky's dispatcher: :meth:`ResultEvents.subscribe` returns an integer token
for :meth:`ResultEvents.unsubscribe`; a callback is called as ``callback(kind, payload)``;
an exception raised by a callback is logged and never reaches processing or the other
callbacks. Events are emitted by tomolive's own threads (the processing thread, or the
I/O thread for runs that end without processing), never by the RunEngine's, and before
``TomoPipeline.wait`` returns for that scan. A slow callback delays the next scan's
processing: hand heavy work to your own thread or queue.

Kinds (``EVENT_KINDS``):

- ``"qc_alert"``: one per QC alert of a processed scan (payload key ``alert``), before its
  ``complete``;
- ``"complete"``: the result is registered (``uri``) or kept in the local outbox (``outbox``);
- ``"failed"`` / ``"aborted"``: the run ended without a result (``reason``).

Payload keys (a fresh copy per callback): ``uid`` (the raw run uid), ``status``, ``uri``
(the ``processed/<uid>`` container in Tiled, or None), ``outbox``, ``reason``, ``sample``,
``scan_id``, ``stages`` (done), ``qc`` (numbers and ``alerts``), ``metrics`` (of user
stages, see :mod:`tomolive.stages`), and ``alert`` for ``qc_alert``.
"""

from __future__ import annotations

import copy
import itertools
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import BadInputError

logger = logging.getLogger(__name__)
EVENT_KINDS = ("qc_alert", "complete", "failed", "aborted")
ResultCallback = Callable[[str, dict[str, Any]], Any]


class ResultEvents:
    """The subscribers to one pipeline's processed-results events.

    Examples
    --------
    >>> events = ResultEvents()
    >>> seen = []
    >>> token = events.subscribe(lambda kind, payload: seen.append((kind, payload["uid"])), kinds=("complete",))
    >>> events.emit("complete", {"uid": "abc"}); events.emit("failed", {"uid": "def"})
    >>> seen
    [('complete', 'abc')]
    >>> events.unsubscribe(token)
    """

    def __init__(self) -> None:
        self._callbacks: dict[int, tuple[ResultCallback, frozenset[str]]] = {}
        self._tokens = itertools.count()
        self._lock = threading.Lock()

    def subscribe(self, callback: ResultCallback, kinds: str | Iterable[str] = EVENT_KINDS) -> int:
        """Call ``callback(kind, payload)`` for each event of ``kinds``; return a token."""
        if not callable(callback):
            raise BadInputError(f"callback must be callable as callback(kind, payload); got {callback!r}.")
        wanted = frozenset([kinds] if isinstance(kinds, str) else kinds)
        unknown = sorted(wanted - set(EVENT_KINDS))
        if unknown or not wanted:
            raise BadInputError(f"event kinds must be among {EVENT_KINDS!r}; got {sorted(wanted)!r}.")
        with self._lock:
            token = next(self._tokens)
            self._callbacks[token] = (callback, wanted)
        return token

    def unsubscribe(self, token: int) -> None:
        """Stop calling the callback behind ``token`` (an unknown token is ignored, as in bluesky)."""
        with self._lock:
            self._callbacks.pop(token, None)

    def emit(self, kind: str, payload: dict[str, Any]) -> None:
        """Call the subscribers of ``kind``; their exceptions are logged, never raised."""
        with self._lock:
            callbacks = [callback for callback, kinds in self._callbacks.values() if kind in kinds]
        for callback in callbacks:
            try:
                callback(kind, copy.deepcopy(payload))
            except Exception:
                logger.exception(
                    "tomolive: result callback %r raised on the %r event of run %s; processing goes on",
                    callback,
                    kind,
                    payload.get("uid"),
                )
