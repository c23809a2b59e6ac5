"""Key material redacted from every log record of the Tiled server process.

Uvicorn's access log writes each request line whole, so opening the web view as
``/custom/tomolive/?api_key=KEY`` once put the key in ``tiled-server.log``. :func:`install` sets
a log-record factory: every record made in the process, by any logger and whatever handlers
Tiled's or uvicorn's logging configuration installs later, has its message, arguments and
traceback text redacted before any handler sees it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

REDACTED = "[redacted]"
PATTERNS = (
    re.compile(r"(?i)(api_key(?:=|%3D))[^&\s\"'#;,)]+"),  # query strings, raw or percent-encoded
    re.compile(r"(?i)((?:tiled_api_key|refresh_token|access_token)[\"']?\s*[=:]\s*[\"']?)[^&\s\"';,]+"),
    re.compile(r"(?i)\b((?:apikey|bearer)(?:\s+|%20))[^\s\"',]+"),  # Authorization header values
    re.compile(r"(?i)()\b[0-9a-f]{72}\b"),  # a Tiled API key's secret: 36 bytes in hex
)


def redact(text: str) -> str:
    """``text`` with API keys, tokens and ``api_key=`` values replaced by ``[redacted]``."""
    for pattern in PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


def _redacted(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """Redact ``record`` in place (message, arguments, traceback) and return it."""
    if isinstance(record.msg, str):
        record.msg = redact(record.msg)
    if isinstance(record.args, tuple):
        record.args = tuple(_redacted(arg) for arg in record.args)
    elif isinstance(record.args, dict):
        record.args = {key: _redacted(arg) for key, arg in record.args.items()}
    if record.exc_info and not record.exc_text:
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
    return record


def install() -> None:
    """Redact every log record this process makes from now on (idempotent)."""
    make = logging.getLogRecordFactory()
    if getattr(make, "redacts", False):
        return

    def make_redacted(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return redact_record(make(*args, **kwargs))

    make_redacted.redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(make_redacted)
