"""`tomolive ls` on a server holding many processed scans, beside a client-side listing.

A fresh server on loopback gets ``--scans`` processed containers (half failed, five samples,
a ``recon_shape`` in each one's metadata, as the pipeline writes). Timed, each ``--repeats``
times (median):

- ours: ``tomolive ls`` (filters and newest-first sorting run on the server, one page travels);
- peer: what a Tiled client user writes without server-side queries: walk every container
  of ``processed``, filter and sort its metadata in Python, print the newest 50.

Both unfiltered and with ``--sample --status --since``. The issue's target: under 1 s on 500 scans.

    PYTHONPATH=src python bench/cli_ls.py --scans 500
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from pathlib import Path

from _common import append_result, machine_info
from scan import free_port

from tomolive.cli import main
from tomolive.config import Settings
from tomolive.server import running_server
from tomolive.store import connect, processed_root

FILTERS = ["--sample", "s1", "--status", "complete", "--since", "2026-11-10"]


def fill(uri: str, key: str, n: int) -> None:
    root = processed_root(connect(uri, api_key=key))
    for i in range(n):
        created = f"2026-11-{1 + (i // 24) % 28:02d}T{i % 24:02d}:00:00+00:00"
        md = {"sample": f"s{i % 5}", "status": "failed" if i % 3 == 0 else "complete", "created": created}
        root.create_container(f"scan-{i:04d}", metadata={**md, "recon_shape": [4, 8, 8]})


def ours(uri: str, key: str, filtered: bool) -> None:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["ls", "--uri", uri, "--api-key", key, *(FILTERS if filtered else [])]) == 0


def peer(uri: str, key: str, filtered: bool) -> None:
    rows = []
    for uid, node in processed_root(connect(uri, api_key=key)).items():
        md = node.metadata
        if filtered and not (md["sample"] == "s1" and md["status"] == "complete" and md["created"] >= "2026-11-10"):
            continue
        rows.append((md["created"], uid, md["sample"], md["status"]))
    with contextlib.redirect_stdout(io.StringIO()):
        for row in sorted(rows, reverse=True)[:50]:
            print(*row)


def timed(function, *args, repeats: int) -> float:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(*args)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, running_server(Settings(data_dir=Path(tmp), port=free_port())) as s:
        key = s.api_key or ""
        fill(s.uri, key, args.scans)
        figures = {}
        for filtered in (False, True):
            label = "filtered" if filtered else "all"
            figures[label] = {
                "ours_s": timed(ours, s.uri, key, filtered, repeats=args.repeats),
                "peer_s": timed(peer, s.uri, key, filtered, repeats=args.repeats),
            }
            f = figures[label]
            print(
                f"ls {label:8} on {args.scans} scans: ours {f['ours_s']:.3f} s, client-side listing "
                f"{f['peer_s']:.3f} s ({f['peer_s'] / f['ours_s']:.1f}x); target < 1 s"
            )
    path = append_result(
        "cli_ls",
        {"scans": args.scans, "repeats": args.repeats, "figures": figures, "machine": machine_info("tiled")},
    )
    print(f"appended to {path}")


if __name__ == "__main__":
    main_bench()
