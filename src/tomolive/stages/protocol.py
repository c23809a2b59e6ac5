"""The ``Stage`` protocol: one step of a technique's processing, and the context it runs in.

Every stage, built-in or a user's, is an object with a ``name`` and ``run(ctx)``. A
technique's pipeline is an ordered list of them; the engine runs the list on its
processing thread and records each name in ``stages`` and provenance. A stage reads what
earlier stages left in ``ctx.volumes``/``ctx.results``, writes arrays through
``ctx.store`` and adds searchable metadata to ``ctx.metadata``. It never imports the
engine: the block runner and the Dask client reach it through the context.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from distributed import Client

    from ..engine.progress import ProgressReporter
    from ..engine.provenance import Provenance


@runtime_checkable
class Stage(Protocol):
    """One step of processing: ``run(ctx)`` does it, ``name`` names it in results and provenance."""

    @property
    def name(self) -> str: ...

    def run(self, ctx: StageContext) -> None: ...


@dataclass(frozen=True)
class VolumeRef:
    """A stored volume a later stage can read or process block by block (``target`` is picklable)."""

    target: Any
    shape: tuple[int, ...]
    blocks: list[tuple[int, int]]

    @property
    def rows_per_block(self) -> int:
        """Slices per block (and per stored chunk along z)."""
        start, stop = self.blocks[0]
        return stop - start


RunBlocks = Callable[..., list[Any]]
"""``run_blocks(name, function, args, *, resources=None)``: one Dask task per block, results in order."""


@dataclass
class StageContext:
    """What a stage sees of its run: the store, parameters, engine services and earlier results."""

    uid: str
    store: Any
    params: Any
    provenance: Provenance
    progress: ProgressReporter
    dask_client: Callable[[], Client]
    run_blocks: RunBlocks
    io: Executor
    show_progress: bool
    acquisition: Any
    volumes: dict[str, VolumeRef] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def params_of(self, stage: str) -> dict[str, Any]:
        """Keyword parameters the run gives ``stage`` (its technique's ``params.stage_params[stage]``)."""
        return dict((getattr(self.params, "stage_params", None) or {}).get(stage, {}))

    def report(self, stage: str, done: int | None = None, total: int | None = None) -> None:
        """Report progress of ``stage`` (rate-limited, sent off this thread)."""
        if done is None:
            self.progress.report(stage=stage)
        else:
            self.progress.report(stage=stage, done=done, total=total)
