"""The ``Technique`` interface: what one technique tells the engine, and nothing more.

A technique (tomography today; ptychography, Bragg peaks, XPCS next) says which runs it
claims, how it reads their frames from Bluesky documents, what it does with each frame as
it arrives (its :class:`Acquisition`: calibration, scratch storage, a live preview), its
ordered list of processing stages and the arrays it writes. The engine owns everything
else: threads, the run's states, the result store and its fallback, Dask, provenance,
progress and result events. A new technique implements these two protocols and adds no
line to the engine (tests/test_technique.py holds a toy one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..stages import Stage

if TYPE_CHECKING:
    from event_model import DocumentRouter

    from .run import Run


class Acquisition(Protocol):
    """One run's frames on the way in, owned by its technique; the engine calls it on its ingest thread."""

    def add(self, role: str, frame: np.ndarray, coordinate: float | None) -> None:
        """Take one frame of ``role`` (e.g. ``"dark"``, ``"projection"``) at ``coordinate``."""

    def stopping(self) -> None:
        """The stop arrived (caller's thread): stop optional work (a preview) before the last frames."""

    def finish(self) -> None:
        """Every frame is in: check the data suffices for processing; raise a clear error if not."""

    def close(self, patience_s: float) -> None:
        """Processing succeeded: finish live work (the preview's last publish)."""

    def release(self) -> None:
        """Free what the run holds (scratch files); called once, off the processing path."""

    def discard(self, store: Any) -> None:
        """The run ended without a result: stop live work and remove partial outputs from ``store``."""


class Technique(Protocol):
    """One measurement technique on the engine."""

    @property
    def name(self) -> str:
        """Recorded in provenance as ``parameters.technique``."""

    @property
    def params(self) -> Any:
        """Its parameters (with ``as_dict()``), recorded in provenance."""

    @property
    def layout(self) -> Sequence[str]:
        """The arrays a processed result of this technique may hold (``processed/<uid>/<key>``)."""

    def claims(self, start_doc: Mapping[str, Any]) -> bool:
        """Whether runs with this start document are this technique's."""

    def run_metadata(self, start_doc: Mapping[str, Any]) -> dict[str, Any]:
        """The searchable container metadata taken from the start document."""

    def reader(self, start_doc: dict[str, Any], run: Run) -> DocumentRouter:
        """A document router turning this run's documents into ``run.add``/``run.finish``/``run.end`` calls."""

    def acquisition(self, run: Run) -> Acquisition:
        """A fresh per-run frame handler (it may publish a preview through ``run.store``)."""

    def stages(self) -> list[Stage]:
        """The ordered processing stages, run on the engine's processing thread after the stop."""

    def frame_steps(self) -> list[str]:
        """What is done to each frame as it arrives, recorded in ``stages`` before the stages' names."""
