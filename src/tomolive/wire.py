"""Documents on the wire: msgpack with numpy arrays, never pickle.

bluesky's 0MQ ``Publisher``/``RemoteDispatcher`` pickle documents by default, which lets
whoever can reach the proxy run code in every consumer. tomolive's worker reads msgpack
instead: plain data, arrays as (dtype, shape, bytes), nothing executable::

    from bluesky.callbacks.zmq import Publisher
    from tomolive.wire import pack
    RE.subscribe(Publisher("127.0.0.1:5577", serializer=pack))
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

_NDARRAY = 1


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


def unpack(data: bytes) -> dict:
    """Deserialise one document (the ``deserializer`` for ``RemoteDispatcher``)."""
    return msgpack.unpackb(data, ext_hook=_ext_hook, strict_map_key=False)
