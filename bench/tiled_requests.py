"""Server CPU per request: tomolive's Tiled server beside stock Tiled serving the same profile.

Both serve ``tiled_config/sqlite.yml`` (multi-user, scoped API keys) from a fresh data dir
on loopback; the only difference is tomolive's one API-key lookup per request
(:mod:`tomolive.store.internals`). Stock Tiled is ``tomolive.server.tiled_serve`` with that change
left out: the same database creation, then ``tiled serve config``. With the writer key, each
server answers the requests a scan makes while its workers run, ``--requests`` of each
kind per batch, ``--batches`` batches in turn (server A, server B, A, B, ...):

- a metadata read of a scan container (what a Tiled client or the web view polls);
- a metadata PATCH of its progress (``TiledResult.update``: a progress report);
- a read of one 64x64 tile of a float32 array (what a viewer slicing a volume asks for).

Reported: the server process's CPU milliseconds per request (psutil), median over the
batches, and wall milliseconds per request seen by the client. On a beamline workstation
the server's CPU is taken from the Dask workers.

    PYTHONPATH=src python bench/tiled_requests.py
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil
from _common import append_result, machine_info
from scan import free_port
from tiled.client import from_uri

from tomolive.config import Settings
from tomolive.server import server_command, wait_until_up
from tomolive.server.keys import issue_writer_key
from tomolive.store import TiledResult

STOCK = (
    "import sys; from tomolive import tiled_serve; from tomolive.store import internals; "
    "internals.share_api_key_lookups = lambda: None; tiled_serve.main(sys.argv[1:])"
)
"""Stock Tiled on the same profile: :mod:`tomolive.server.tiled_serve` without its one change to Tiled."""


@contextmanager
def serving(data_dir: Path, port: int, stock: bool) -> Iterator[tuple[str, str, psutil.Process]]:
    """A server on ``port`` over ``data_dir``: its URI, a writer key and its process."""
    password = secrets.token_hex(16)
    command, env = server_command(Settings(data_dir=data_dir, port=port), password)
    if stock:
        command = [sys.executable, "-c", STOCK, *command[3:]]
    with open(data_dir / "server.log", "ab") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        uri = f"http://127.0.0.1:{port}"
        wait_until_up(uri, process=process)
        yield uri, issue_writer_key(uri, password), psutil.Process(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)


def requests_of(uri: str, api_key: str) -> dict[str, Callable[[int], object]]:
    """The kinds of request timed, each a function of its index."""
    client = from_uri(uri, api_key=api_key)
    record = TiledResult.create(client, "bench-requests", {"sample": "bench"})
    record.node.write_array(np.random.default_rng(0).random((512, 512), dtype=np.float32), key="slice")
    container = record.node
    tile = container["slice"]
    return {
        "metadata read": lambda i: container.refresh().metadata,
        "progress PATCH": lambda i: record.update(progress={"stage": "recon", "done": i, "total": 32}),
        "64x64 tile read": lambda i: tile[64 * (i % 8) : 64 * (i % 8) + 64, :64],
    }


def batch(call: Callable[[int], object], server: psutil.Process, n: int) -> tuple[float, float]:
    """Server CPU ms and client wall ms per request over ``n`` requests."""
    cpu0, t0 = sum(server.cpu_times()[:2]), time.perf_counter()
    for i in range(n):
        call(i)
    wall = time.perf_counter() - t0
    return (sum(server.cpu_times()[:2]) - cpu0) / n * 1e3, wall / n * 1e3


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20, help="requests of each kind per batch")
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--no-save", action="store_true", help="do not append to bench/results")
    args = ap.parse_args(argv)
    info = machine_info("tiled", "fastapi", "sqlalchemy")
    print(f"{info['cpu_model']}, {info['cores']} cores, load {info['loadavg_1m']}")
    names = {False: "tomolive", True: "stock Tiled"}
    samples: dict[str, dict[str, list[tuple[float, float]]]] = {name: {} for name in names.values()}
    with (
        tempfile.TemporaryDirectory(prefix="tomolive-bench-") as tmp,
        serving(Path(tmp, "ours"), free_port(), stock=False) as ours,
        serving(Path(tmp, "stock"), free_port(), stock=True) as stock,
    ):
        servers = {"tomolive": (ours[2], requests_of(*ours[:2])), "stock Tiled": (stock[2], requests_of(*stock[:2]))}
        for _, calls in servers.values():  # first requests (imports, caches) are not timed
            for call in calls.values():
                call(0)
        for _ in range(args.batches):
            for name, (process, calls) in servers.items():
                for kind, call in calls.items():
                    samples[name].setdefault(kind, []).append(batch(call, process, args.requests))
    medians = {
        name: {
            kind: {
                "server_cpu_ms": round(statistics.median(s[0] for s in runs), 1),
                "wall_ms": round(statistics.median(s[1] for s in runs), 1),
            }
            for kind, runs in kinds.items()
        }
        for name, kinds in samples.items()
    }
    print(f"\nper request, median of {args.batches} batches of {args.requests}:")
    print(
        f"{'request':18s} {'tomolive CPU':>13s} {'stock CPU':>10s} {'ratio':>6s}   {'tomolive wall':>13s} {'stock wall':>10s}"
    )
    for kind in medians["tomolive"]:
        ours_, stock_ = medians["tomolive"][kind], medians["stock Tiled"][kind]
        print(
            f"{kind:18s} {ours_['server_cpu_ms']:10.1f} ms {stock_['server_cpu_ms']:7.1f} ms "
            f"{stock_['server_cpu_ms'] / ours_['server_cpu_ms']:5.2f}x   "
            f"{ours_['wall_ms']:10.1f} ms {stock_['wall_ms']:7.1f} ms"
        )
    if not args.no_save:
        record = {
            "bench": "tiled_requests",
            "requests": args.requests,
            "batches": args.batches,
            "machine": info,
            "median_per_request": medians,
        }
        print("appended to", append_result("tiled_requests", record))


if __name__ == "__main__":
    main()
