"""Where block tasks run: a Dask ``LocalCluster`` tuned for a machine it shares with the scan,
or a client of an existing scheduler; GPU workers are found by their Dask resource.

Why these settings: docs/hpc.md (allocator) and docs/measurements/engine.md (timings).
"""

from __future__ import annotations

import os
from typing import Any

from dask import config as dask_config
from distributed import Client, LocalCluster

WORKER_ENVIRON = {
    "MALLOC_MMAP_THRESHOLD_": str(64 * 2**20),
    "MALLOC_TRIM_THRESHOLD_": str(256 * 2**20),
    "MALLOC_ARENA_MAX": "1",
}
"""glibc allocator settings for worker processes, set before they start (an environment
variable already set wins): block-sized buffers stay in the heap across tasks instead of
being mapped and zero-filled anew for each block."""


HOUSEKEEPING = {
    "distributed.admin.tick.interval": "500ms",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.profile.interval": "100ms",
    "distributed.worker.memory.monitor-interval": "500ms",
}
"""Dask's periodic work, slowed for a cluster that shares its cores with the scan; every
feature (blocked-loop warnings, profiles, memory limits) is kept."""


def local_cluster(n_workers: int | None = None, **kwargs: Any) -> LocalCluster:
    """A LocalCluster of single-threaded worker processes with :data:`WORKER_ENVIRON`
    and :data:`HOUSEKEEPING`.

    ``n_workers`` defaults to one per core (at most 8); ``kwargs`` go to ``LocalCluster``.
    """
    workers = n_workers or max(1, min(os.cpu_count() or 1, 8))
    environ = {f"distributed.nanny.pre-spawn-environ.{name}": value for name, value in WORKER_ENVIRON.items()}
    with dask_config.set({**HOUSEKEEPING, **environ}):
        return LocalCluster(
            **{"n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": ":0", **kwargs}
        )


def connect_dask(dask: Client | str | None) -> tuple[Client, bool]:
    """A Dask client for ``dask`` (a client, a scheduler address, or None for a :func:`local_cluster`).

    Returns the client and whether the caller owns it (and must close it). A client made here
    is not the process's default, so the user's own ``.compute()`` calls (and Tiled's client,
    which reads arrays through Dask) keep running where they did, not on the scan's workers.
    """
    if isinstance(dask, Client):
        return dask, False
    if isinstance(dask, str):
        return Client(dask, set_as_default=False), True
    return Client(local_cluster(), set_as_default=False), True


GPU = "GPU"
"""The Dask resource GPU workers advertise (``dask worker --resources GPU=1``)."""


def gpu_resources(client: Client) -> dict[str, float] | None:
    """``{"GPU": 1}`` when a worker of ``client``'s cluster advertises a GPU, else None.

    Torch tasks pass this as ``resources=`` so they land on GPU workers; on a cluster
    without the resource they must run anywhere, since a restriction no worker can meet
    leaves tasks waiting forever.
    """
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return {GPU: 1} if any(w.get("resources", {}).get(GPU, 0) > 0 for w in workers) else None
