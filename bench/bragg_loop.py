"""The retraining loop on 2 cores: turnaround after a setup change, fine-tune vs scratch, cost model.

One run, a real Tiled server on loopback and a 2-worker Dask LocalCluster:

1. Turnaround. The shipped BraggNN is version 1 in the registry; the edge (read-only key)
   deploys it in a ModelSlot. A detector thread emits simulated frames at ``--fps`` into a
   bounded queue (a frame that finds the queue full is dropped, and counted); the edge
   finds peaks, localises them with the slot's model and feeds the DriftMonitor. At frame
   ``--change-at`` the peak shape changes. Turnaround = first post-change frame -> first
   frame localised by the retrained, deployed version (detect -> label -> fine-tune ->
   validate -> publish -> swap).
2. Fine-tune vs scratch: on the same fit-labelled new peaks, training time to reach the
   fine-tuned model's held-out error, from the store's model and from random weights (scratch
   epochs tried in steps of 5 until one reaches it, so the ratio is measured, not a bound).
3. Cost model (tomolive.ml.cost_model): constants calibrated on the cluster, predictions
   for three scan sizes against measured times of both paths.

    .venv/bin/python bench/bragg_loop.py            # JSON line to bench/results/bragg_loop.jsonl
"""

from __future__ import annotations

import argparse
import copy
import queue
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from distributed import Client
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_result, machine_info

from tomolive.config import Settings
from tomolive.engine.cluster import local_cluster
from tomolive.ml import cost_model
from tomolive.ml.deploy import ModelSlot
from tomolive.ml.loop import retrain
from tomolive.server import running_server
from tomolive.server.keys import create_key
from tomolive.sim.bragg import BraggSimulator, PeakShape, simulate_patches
from tomolive.store import connect
from tomolive.techniques.bragg.braggnn import BraggNN, predict_centres, train
from tomolive.techniques.bragg.default_model import default_model
from tomolive.techniques.bragg.fitting import fit_patches_dask
from tomolive.techniques.bragg.peaks import extract_patches, find_peaks, split_edge
from tomolive.techniques.bragg.retraining import (
    BraggTrainer,
    CentreError,
    FitLabeller,
    bragg_drift_monitor,
    braggnn_registry,
)

PARTS = ("turnaround", "speed", "cost")
REPEATS = 5  # timings are medians of this many runs
SCRATCH_STEP, SCRATCH_MAX = 5, 60  # scratch epochs tried until the fine-tuned error is reached
CHANGED = PeakShape(width=(1.6, 2.4), eta=(0.3, 0.9))  # the setup change: wider, more Lorentzian peaks


def detector(sim: BraggSimulator, frames: queue.Queue, stop: threading.Event, fps: float, change_at: int, n: int):
    """Emit frames at ``fps``; returns counts via the list it fills. Frame ``change_at`` on has the new shape."""
    sent = dropped = 0
    period, start = 1.0 / fps, time.monotonic()
    for index in range(n):
        if stop.is_set():
            break
        if index == change_at:
            sim.set_shape(CHANGED)
        frame = sim.frame(float(index * 0.45 % 180.0))
        try:
            frames.put_nowait((index, frame))
            sent += 1
        except queue.Full:
            dropped += 1
        time.sleep(max(0.0, start + (index + 1) * period - time.monotonic()))
    frames.put(None)
    return sent, dropped


def edge_errors(frame, patches, origins, model) -> float:
    """Median distance (px) of the model's centres from the nearest true centre."""
    if len(patches) == 0 or len(frame.truth) == 0:
        return float("nan")
    found = predict_centres(model, patches) + origins
    distance, _ = cKDTree(frame.truth[:, :2]).query(found)
    return float(np.median(distance[distance < 1.5])) if (distance < 1.5).any() else float("nan")


def turnaround(registry, edge_registry, dask: Client, args) -> dict:
    slot = ModelSlot(edge_registry.load(), edge_registry.deployed())  # the edge reads with a read-only key
    monitor = bragg_drift_monitor(
        slot, registry, dask, threshold=args.threshold, every=5, audit_size=32, min_samples=args.min_samples
    )
    sim = BraggSimulator(shape=(256, 256), n_reflections=4000, seed=7)
    frames: queue.Queue = queue.Queue(maxsize=8)
    stop, counts = threading.Event(), {}
    thread = threading.Thread(
        target=lambda: counts.update(
            zip(("sent", "dropped"), detector(sim, frames, stop, args.fps, args.change_at, 4000))
        )
    )
    thread.start()
    rows, after_swap = [], 0
    t_change = t_swapped = None
    while (item := frames.get()) is not None:
        index, frame = item
        t = time.monotonic()
        centres = find_peaks(frame.image, 30.0, 4)
        patches, origins = extract_patches(frame.image, centres[split_edge(centres, frame.image.shape)])
        model, version = slot.current()
        error = edge_errors(frame, patches, origins, model)
        monitor.observe(index, patches)
        rows.append((index, version, len(patches), error, monitor.retraining))
        if index >= args.change_at and t_change is None:
            t_change = t
        if version != 1 and t_swapped is None:
            t_swapped = t
        after_swap += version != 1
        if after_swap >= 30 or time.monotonic() - (t_change or t) > 600:
            stop.set()
    thread.join()
    monitor.wait()
    monitor.close()
    result = monitor.retrains[0].result() if monitor.retrains else None
    detected = next((a for a in monitor.audits if a.drifted), None)
    errors = np.array([r[3] for r in rows])
    versions = np.array([r[1] for r in rows])
    index = np.array([r[0] for r in rows])
    return {
        "frames_sent": counts["sent"],
        "frames_dropped": counts["dropped"],
        "frames_processed": len(rows),
        "frames_during_retrain": int(sum(r[4] for r in rows)),
        "peaks_per_frame": float(np.mean([r[2] for r in rows])),
        "detected_at_frame": detected.frame if detected else None,
        "detect_s": round(detected.at - t_change, 2) if detected and t_change else None,
        "turnaround_s": round(t_swapped - t_change, 2) if t_swapped and t_change else None,
        "retrain": None if result is None else {**vars(result), "seconds": _rounded(result.seconds)},
        "median_error_px": {
            "before_change": float(np.nanmedian(errors[index < args.change_at])),
            "after_change_old_model": float(np.nanmedian(errors[(index >= args.change_at) & (versions == 1)])),
            "after_swap_new_model": float(np.nanmedian(errors[versions != 1])) if (versions != 1).any() else None,
        },
    }


def _rounded(d: dict) -> dict:
    return {k: round(v, 2) for k, v in d.items()}


def fine_tune_vs_scratch(dask: Client, base: BraggNN, n: int) -> dict:
    """Time to the same held-out error (fit labels) from the store's model and from scratch."""
    patches, _ = simulate_patches(n + 400, peak_shape=CHANGED, seed=11)
    labels = fit_patches_dask(dask, patches, chunk=64)
    found = np.isfinite(labels).all(axis=1)  # fits that found no peak are no label
    patches, labels, n = patches[found], labels[found], int(found[:n].sum())
    data, held = (patches[:n], labels[:n]), (patches[n:], labels[n:])
    validator, runs = CentreError(), {"fine_tune": [], "scratch": []}

    def run(kind: str, epochs: int, lr: float) -> tuple[float, float]:
        torch.manual_seed(0)
        model = BraggNN(base.config) if kind == "scratch" else copy.deepcopy(base)
        t = time.perf_counter()
        model, _ = train(model, *data, epochs=epochs, lr=lr, batch_size=128, seed=0)
        seconds, error = time.perf_counter() - t, validator.score(model, held)
        runs[kind].append({"epochs": epochs, "seconds": round(seconds, 2), "held_out_px": round(error, 4)})
        return seconds, error

    trainer = BraggTrainer()
    ft = [run("fine_tune", e, trainer.fine_tune_lr) for e in (1, 2, trainer.fine_tune_epochs)]
    target = ft[-1][1]
    t_ft = min(s for s, e in ft if e <= target)
    t_scratch = epochs_reached = None
    for epochs in range(
        SCRATCH_STEP, SCRATCH_MAX + 1, SCRATCH_STEP
    ):  # each a run of its own: the cosine schedule spans it
        seconds, error = run("scratch", epochs, trainer.scratch_lr)
        if error <= target:
            t_scratch, epochs_reached = seconds, epochs
            break
    longest = max(r["seconds"] for r in runs["scratch"])
    return {
        "n_train": n,
        "target_held_out_px": round(target, 4),
        "fine_tune_s": round(t_ft, 2),
        "scratch_epochs": epochs_reached,  # the fewest, in steps of SCRATCH_STEP, that reach the target
        "scratch_s": None if t_scratch is None else round(t_scratch, 2),
        "speedup": round((t_scratch or longest) / t_ft, 1),
        "speedup_is_lower_bound": t_scratch is None,
        "runs": runs,
    }


def calibrate(dask: Client, registry_client, workers: int) -> cost_model.CostConstants:
    """Every constant of the cost model, measured on this cluster now."""
    patches, _ = simulate_patches(4096, peak_shape=CHANGED, seed=21)
    fit_patches_dask(dask, patches[:64])  # warm the workers
    times = {n: median_seconds(lambda n=n: fit_patches_dask(dask, patches[:n], chunk=64)) for n in (128, 2048)}
    c_fit = (times[2048] - times[128]) / (2048 - 128)
    model = default_model()[0]
    predict_centres(model, patches[:256])
    t = time.perf_counter()
    predict_centres(model, patches)
    c_infer = (time.perf_counter() - t) / len(patches)
    trainer, labels = BraggTrainer(fine_tune_epochs=1), np.full((2048, 2), 5.0)
    for worker in dask.scheduler_info()["workers"]:  # torch's first use costs ~3 s per worker: not a step
        dask.submit(trainer.fine_tune, model, (patches[:64], labels[:64]), workers=[worker], pure=False).result()

    def fine_tune(n: int) -> None:
        dask.submit(trainer.fine_tune, model, (patches[:n], labels[:n]), pure=False).result()

    step = {n: median_seconds(lambda n=n: fine_tune(n)) for n in (256, 2048)}
    c_step = (step[2048] - step[256]) / (2048 - 256)
    scratch = braggnn_registry(registry_client, "calibration")
    scratch.publish(model, parent=None, metrics={})

    def transfer() -> None:
        """What one retrain moves through the registry: the deployed model in, the candidate out."""
        scratch.load(scratch.deployed())
        scratch.publish(model, parent=scratch.deployed(), metrics={})

    o_transfer = median_seconds(transfer)
    blob = np.zeros(2**22, dtype=np.uint8)
    t = time.perf_counter()
    dask.scatter(blob, broadcast=False).result()
    bandwidth = blob.nbytes / (time.perf_counter() - t)
    return cost_model.CostConstants(
        c_fit=c_fit,
        o_fit=max(0.0, times[128] - 128 * c_fit),
        c_infer=c_infer,
        c_step=c_step,
        o_train=max(0.0, step[256] - 256 * c_step),
        o_transfer=o_transfer,
        bandwidth=bandwidth,
        sample_bytes=11 * 11 * 4,
        workers=workers,
    )


def median_seconds(job: Callable[[], object], repeats: int = REPEATS) -> float:
    """Median wall seconds of ``repeats`` runs of ``job`` (a shared 2-core machine varies up to 2x run to run)."""
    seconds = []
    for _ in range(repeats):
        t = time.perf_counter()
        job()
        seconds.append(time.perf_counter() - t)
    return float(np.median(seconds))


def cost_check(dask: Client, registry_client, sizes: tuple[int, ...], workers: int) -> dict:
    constants = calibrate(dask, registry_client, workers)
    plan = cost_model.Plan(label_fraction=0.25, held_out=0.2, epochs=4)
    rows = []
    for n in sizes:
        patches, _ = simulate_patches(n, peak_shape=CHANGED, seed=100 + n)
        predicted = cost_model.predict(n, constants, plan)
        fit_s = median_seconds(lambda patches=patches: fit_patches_dask(dask, patches, chunk=64))
        registry = braggnn_registry(registry_client, f"cost_{n}")
        registry.publish(default_model()[0], parent=None, metrics={})
        shipped = registry.load(1)  # the edge's model before the scan: loaded once, not timed

        parts: list[dict[str, float]] = []

        def surrogate_path(patches=patches, registry=registry, parts=parts, shipped=shipped) -> None:
            """Label a fraction, fine-tune, validate, publish, then infer every peak: eq. 5's path."""
            slot = ModelSlot(copy.deepcopy(shipped), 1)  # each repeat starts from the shipped model
            result = retrain(
                patches,
                labeller=FitLabeller(dask),
                trainer=BraggTrainer(fine_tune_epochs=plan.epochs),
                validator=CentreError(),
                registry=registry,
                slot=slot,
                client=dask,
                label_fraction=plan.label_fraction,
                held_out=plan.held_out,
            )
            t = time.perf_counter()
            predict_centres(slot.get(), patches)
            parts.append({**result.seconds, "infer": time.perf_counter() - t})

        ml_s = median_seconds(surrogate_path)
        rows.append(
            {
                "n": n,
                "fit": {"predicted_s": round(predicted.conventional, 2), "measured_s": round(fit_s, 2)},
                "surrogate": {"predicted_s": round(predicted.surrogate, 2), "measured_s": round(ml_s, 2)},
                "surrogate_parts": {
                    "predicted_s": _rounded(predicted.parts),
                    "measured_median_s": {k: round(float(np.median([p[k] for p in parts])), 3) for k in parts[0]},
                },
                "fit_error": round(predicted.conventional / fit_s - 1, 3),
                "surrogate_error": round(predicted.surrogate / ml_s - 1, 3),
                "choice": predicted.choice,
                "measured_faster": "surrogate" if ml_s < fit_s else "fit",
                "why": predicted.why,
            }
        )
        print(rows[-1], flush=True)
    return {"constants": constants.as_dict(), "plan": vars(plan), "scans": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--change-at", type=int, default=40)
    parser.add_argument("--threshold", type=float, default=0.08, help="audit disagreement (px) that counts as drift")
    parser.add_argument("--min-samples", type=int, default=2000, help="new peaks collected before retraining")
    parser.add_argument("--sizes", type=int, nargs=3, default=(2000, 4000, 8000), help="scan sizes (peaks)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=PARTS, help="which measurements to run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp) / "tiled", port=_free_port())
        with running_server(settings) as server, local_cluster(2) as cluster, Client(cluster) as dask:
            writer = connect(server.uri, server.api_key)
            reader = connect(server.uri, create_key(server.uri, server.admin_key, note="edge"))
            registry = braggnn_registry(writer)
            shipped, record = default_model()
            registry.publish(shipped, parent=None, metrics=record["validation"], scan_uids=["simulated"])
            out: dict = {"bench": "bragg_loop", "args": vars(args)}
            if "turnaround" in args.parts:
                out["turnaround"] = turnaround(registry, braggnn_registry(reader), dask, args)
                print("turnaround", out["turnaround"], flush=True)
            if "speed" in args.parts:  # fine-tune vs scratch on the loop's train share
                out["fine_tune_vs_scratch"] = fine_tune_vs_scratch(dask, shipped, n=int(0.8 * args.min_samples))
                print("fine-tune vs scratch", out["fine_tune_vs_scratch"], flush=True)
            if "cost" in args.parts:
                out["cost_model"] = cost_check(dask, writer, tuple(args.sizes), workers=2)
    out["machine"] = machine_info("torch", "dask", "tiled")
    print(append_result("bragg_loop", out))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
