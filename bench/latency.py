"""Live latency: first preview, stop -> volume in Tiled vs offline, and the frame rate kept.

For simulated N^3 foam scans (N rows x N cols x N angles, 5000 photons/pixel) acquired by
``tomo_scan`` in a real RunEngine at a paced frame rate, with ``TomoPipeline`` subscribed
(embedded Tiled server on loopback, 2-worker Dask LocalCluster, warmed as a beamline's
long-lived cluster would be):

(a) first frame -> first preview in Tiled (``processed/<uid>/preview`` readable);
(b) stop document -> ``recon`` complete in Tiled;
    compared with the same scan processed offline after it ends: ``tomolive process
    <file>`` as a fresh command on the raw frames saved as DXchange HDF5 (what a user runs
    after a scan today), and the same offline path in this process on the warm cluster;
(c) the RunEngine's frame rate (primary stream), paced at the detector rate and unpaced,
    without tomolive, with ``TomoPipeline`` in its process, and with only a 0MQ Publisher
    (the RunEngine's share when ``tomolive worker`` runs out of process).

Projections are computed once before timing, so the simulator's projector is not in (c).

    PYTHONPATH=src python bench/latency.py              # 256^3 and 512^3
    PYTHONPATH=src python bench/latency.py --sizes 256
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _common import append_result, machine_info
from bluesky import RunEngine
from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp
from bluesky.callbacks.zmq import Publisher
from distributed import Client
from scan import CachedPhantom, _warm_worker, free_port

from tomolive.callbacks import TomoPipeline
from tomolive.config import Settings
from tomolive.engine.cluster import local_cluster
from tomolive.io.formats import open_scan
from tomolive.io.offline import process_scan
from tomolive.io.writers import write_dxchange
from tomolive.plans import tomo_scan
from tomolive.server import running_server
from tomolive.sim.devices import make_sim_beamline
from tomolive.sim.phantoms import make_foam
from tomolive.store import connect
from tomolive.wire import pack


def paced(plan, detector, period_s: float):
    """``plan`` with an exposure of ``period_s`` after each trigger of ``detector``."""

    def expose(msg):
        if msg.command == "trigger" and msg.obj is detector and period_s > 0:
            return None, bps.sleep(period_s)
        return None, None

    return (yield from bpp.plan_mutator(plan, expose))


class Frames:
    """RunEngine subscriber: times primary events and (optionally) keeps the raw frames."""

    def __init__(self, keep: bool = False):
        self.keep = keep
        self.streams: dict[str, str] = {}
        self.frames: dict[str, list[np.ndarray]] = {"dark": [], "flat": [], "primary": []}
        self.angles: list[float] = []
        self.primary_times: list[float] = []
        self.t_stop = None
        self.uid = None

    def __call__(self, name, doc):
        if name == "start":
            self.uid = doc["uid"]
        elif name == "descriptor":
            self.streams[doc["uid"]] = doc["name"]
        elif name == "event":
            stream = self.streams[doc["descriptor"]]
            if stream == "primary":
                self.primary_times.append(time.perf_counter())
            if self.keep:
                self.frames[stream].append(np.asarray(doc["data"]["sim_det_image"]))
                if stream == "primary":
                    self.angles.append(float(doc["data"]["sim_rotation"]))
        elif name == "stop":
            self.t_stop = time.perf_counter()

    def fps(self) -> float:
        t = self.primary_times
        return (len(t) - 1) / (t[-1] - t[0])


class PreviewWatcher(threading.Thread):
    """Polls Tiled every 0.05 s until run ``uid`` has a readable preview."""

    def __init__(self, settings: Settings, frames: Frames):
        super().__init__(daemon=True)
        self.client = connect(settings.uri, api_key=settings.api_key)
        self.frames = frames
        self.t_preview = None

    def run(self):
        while self.t_preview is None and self.frames.t_stop is None:
            uid = self.frames.uid
            try:
                if uid and uid in self.client["processed"] and "preview" in self.client["processed"][uid]:
                    self.client["processed"][uid]["preview"][0, 0, 0]
                    self.t_preview = time.perf_counter()
            except KeyError:
                pass
            time.sleep(0.05)


def scan_plan(bl, angles, md):
    return tomo_scan(
        bl.detector,
        bl.rotation,
        angles,
        n_darks=10,
        n_flats=10,
        shutter=bl.shutter,
        sample_x=bl.sample_x,
        sample_out=bl.sample_out,
        md=md,
    )


def frame_rates(bl, angles, pipe, fps):
    """Primary-stream frame rate, paced at ``fps`` and unpaced, for three set-ups: nothing
    subscribed; ``TomoPipeline`` in the RunEngine's process; a 0MQ ``Publisher`` (what the
    RunEngine pays when ``tomolive worker`` runs out of process behind the proxy)."""
    RunEngine({})(scan_plan(bl, angles, {"sample": "fps-warm-up"}))  # not timed: warms caches
    out = {}
    for label in ("without", "in_process", "zmq_publisher"):
        for pacing, period in (("paced", 1.0 / fps), ("unpaced", 0.0)):
            frames = Frames()
            RE = RunEngine({})
            RE.subscribe(frames)
            publisher = Publisher(f"127.0.0.1:{free_port()}", serializer=pack) if label == "zmq_publisher" else None
            if label == "in_process":
                RE.subscribe(pipe)
            elif publisher is not None:
                RE.subscribe(publisher)
            (uid,) = RE(paced(scan_plan(bl, angles, {"sample": f"fps-{label}"}), bl.detector, period))
            if publisher is not None:  # nothing listens: drop queued messages or zmq_ctx_term blocks
                publisher._context.destroy(linger=0)
            if label == "in_process":
                pipe.wait(uid)  # let the reconstruction finish before the next measurement
            out[f"{label}_{pacing}"] = round(frames.fps(), 1)
    for label in ("in_process", "zmq_publisher"):
        for pacing in ("paced", "unpaced"):
            out[f"kept_{label}_{pacing}"] = round(out[f"{label}_{pacing}"] / out[f"without_{pacing}"], 3)
    return out


def offline_command(path: Path, settings: Settings, env: dict) -> float:
    """Wall seconds of ``tomolive process <path>`` as a fresh command."""
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tomolive.cli",
            "process",
            str(path),
            "--uri",
            settings.uri,
            "--api-key",
            settings.api_key,
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    return time.perf_counter() - t0


def run_size(n, fps, settings, client, scratch):
    phantom = CachedPhantom(make_foam((n, n, n), seed=1))
    angles = np.linspace(0.0, 180.0, n, endpoint=False)
    t0 = time.perf_counter()
    for theta in np.deg2rad(angles):
        phantom.project(float(theta))
    print(f"  {n}^3: projections precomputed in {time.perf_counter() - t0:.1f} s", flush=True)
    bl = make_sim_beamline(phantom, photons=5000, seed=0)
    client.run(_warm_worker, settings.uri, settings.api_key, n, 16, False)
    pipe = TomoPipeline.from_uri(
        settings.uri,
        api_key=settings.api_key,
        dask=client,
        scratch_dir=scratch,
        outbox_dir=scratch / "outbox",
        progress=False,
    )

    frames = Frames(keep=True)
    watcher = PreviewWatcher(settings, frames)
    RE = RunEngine({})
    RE.subscribe(frames)
    RE.subscribe(pipe)
    watcher.start()
    (uid,) = RE(paced(scan_plan(bl, angles, {"sample": f"latency-{n}"}), bl.detector, 1.0 / fps))
    result = pipe.wait(uid)
    t_done = time.perf_counter()
    watcher.join()
    assert result.status == "complete", result.reason
    live = {
        "frame_rate_hz": round(frames.fps(), 1),
        "first_preview_s": None if watcher.t_preview is None else round(watcher.t_preview - frames.primary_times[0], 2),
        "stop_to_recon_s": round(t_done - frames.t_stop, 2),
    }
    raw = scratch / f"raw-{n}.h5"
    write_dxchange(
        raw,
        np.stack(frames.frames["primary"]),
        np.stack(frames.frames["flat"]),
        np.stack(frames.frames["dark"]),
        np.asarray(frames.angles),
    )
    del frames
    env = {
        **os.environ,
        "TOMOLIVE_OUTBOX": str(scratch / "outbox"),
        "PYTHONPATH": str(Path(__file__).parents[1] / "src"),
    }
    offline_cmd = offline_command(raw, settings, env)
    t0 = time.perf_counter()
    with open_scan(raw) as scan:
        assert (
            process_scan(scan, f"offline-warm-{n}", pipe.engine, pipe.techniques[0], progress=False).status
            == "complete"
        )
    offline_warm = time.perf_counter() - t0
    rates = frame_rates(bl, angles, pipe, fps)
    pipe.close()
    return {
        "size": n,
        **live,
        "offline_command_s": round(offline_cmd, 2),
        "offline_warm_s": round(offline_warm, 2),
        "live_over_offline_command": round(live["stop_to_recon_s"] / offline_cmd, 3),
        "live_over_offline_warm": round(live["stop_to_recon_s"] / offline_warm, 3),
        "re_frame_rate_hz": rates,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--fps", type=float, default=20.0, help="paced detector frame rate (default 20 Hz)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-save", action="store_true", help="do not append to bench/results")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    info = machine_info("dask", "distributed", "zarr", "tiled", "bluesky", "torch")
    print(f"{info['cpu_model']}, {info['cores']} cores, load {info['loadavg_1m']}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="tomolive-latency-") as tmp:
        settings = Settings(data_dir=Path(tmp) / "data", port=free_port())
        with (
            running_server(settings) as settings,
            local_cluster(args.workers, dashboard_address=None) as cluster,
            Client(cluster) as client,
        ):
            for n in args.sizes:
                rows.append(run_size(n, args.fps, settings, client, Path(tmp)))
    print(
        f"\n{'N':>5} {'fps':>6} {'1st preview s':>14} {'stop->recon s':>14} {'offline cmd s':>14} "
        f"{'ratio':>6} {'offline warm s':>15} {'ratio':>6}"
    )
    for r in rows:
        print(
            f"{r['size']:>5} {r['frame_rate_hz']:>6} {r['first_preview_s']!s:>14} {r['stop_to_recon_s']:>14} "
            f"{r['offline_command_s']:>14} {r['live_over_offline_command']:>6} {r['offline_warm_s']:>15} "
            f"{r['live_over_offline_warm']:>6}"
        )
    print(
        f"\nRunEngine frame rate (Hz) and share kept: {'N':>5} pacing   without  in-process (kept)  0MQ publisher (kept)"
    )
    for r in rows:
        fr = r["re_frame_rate_hz"]
        for pacing in ("paced", "unpaced"):
            print(
                f"{'':41} {r['size']:>5} {pacing:8} {fr[f'without_{pacing}']:>7} {fr[f'in_process_{pacing}']:>11} "
                f"({fr[f'kept_in_process_{pacing}']}) {fr[f'zmq_publisher_{pacing}']:>13} ({fr[f'kept_zmq_publisher_{pacing}']})"
            )
    print("goals: stop->recon <= 0.5 x offline at 512^3; frame rate kept >= 0.95")
    if not args.no_save:
        path = append_result(
            "latency", {"bench": "latency", "fps": args.fps, "workers": args.workers, "rows": rows, "machine": info}
        )
        print(f"appended to {path}")


if __name__ == "__main__":
    main()
