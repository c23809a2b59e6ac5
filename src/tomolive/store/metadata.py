"""Metadata as Tiled and the outbox keep it: plain JSON, UTC timestamps."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

import numpy as np


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars/arrays, paths and mappings turned into plain JSON types."""
    return json.loads(to_json(value))


def to_json(value: Any) -> str:
    """``value`` as JSON text, numpy scalars/arrays, paths and mappings included."""
    return json.dumps(value, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):  # e.g. Tiled's read-only metadata views
        return dict(value)
    return str(value)


def now() -> str:
    """The current UTC time, ISO 8601."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
