"""The one protocol every result container implements: Tiled, or the local outbox.

The engine codes against :class:`ResultStore` only; it never asks which one it holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
from tiled.client.base import BaseClient

from ..errors import BadInputError
from .volume import VolumeTarget

if TYPE_CHECKING:
    import pandas as pd

Status = Literal["running", "complete", "failed", "aborted"]
STATUSES: tuple[Status, ...] = ("running", "complete", "failed", "aborted")


def check_status(status: str) -> Status:
    """``status`` if it is one of :data:`STATUSES`; the one place statuses are checked.

    Raises
    ------
    BadInputError
        When ``status`` is not one of ``running``, ``complete``, ``failed``, ``aborted``.
    """
    if status not in STATUSES:
        raise BadInputError(f"status must be one of {STATUSES!r}; got {status!r}")
    return status


class ResultStore(Protocol):
    """One scan's result container: Tiled ``processed/<uid>``, or a local outbox entry."""

    uid: str
    uri: str | None
    """The Tiled URI of the container; None for the outbox."""
    models_client: BaseClient | None
    """The Tiled root where trained models go; None for the outbox."""
    previous_parameters: dict[str, Any] | None
    """The parameters of the result this one is a new version of; None for a first result."""

    def describe(self) -> str:
        """Where the result is, for a log line (the outbox adds how to upload it)."""
        ...

    def new_volume(
        self,
        key: str,
        shape: tuple[int, int, int],
        rows_per_block: int,
        dtype: np.dtype = ...,
        metadata: dict | None = None,
    ) -> VolumeTarget:
        """An empty chunked volume ``key``; Dask workers fill it block by block."""
        ...

    def update(self, **metadata: Any) -> None:
        """Merge top-level metadata keys (progress)."""
        ...

    def set_status(self, status: Status, **metadata: Any) -> None:
        """Set ``status`` (checked by :func:`check_status`) and merge ``metadata``."""
        ...

    def write_preview(self, image: np.ndarray | None, metadata: dict) -> None:
        """Create or overwrite the ``preview`` image, then its metadata; ``image`` None: metadata only."""
        ...

    def write_table(self, key: str, table: pd.DataFrame, metadata: dict | None = None) -> None:
        """Write ``table`` whole as the child ``key`` (a Tiled table; Parquet in the outbox)."""
        ...

    def remove(self, key: str) -> None:
        """Delete the child ``key`` and its data."""
        ...

    def __contains__(self, key: str) -> bool:
        """Whether the child ``key`` exists."""
        ...
