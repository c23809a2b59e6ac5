"""The technique-agnostic core: an :class:`Engine` runs each :class:`Run` of any :class:`Technique`."""

from .core import Engine
from .events import EVENT_KINDS, ResultCallback, ResultEvents
from .provenance import Provenance
from .run import ProcessedRun, Run, RunState
from .technique import Acquisition, Technique

__all__ = [
    "EVENT_KINDS",
    "Acquisition",
    "Engine",
    "ProcessedRun",
    "Provenance",
    "ResultCallback",
    "ResultEvents",
    "Run",
    "RunState",
    "Technique",
]
