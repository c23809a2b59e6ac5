"""Soak: N simulated scans back to back at a detector's frame rate; does processing keep up?

A real RunEngine runs N ``tomo_scan`` s of an N^3-sized foam (``--size`` rows x cols x angles,
5000 photons/pixel, 10 darks + 10 flats) one after the other, paced at ``--fps``, with
``TomoPipeline`` subscribed (embedded Tiled server on loopback, Dask LocalCluster warmed as
a beamline's long-lived cluster would be). Scans are not waited for: the pipeline queues
them. The result times come from tomolive's own processed-results events.

Printed:

- scans/hour acquired (the beamline's demand, the peer figure) and scans/hour tomolive
  processed over the same span; whether it kept pace (each scan's result in Tiled before
  the next scan's stop) and the largest backlog (results still pending at a scan's stop);
  its capacity (3600 / median seconds of processing per scan);
- peak RSS of this process (RunEngine, simulator, pipeline; the Tiled server runs in its
  own process) and of each Dask worker, and this process's RSS after each result;
- results lost: scans whose container in Tiled is not ``complete`` (must be 0).

    PYTHONPATH=src python bench/soak.py --scans 5 --size 128
"""

from __future__ import annotations

import argparse
import logging
import resource
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from _common import append_result, machine_info
from bluesky import RunEngine
from distributed import Client
from latency import paced, scan_plan
from scan import CachedPhantom, _warm_worker, free_port

from tomolive.callbacks import TomoPipeline
from tomolive.config import Settings
from tomolive.engine.cluster import local_cluster
from tomolive.server import running_server
from tomolive.sim.devices import make_sim_beamline
from tomolive.sim.phantoms import make_foam
from tomolive.store import connect


class Clock:
    """Start/stop times from the RunEngine, result times (and RSS then) from tomolive's events."""

    def __init__(self):
        self.start: dict[str, float] = {}
        self.stop: dict[str, float] = {}
        self.result: dict[str, tuple[float, str, float]] = {}
        self.lock = threading.Lock()

    def document(self, name: str, doc: dict) -> None:
        if name in ("start", "stop"):
            getattr(self, name)[doc["uid"] if name == "start" else doc["run_start"]] = time.perf_counter()

    def event(self, kind: str, payload: dict) -> None:
        rss_mb = psutil.Process().memory_info().rss / 2**20
        with self.lock:
            self.result[payload["uid"]] = (time.perf_counter(), kind, rss_mb)


def _peak_rss_mb() -> float:
    """This process's peak resident set (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def summarise(uids: list[str], clock: Clock) -> dict:
    start = [clock.start[u] for u in uids]
    stop = [clock.stop[u] for u in uids]
    done = [clock.result[u][0] for u in uids]
    processing = [d - max(s, prev) for s, d, prev in zip(stop, done, [0.0, *done[:-1]])]
    backlog = [sum(1 for j in range(i) if done[j] > stop[i]) for i in range(len(uids))]
    return {
        "acquired_scans_per_hour": round(3600 * len(uids) / (stop[-1] - start[0]), 1),
        "processed_scans_per_hour": round(3600 * len(uids) / (done[-1] - start[0]), 1),
        "kept_pace": all(done[i] <= stop[i + 1] for i in range(len(uids) - 1)),
        "max_backlog_scans": max(backlog),
        "capacity_scans_per_hour": round(3600 / statistics.median(processing), 1),
        "scans": [
            {
                "acquire_s": round(b - a, 2),
                "stop_to_result_s": round(d - b, 2),
                "processing_s": round(p, 2),
                "rss_after_mb": round(clock.result[u][2], 1),
            }
            for u, a, b, d, p in zip(uids, start, stop, done, processing)
        ],
    }


def soak(n_scans: int, n: int, fps: float, settings: Settings, client: Client, scratch: Path) -> dict:
    phantom = CachedPhantom(make_foam((n, n, n), seed=1))
    angles = np.linspace(0.0, 180.0, n, endpoint=False)
    for theta in np.deg2rad(angles):
        phantom.project(float(theta))  # precomputed: the simulator's projector is not timed
    bl = make_sim_beamline(phantom, photons=5000, seed=0)
    client.run(_warm_worker, settings.uri, settings.api_key, n, 16, False)
    clock = Clock()
    with TomoPipeline.from_uri(
        settings.uri,
        api_key=settings.api_key,
        dask=client,
        scratch_dir=scratch,
        outbox_dir=scratch / "outbox",
        progress=False,
    ) as pipe:
        pipe.subscribe(clock.event, kinds=("complete", "failed", "aborted"))
        RE = RunEngine({})
        RE.subscribe(clock.document)
        RE.subscribe(pipe)
        uids = []
        for i in range(n_scans):
            (uid,) = RE(paced(scan_plan(bl, angles, {"sample": f"soak-{n}", "time_step": i}), bl.detector, 1 / fps))
            uids.append(uid)
        for uid in uids:
            pipe.wait(uid)
    processed = connect(settings.uri, api_key=settings.api_key)["processed"]
    lost = [u for u in uids if u not in processed or processed[u].metadata.get("status") != "complete"]
    worker_peaks = client.run(_peak_rss_mb)
    return {
        "size": n,
        "n_scans": n_scans,
        **summarise(uids, clock),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "worker_peak_rss_mb": sorted(round(v, 1) for v in worker_peaks.values()),
        "results_lost": len(lost),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=5)
    ap.add_argument("--size", type=int, default=128, help="rows = columns = angles (default 128)")
    ap.add_argument("--fps", type=float, default=20.0, help="paced detector frame rate (default 20 Hz)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-save", action="store_true", help="do not append to bench/results")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    info = machine_info("dask", "distributed", "zarr", "tiled", "bluesky", "torch", "psutil")
    print(f"{info['cpu_model']}, {info['cores']} cores, load {info['loadavg_1m']}")
    with tempfile.TemporaryDirectory(prefix="tomolive-soak-") as tmp:
        settings = Settings(data_dir=Path(tmp) / "data", port=free_port())
        with (
            running_server(settings) as settings,
            local_cluster(args.workers, dashboard_address=None) as cluster,
            Client(cluster) as client,
        ):
            r = soak(args.scans, args.size, args.fps, settings, client, Path(tmp))
    print(f"\n{'scan':>4} {'acquire s':>10} {'stop->result s':>15} {'processing s':>13} {'RSS after MB':>13}")
    for i, s in enumerate(r["scans"], start=1):
        print(
            f"{i:>4} {s['acquire_s']:>10} {s['stop_to_result_s']:>15} {s['processing_s']:>13} {s['rss_after_mb']:>13}"
        )
    print(f"\n{r['n_scans']} scans of {r['size']}^3 at {args.fps:g} fps")
    print(f"scans/hour acquired (beamline):  {r['acquired_scans_per_hour']}")
    print(
        f"scans/hour processed (tomolive): {r['processed_scans_per_hour']}   kept pace: {r['kept_pace']}   "
        f"max backlog: {r['max_backlog_scans']} scans   capacity: {r['capacity_scans_per_hour']} scans/hour"
    )
    print(f"peak RSS: this process {r['peak_rss_mb']} MB; Dask workers {r['worker_peak_rss_mb']} MB")
    print(f"results lost: {r['results_lost']} (goal: 0)")
    if not args.no_save:
        path = append_result("soak", {"bench": "soak", "fps": args.fps, "workers": args.workers, **r, "machine": info})
        print(f"appended to {path}")


if __name__ == "__main__":
    main()
