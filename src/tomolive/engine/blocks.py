"""The one block runner: a unit of work is a function applied to one row block, on Dask.

Every block stage of every technique goes through here: :func:`submit_blocks` queues one
task per block (some first, for work that needs them early), :meth:`BlockRun.wait`
follows them with a progress bar and callback, cancels the rest when one fails and
gathers the results in block order.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from distributed import Client, Future, as_completed
from tqdm.auto import tqdm


def row_blocks(n_rows: int, rows_per_block: int) -> list[tuple[int, int]]:
    """``[start, stop)`` row ranges covering ``n_rows``."""
    return [(r, min(r + rows_per_block, n_rows)) for r in range(0, n_rows, rows_per_block)]


@dataclass
class BlockRun:
    """Block tasks submitted to Dask; :meth:`wait` gathers them with progress.

    ``futures`` maps block index to task, in the order the tasks were submitted, which is
    the order Dask starts them in; ``behind`` are tasks some of them wait on, cancelled
    with them.
    """

    client: Client
    name: str
    futures: dict[int, Future]
    behind: tuple[Future, ...] = ()

    def wait(self, progress: bool, on_progress: Callable[[int, int], None] | None) -> list[Any]:
        """Every block's result, in block order; returns only when every block is in.

        ``on_progress(done, total)`` is called after each block (it decides what to send).
        A failed block raises here as soon as it fails, and the blocks not yet run are
        cancelled (as they are when ``on_progress`` raises). The results are gathered once, at
        the end: one request per worker instead of one per block.

        A block whose worker died is rerun by Dask (up to
        ``distributed.scheduler.allowed-failures`` deaths, then ``KilledWorker`` is raised
        here), so block functions must be idempotent (each block writes whole chunks).
        """
        total = len(self.futures)
        try:
            with tqdm(total=total, desc=self.name, unit="block", disable=not progress) as bar:
                # as_completed defaults to the process's newest client's event loop; a second client
                # (a user's own, say) would then own the futures' events and a rerun block's
                # result() would fail with "bound to a different event loop".
                for done, future in enumerate(as_completed(self.futures.values(), loop=self.client.loop), start=1):
                    if future.status != "finished":
                        future.result()  # raises the block's error
                    bar.update()
                    if on_progress:
                        on_progress(done, total)
        except BaseException:
            # a failed run's work is not done for nothing: tasks already running finish, the
            # others are dropped, and so is the work waiting on them (QC)
            self.client.cancel([*self.futures.values(), *self.behind])
            raise
        return self.client.gather([self.futures[i] for i in sorted(self.futures)])


def submit_blocks(
    client: Client,
    name: str,
    function: Callable,
    args: list[tuple],
    *,
    resources: dict[str, float] | None = None,
    first: Sequence[int] = (),
) -> BlockRun:
    """Submit ``function(*args[i])`` for each block ``i`` on Dask: blocks ``first`` first
    (for work that needs them early), then the others in order."""
    run = uuid.uuid4().hex
    order = [*first, *(i for i in range(len(args)) if i not in first)]
    futures = {
        i: client.submit(function, *args[i], pure=False, key=f"{name}-block-{i}-{run}", resources=resources)
        for i in order
    }
    return BlockRun(client, name, futures)


def blocks_holding(blocks: list[tuple[int, int]], rows: Sequence[int]) -> list[int]:
    """Indices of the ``[start, stop)`` blocks that hold any of ``rows``."""
    return [i for i, (start, stop) in enumerate(blocks) if any(start <= row < stop for row in rows)]


def run_blocks(
    client: Client,
    name: str,
    function: Callable,
    args: list[tuple],
    progress: bool,
    on_progress: Callable[[int, int], None] | None,
    *,
    resources: dict[str, float] | None = None,
) -> list[Any]:
    """Submit ``function(*a)`` for each ``a`` in ``args`` on Dask and wait for them all
    (see :meth:`BlockRun.wait`); results in block order."""
    return submit_blocks(client, name, function, args, resources=resources).wait(progress, on_progress)
