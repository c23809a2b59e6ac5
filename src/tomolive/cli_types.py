"""Argument types of the command line: each refuses a bad value with one line naming it."""

from __future__ import annotations

import argparse
import datetime as dt


def iso_date(text: str) -> str:
    """``--since``: an ISO 8601 date or date-time, as the UTC string metadata ``created`` compares with."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO date such as 2026-12-01 or 2026-12-01T08:00"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC).isoformat(timespec="seconds")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def positive_mb(text: str) -> float:
    """``--max-message-mb``: a positive number of MiB."""
    value = float(text)
    if not 0 < value <= 2**20:
        raise argparse.ArgumentTypeError(f"{text} is not a number of MiB between 0 and 1048576")
    return value
