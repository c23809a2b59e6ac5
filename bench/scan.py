"""A whole simulated N^3 scan through the real pipeline, with 1 and then 2 Dask workers.

N rows x N columns x N angles over 180 degrees of a seeded foam (``make_foam``, 5000
photons per pixel), acquired by ``tomo_scan`` in a real RunEngine on the simulated
beamline, with ``TomoPipeline`` subscribed; results go to the embedded Tiled server
(SQLite + Zarr) on loopback, and blocks run on a Dask ``LocalCluster`` (``tomolive.engine.cluster.local_cluster``: processes, one
thread per worker) of 1 worker, then of 2 workers (a fresh pipeline, a new scan uid, the
same frames: same phantom, same noise seed).

Reported per run:

- acquisition: simulator + RunEngine + the callback's per-frame work (normalise, spool),
  from the start document to the stop document; the callback's share is shown apart;
- processing (the figure of merit): stop document -> ``pipe.wait(uid)`` returns complete
  (centre finding, block reconstruction on Dask, Tiled writes, status update);
- its three phases: before the first block task (the last frame's spooling, the centre
  search, submitting), the block phase (block and QC tasks: the part that more workers
  speed up, whose ratio is printed beside the bare ceiling) and after the last task (the
  QC result, the final status);
- end to end: ``RE(...)`` called -> ``pipe.wait(uid)`` returns;
- peak RSS of each Dask worker, of this (client) process and of the Tiled server during
  processing, polled every 0.2 s with psutil, beside the worker's RSS just before;
- CPU seconds of each of those processes during processing, and their sum as a share of the
  CPUs this process may use (near 100 %: processing is CPU-bound, and the client's and the
  server's CPU is taken from the workers);
- what else the machine did meanwhile: CPU seconds of every other process and the kernel,
  and the share of the vCPUs' time the hypervisor gave to other guests (steal), which on a
  shared host is what makes one round slower than the next.

The machine's own ceiling is measured beside it, in every round: the same 32 block tasks
(read the rows from a spool of the same layout, ``reconstruct``, write a Zarr chunk as
tomolive writes its volumes: same codec, flushed to disk) on a bare ``local_cluster`` of 1
and then 2 workers, with no RunEngine, Tiled, centre search, QC or progress. Two processes
on this machine's two vCPUs slow each other's memory-bound work, so bare tasks do not
scale 2x either; the pipeline's speed-up is printed beside that ceiling.

The worker counts are run in turn ``--repeat`` times (1, 2, 1, 2, 1, 2 by default): this
machine's speed drifts by 20 % from one minute to the next, so the figure of merit is the
median processing time per worker count and the speed-up is the ratio of those medians
(the median of the run-by-run ratios is printed beside it).

Then the first 1-worker and 2-worker volumes are read back through Tiled and compared (max
|difference| over the value range). The projections of the phantom are computed once and
cached, so later scans' acquisition is faster than the first: compare processing times,
not acquisition.

    PYTHONPATH=src python bench/scan.py                # 512^3, 3 rounds
    PYTHONPATH=src python bench/scan.py --quick        # 256^3
    PYTHONPATH=src python bench/scan.py --repeat 1     # one round
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import zarr
from _common import append_result, machine_info
from bluesky import RunEngine
from distributed import Client, wait

from tomolive.callbacks import TomoPipeline
from tomolive.config import Settings
from tomolive.engine.blocks import row_blocks
from tomolive.engine.cluster import local_cluster
from tomolive.engine.provenance import compute_device
from tomolive.plans import tomo_scan
from tomolive.recon import reconstruct
from tomolive.server import SERVER_MODULE, running_server
from tomolive.sim.devices import make_sim_beamline
from tomolive.sim.phantoms import make_foam
from tomolive.store import VOLUME_COMPRESSORS, TiledResult, connect
from tomolive.store.internals import open_for_writing
from tomolive.techniques.tomo import PipelineParams
from tomolive.techniques.tomo.spool import ProjectionSpool, read_rows

MB = 1024.0**2
POLL_S = 0.2


class CachedPhantom:
    """A phantom whose exact projections are computed once per angle (same numbers)."""

    def __init__(self, phantom):
        self.phantom = phantom
        self.shape = phantom.shape
        self.cache: dict[float, np.ndarray] = {}
        self.seconds = 0.0

    def project(self, theta: float) -> np.ndarray:
        if theta not in self.cache:
            t0 = time.perf_counter()
            self.cache[theta] = self.phantom.project(theta)
            self.seconds += time.perf_counter() - t0
        return self.cache[theta].copy()


class DocTimer:
    """RunEngine subscriber: times start/stop documents and the pipeline's own per-document work."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.t_start = self.t_stop = None
        self.callback_seconds = 0.0

    def before(self, name, doc):
        if name == "start":
            self.t_start = time.perf_counter()
        elif name == "stop":
            self.t_stop = time.perf_counter()

    def __call__(self, name, doc):
        t0 = time.perf_counter()
        self.pipe(name, doc)
        if name != "stop":  # the stop handler only hands the work to a thread
            self.callback_seconds += time.perf_counter() - t0


class RssMonitor(threading.Thread):
    """Polls the RSS of this process, the Dask workers and the Tiled server every POLL_S."""

    def __init__(self, worker_pids, server_pid):
        super().__init__(daemon=True)
        self.procs = {"client": psutil.Process()}
        self.procs.update({f"worker-{i}": psutil.Process(p) for i, p in enumerate(worker_pids)})
        if server_pid is not None:
            self.procs["tiled-server"] = psutil.Process(server_pid)
        self.samples: list[tuple[float, dict[str, int]]] = []
        self.cpu: list[tuple[float, dict[str, float]]] = []
        self.machine_cpu: list[tuple[float, dict[str, float]]] = []
        self.halt = threading.Event()

    def sample(self):
        rss, cpu = {}, {}
        for name, proc in self.procs.items():
            try:
                rss[name] = proc.memory_info().rss
                times = proc.cpu_times()
                cpu[name] = times.user + times.system + times.children_user + times.children_system
            except psutil.Error:
                pass
        now = time.perf_counter()
        self.samples.append((now, rss))
        self.cpu.append((now, cpu))
        self.machine_cpu.append((now, machine_cpu()))

    def cpu_seconds(self, t0, series=None):
        """CPU seconds each process (or, with ``series=self.machine_cpu``, the whole machine)
        used from the last sample before t0 to the end, and the seconds between those samples."""
        series = self.cpu if series is None else series
        t_before, before = ([(t, c) for t, c in series if t <= t0] or [series[0]])[-1]
        t_end, end = series[-1]
        return {k: round(end[k] - before.get(k, 0.0), 2) for k in end}, t_end - t_before

    def run(self):
        while not self.halt.is_set():
            self.sample()
            self.halt.wait(POLL_S)
        self.sample()

    def peaks(self, t0, t1=float("inf")):
        """Peak RSS (MB) of each process over samples taken in [t0, t1]."""
        out: dict[str, float] = {}
        for t, rss in self.samples:
            if t0 <= t <= t1:
                for name, value in rss.items():
                    out[name] = max(out.get(name, 0.0), value / MB)
        return {k: round(v, 1) for k, v in out.items()}

    def last_before(self, t):
        """RSS (MB) in the last sample taken before t."""
        before = [rss for ts, rss in self.samples if ts <= t]
        return {k: round(v / MB, 1) for k, v in (before[-1] if before else {}).items()}


def machine_cpu() -> dict[str, float]:
    """CPU seconds of the whole machine so far: busy (every process, the kernel) and stolen
    (the hypervisor ran another guest on our vCPUs: time this machine lost)."""
    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    return {"busy": busy, "steal": getattr(t, "steal", 0.0)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiled_server_pid() -> int | None:
    for child in psutil.Process().children(recursive=True):
        try:
            if SERVER_MODULE in child.cmdline():
                return child.pid
        except psutil.Error:
            continue
    return None


def _warm_worker(uri, api_key, n, rows, cold):
    """Warm a worker as a long-lived cluster would be (unless ``cold``): import the engine,
    connect to Tiled once (first connect imports the Tiled client: ~2 s), and reconstruct
    one block of random data of the scan's size (FFTW plans are measured once per process
    and size: ~3 s). Returns the pid and the seconds this took. Then wrap
    the three steps of a block task (read spool rows, reconstruct, write to Tiled: connect
    + write) and the QC task in timers. The wrappers only log start/end times; behaviour is
    unchanged."""
    import tomolive.store.volume as st
    import tomolive.techniques.tomo.analysis as an
    import tomolive.techniques.tomo.reconstruction as pl

    if getattr(pl, "_bench_log", None) is None:
        log: list[tuple[str, float, float]] = []
        pl._bench_log = log

        def timed(owner, name, label):
            fn = getattr(owner, name)

            def wrapper(*args, **kwargs):
                t0 = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    log.append((label, t0, time.perf_counter()))

            setattr(owner, name, wrapper)

        timed(pl, "read_rows", "read")
        timed(pl, "reconstruct", "recon")
        timed(st.VolumeTarget, "write_block", "write")
        timed(st, "from_uri", "connect")
        timed(an, "measure_quality", "qc")  # the QC task, which shares the workers with the blocks
    t0 = time.perf_counter()
    if not cold:
        st.from_uri(uri, api_key=api_key)
        _warm_reconstruct(n, rows)
        pl._bench_log.clear()
    return os.getpid(), round(time.perf_counter() - t0, 2)


def _worker_log():
    import tomolive.techniques.tomo.reconstruction as pl

    return list(pl._bench_log)


def task_breakdown(logs, t0, t1):
    """Per step: total seconds over all workers, and the first reconstruct of each worker
    (FFTW/finufft planning); busy fraction of the processing window per worker (block steps).

    ``phases_s`` splits processing (stop ``t0`` -> complete ``t1``) in three: ``before_blocks``
    (the stop document's last frame, the centre search, submitting), ``blocks`` (first block
    read -> last block or QC task done: the part more workers speed up) and ``after_blocks``
    (QC result, final status; with ``PipelineParams`` this bench does not set, also
    segmentation or denoising). Worker clocks are ``perf_counter``, shared by the processes.
    None when no block ran (the run failed: ``run_once`` then raises with its reason).
    """
    out: dict[str, float] = {}
    first_recon, busy = [], []
    starts, ends = [], []
    for log in logs:
        recons = [e - s for label, s, e in log if label == "recon"]
        first_recon.append(round(recons[0], 2) if recons else None)
        for label, s, e in log:
            out[label] = out.get(label, 0.0) + (e - s)
        busy.append(round(sum(e - s for label, s, e in log if label not in ("connect", "qc")) / (t1 - t0), 2))
        starts += [s for label, s, _ in log if label == "read"]
        ends += [e for label, _, e in log if label in ("write", "qc")]
    out = {k: round(v, 2) for k, v in out.items()}
    out["write_excl_connect"] = round(out.get("write", 0.0) - out.get("connect", 0.0), 2)
    phases = None
    if starts and ends:
        phases = {"before_blocks": min(starts) - t0, "blocks": max(ends) - min(starts), "after_blocks": t1 - max(ends)}
        phases = {k: round(v, 3) for k, v in phases.items()}
    return {"seconds": out, "first_recon_s": first_recon, "busy_fraction": busy, "phases_s": phases}


def run_once(n_workers, phantom, angles, settings, params, scratch, sample, cold):
    """One scan through a fresh pipeline on a fresh n-worker cluster; timings and memory."""
    cluster = local_cluster(n_workers, dashboard_address=None)  # what TomoPipeline starts by default
    client = Client(cluster)
    try:
        n = phantom.shape[2]
        warm = list(client.run(_warm_worker, settings.uri, settings.api_key, n, params.rows_per_block, cold).values())
        worker_pids = [pid for pid, _ in warm]
        pipe = TomoPipeline.from_uri(
            settings.uri, api_key=settings.api_key, dask=client, params=params, scratch_dir=scratch, progress=False
        )
        timer = DocTimer(pipe)
        RE = RunEngine({})
        RE.subscribe(timer.before)
        RE.subscribe(timer)
        bl = make_sim_beamline(phantom, photons=5000, seed=0)  # same seed: same noise
        project_before = phantom.seconds
        monitor = RssMonitor(worker_pids, tiled_server_pid())
        monitor.start()
        t_call = time.perf_counter()
        (uid,) = RE(
            tomo_scan(
                bl.detector,
                bl.rotation,
                angles,
                n_darks=10,
                n_flats=10,
                shutter=bl.shutter,
                sample_x=bl.sample_x,
                sample_out=bl.sample_out,
                md={"sample": sample},
            )
        )
        result = pipe.wait(uid)
        t_done = time.perf_counter()
        monitor.halt.set()
        monitor.join()
        pipe.close()
        breakdown = task_breakdown(client.run(_worker_log).values(), timer.t_stop, t_done)
    finally:
        client.close()
        cluster.close()
    if result.status != "complete":
        raise RuntimeError(f"scan {uid} ended {result.status}: {result.reason}")
    cpu, cpu_span_s = monitor.cpu_seconds(timer.t_stop)
    machine, _ = monitor.cpu_seconds(timer.t_stop, monitor.machine_cpu)
    n_cpus = len(os.sched_getaffinity(0))
    return {
        "workers": n_workers,
        "uid": uid,
        "warm_up_s": None if cold else [sec for _, sec in warm],
        "acquisition_s": round(timer.t_stop - timer.t_start, 2),
        "projector_s": round(phantom.seconds - project_before, 2),
        "callback_s": round(timer.callback_seconds, 2),
        "processing_s": round(t_done - timer.t_stop, 2),
        "end_to_end_s": round(t_done - t_call, 2),
        "rss_before_processing_mb": monitor.last_before(timer.t_stop),
        "peak_rss_acquisition_mb": monitor.peaks(timer.t_start, timer.t_stop),
        "peak_rss_processing_mb": monitor.peaks(timer.t_stop),
        "cpu_s_processing": cpu,
        "cpu_busy_fraction": round(sum(cpu.values()) / (cpu_span_s * n_cpus), 2),
        "other_cpu_s_processing": round(machine["busy"] - sum(cpu.values()), 2),
        "steal_fraction": round(machine["steal"] / (cpu_span_s * psutil.cpu_count()), 3),
        "tasks": breakdown,
    }


def _bare_block(spool: str, out: str, rows: tuple[int, int], angles: np.ndarray, center: float) -> None:
    """A recon block's work without the pipeline: read its rows, reconstruct, write its chunk."""
    volume = reconstruct(read_rows(spool, *rows), angles, center=center, ncore=1)
    open_for_writing(out)[rows[0] : rows[1]] = volume


def _warm_reconstruct(n: int, rows: int) -> None:
    """FFTW/finufft planning for the scan's block size, once per worker (as in the pipeline runs)."""
    block = np.random.default_rng(0).random((n, rows, n), dtype=np.float32)
    reconstruct(block, np.linspace(0, np.pi, n, endpoint=False), center=(n - 1) / 2, ncore=1)


def make_bare_spool(phantom: CachedPhantom, angles_deg: np.ndarray, rows_per_block: int, scratch: str) -> str:
    """A projection spool laid out as the pipeline's (exact projections: same work per block)."""
    n = phantom.shape[2]
    spool = ProjectionSpool.create(
        Path(scratch) / "bare-spool.zarr", (phantom.shape[0], n), rows_per_block, len(angles_deg)
    )
    for theta in angles_deg:
        spool.append(phantom.project(float(theta)).astype(np.float32), float(theta))
    spool.finish()
    return str(spool.path)


def run_bare(n_workers: int, spool: str, scratch: str, n: int, rows_per_block: int) -> float:
    """Seconds for every block task on a fresh bare ``local_cluster`` of ``n_workers`` (warmed)."""
    angles = np.deg2rad(np.linspace(0.0, 180.0, n, endpoint=False))
    out = str(Path(scratch) / f"bare-out-{n_workers}.zarr")
    zarr.create_array(
        out,
        shape=(n, n, n),
        chunks=(rows_per_block, n, n),
        dtype="float32",
        compressors=VOLUME_COMPRESSORS,
        overwrite=True,
    )
    blocks = row_blocks(n, rows_per_block)
    with local_cluster(n_workers, dashboard_address=None) as cluster, Client(cluster) as client:
        client.run(_warm_reconstruct, n, rows_per_block)
        t0 = time.perf_counter()
        wait([client.submit(_bare_block, spool, out, rows, angles, (n - 1) / 2, pure=False) for rows in blocks])
        return round(time.perf_counter() - t0, 2)


def compare_volumes(tiled, uid_a, uid_b, rows=64):
    """Max |a - b| over the value range of a, read slab by slab through Tiled."""
    a_node, b_node = tiled["processed"][uid_a], tiled["processed"][uid_b]
    ra, rb = a_node["recon"], b_node["recon"]
    if ra.shape != rb.shape:
        raise RuntimeError(f"recon shapes differ: {ra.shape} vs {rb.shape}")
    lo, hi, diff = np.inf, -np.inf, 0.0
    for z in range(0, ra.shape[0], rows):
        a, b = ra[z : z + rows], rb[z : z + rows]
        lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
        diff = max(diff, float(np.abs(a - b).max()))
    meta = a_node.metadata
    prov = meta.get("provenance", {})
    return {
        "shape": list(ra.shape),
        "max_abs_diff": diff,
        "value_range": [lo, hi],
        "rel_diff": diff / (hi - lo),
        "center": prov.get("center"),
        "stages_s": [tiled["processed"][u].metadata["provenance"].get("seconds_per_stage") for u in (uid_a, uid_b)],
        "dask": [tiled["processed"][u].metadata["provenance"].get("dask") for u in (uid_a, uid_b)],
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="N of the N^3 scan (default 512)")
    ap.add_argument("--quick", action="store_true", help="N = 256")
    ap.add_argument("--rows-per-block", type=int, default=PipelineParams().rows_per_block)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=3, help="rounds over the worker counts (default 3)")
    ap.add_argument(
        "--cold",
        action="store_true",
        help="no worker warm-up: each fresh worker pays its Tiled-client import and "
        "FFTW planning inside the timed processing",
    )
    ap.add_argument("--no-save", action="store_true", help="do not append to bench/results")
    args = ap.parse_args(argv)
    n = 256 if args.quick else args.size
    logging.basicConfig(level=logging.WARNING)
    info = machine_info("dask", "distributed", "zarr", "tiled", "bluesky", "finufft", "psutil")
    print(f"{info['cpu_model']}, {info['cores']} cores, load {info['loadavg_1m']}")
    params = PipelineParams(rows_per_block=args.rows_per_block)
    t0 = time.perf_counter()
    phantom = CachedPhantom(make_foam((n, n, n), seed=1))
    foam_s = time.perf_counter() - t0
    angles = np.linspace(0.0, 180.0, n, endpoint=False)
    block_mb = args.rows_per_block * n * n * 4 / MB
    print(
        f"scan {n} rows x {n} cols x {n} angles; volume {n**3 * 4 / MB:.0f} MB float32; "
        f"{-(-n // args.rows_per_block)} blocks of {args.rows_per_block} rows "
        f"({block_mb:.0f} MB in, {block_mb:.0f} MB out); foam made in {foam_s:.1f} s",
        flush=True,
    )
    runs = []
    with tempfile.TemporaryDirectory(prefix="tomolive-bench-") as tmp:
        settings = Settings(data_dir=Path(tmp) / "data", port=free_port())
        with running_server(settings) as settings:
            tiled = connect(settings.uri, api_key=settings.api_key)
            if not args.cold:  # first-use costs paid once per session, not per scan:
                compute_device()  # provenance imports torch (~3 s)
                warm = TiledResult.create(tiled, "bench-warm-up", {"sample": "warm-up"})
                warm.new_volume("recon", (16, 16, 16), 16)  # server's first array (~2 s)
            bare_spool = make_bare_spool(phantom, angles, args.rows_per_block, tmp)
            bare: list[tuple[int, float]] = []
            for round_, k in ((r, k) for r in range(args.repeat) for k in args.workers):
                print(f"\nround {round_ + 1}/{args.repeat}, {k} worker(s): scanning ...", flush=True)
                run = run_once(k, phantom, angles, settings, params, tmp, f"bench-foam-{n}", args.cold)
                runs.append(run)
                bare.append((k, run_bare(k, bare_spool, tmp, n, args.rows_per_block)))
                print(f"  bare block tasks (the machine's ceiling): {bare[-1][1]:.2f} s", flush=True)
                print(
                    f"  acquisition {run['acquisition_s']:.1f} s (projector {run['projector_s']:.1f} s, "
                    f"callback {run['callback_s']:.1f} s); processing {run['processing_s']:.2f} s; "
                    f"end to end {run['end_to_end_s']:.1f} s",
                    flush=True,
                )
                print(
                    f"  phases {run['tasks']['phases_s']} s; worker task seconds (all workers) "
                    f"{run['tasks']['seconds']}; first "
                    f"reconstruct per worker {run['tasks']['first_recon_s']} s; busy "
                    f"{run['tasks']['busy_fraction']}; CPU s during processing "
                    f"{run['cpu_s_processing']}, {run['cpu_busy_fraction']:.0%} of this machine's CPUs; "
                    f"other processes and the kernel {run['other_cpu_s_processing']} CPU s; stolen by the "
                    f"hypervisor {run['steal_fraction']:.1%}",
                    flush=True,
                )
            first = {}
            for run in runs:
                first.setdefault(run["workers"], run)
            check = (
                compare_volumes(tiled, first[args.workers[0]]["uid"], first[args.workers[-1]]["uid"])
                if len(first) > 1
                else None
            )
    client_maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    medians = {k: float(np.median([r["processing_s"] for r in runs if r["workers"] == k])) for k in args.workers}
    base = medians[args.workers[0]]
    print(
        f"\n{n}^3 scan, rows_per_block={args.rows_per_block}, "
        f"{'cold' if args.cold else 'warmed'} workers: processing = stop document -> "
        f"pipe.wait() complete"
    )
    print(
        f"{'round':>5} {'workers':>7} {'processing s':>13} {'speed-up':>9} {'end-to-end s':>13} "
        f"{'worker RSS MB (before -> peak)':>34} {'client peak MB':>15} {'tiled peak MB':>14}"
    )
    per_round = len(args.workers)
    for i, run in enumerate(runs):
        # against the same round's first worker count: the machine's speed drifts between rounds
        run["speedup"] = round(runs[i - i % per_round]["processing_s"] / run["processing_s"], 2)
        peak, before = run["peak_rss_processing_mb"], run["rss_before_processing_mb"]
        workers = ", ".join(f"{before.get(w, 0):.0f}->{peak[w]:.0f}" for w in sorted(peak) if w.startswith("worker"))
        print(
            f"{i // per_round + 1:>5} {run['workers']:>7} {run['processing_s']:>13.2f} {run['speedup']:>8.2f}x "
            f"{run['end_to_end_s']:>13.1f} {workers:>34} {peak.get('client', 0):>15.0f} "
            f"{peak.get('tiled-server', 0):>14.0f}"
        )
    speedups = {k: round(base / medians[k], 2) for k in args.workers}
    ratio_medians = {k: float(np.median([r["speedup"] for r in runs if r["workers"] == k])) for k in args.workers}
    bare_medians = {k: float(np.median([s for w, s in bare if w == k])) for k in args.workers}
    bare_speedups = {k: round(bare_medians[args.workers[0]] / bare_medians[k], 2) for k in args.workers}
    phase_medians = {
        k: {
            phase: float(np.median([r["tasks"]["phases_s"][phase] for r in runs if r["workers"] == k]))
            for phase in runs[0]["tasks"]["phases_s"]
        }
        for k in args.workers
    }
    for k in args.workers:
        print(
            f"median of {args.repeat}: {k} worker(s) {medians[k]:.2f} s -> speed-up {speedups[k]:.2f}x "
            f"(median of the rounds' ratios {ratio_medians[k]:.2f}x); bare block tasks "
            f"{bare_medians[k]:.2f} s -> {bare_speedups[k]:.2f}x; pipeline / bare "
            f"{speedups[k] / bare_speedups[k]:.2f}; phases {phase_medians[k]} s (block phase "
            f"{phase_medians[args.workers[0]]['blocks'] / phase_medians[k]['blocks']:.2f}x)"
        )
    print(
        f"client process lifetime max RSS {client_maxrss_mb:.0f} MB (holds the cached "
        f"projections, {n**3 * 4 / MB:.0f} MB, and the phantom)"
    )
    if check:
        print(
            f"{args.workers[0]} vs {args.workers[-1]} workers, read back through Tiled: max |diff| "
            f"{check['max_abs_diff']:.3g} over range {check['value_range'][1] - check['value_range'][0]:.3g} "
            f"-> relative {check['rel_diff']:.2e} ({'OK' if check['rel_diff'] < 1e-5 else 'DIFFERENT'})"
        )
        for run, stages, dask in zip(
            (first[args.workers[0]], first[args.workers[-1]]), check["stages_s"], check["dask"]
        ):
            print(f"  {run['workers']} worker(s): seconds per stage {stages}; dask {dask}")
        c = check["center"] or {}
        print(f"  centre found {c.get('center')} by {c.get('method')} (true {(n - 1) / 2})")
    info["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    if not args.no_save:
        path = append_result(
            "scan",
            {
                "bench": "scan",
                "size": n,
                "angles": n,
                "rows_per_block": args.rows_per_block,
                "block_mb": round(block_mb, 1),
                "volume_mb": round(n**3 * 4 / MB, 1),
                "photons": 5000,
                "cold_workers": args.cold,
                "machine": info,
                "repeat": args.repeat,
                "median_processing_s": {str(k): v for k, v in medians.items()},
                "speedup_of_medians": {str(k): v for k, v in speedups.items()},
                "median_round_speedup": {str(k): v for k, v in ratio_medians.items()},
                "bare_block_tasks_s": [[k, sec] for k, sec in bare],
                "bare_speedup_of_medians": {str(k): v for k, v in bare_speedups.items()},
                "median_phases_s": {str(k): v for k, v in phase_medians.items()},
                "runs": runs,
                "client_lifetime_maxrss_mb": round(client_maxrss_mb, 1),
                "check": check,
            },
        )
        print(f"\nappended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
