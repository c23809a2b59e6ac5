"""Bragg-peak localisation: the shipped BraggNN beside the pseudo-Voigt fit, accuracy and speed.

Frames of a simulated rotation sweep (:class:`tomolive.sim.bragg.BraggSimulator`, default
peak shape and noise, a seed the model never saw) go through the technique's own peak
finding and patch cutting; every patch is then localised by both methods and scored
against the simulator's ground truth (the nearest true peak within 1.5 px of the patch's
integer centre). Speed is peaks per CPU-second of one core: the fit is single-threaded
(scipy, BLAS held to one thread), the network runs with ``torch.set_num_threads(1)`` in
batches of 4096, and both are timed by the process's CPU clock, so other jobs on the
machine do not skew the ratio (wall-clock figures are recorded too). Appends a JSON line
to bench/results/bragg.jsonl.

    PYTHONPATH=src python bench/bragg.py            # 240 frames of 256^2, about 4000 peaks
    PYTHONPATH=src python bench/bragg.py --quick    # 60 frames, about 1000 peaks
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # per-core figures: BLAS under the fit on one thread

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import append_result, machine_info  # noqa: E402

from tomolive.sim.bragg import BraggSimulator  # noqa: E402
from tomolive.techniques.bragg.braggnn import load_model, predict_centres  # noqa: E402
from tomolive.techniques.bragg.fitting import fit_patches  # noqa: E402
from tomolive.techniques.bragg.params import BraggParams  # noqa: E402
from tomolive.techniques.bragg.peaks import extract_patches, find_peaks, split_edge  # noqa: E402

SEED = 777
MATCH_PX = 1.5


def sweep_patches(n_frames: int, shape: tuple[int, int], n_reflections: int) -> tuple[np.ndarray, np.ndarray]:
    """Patches of every found peak matched to a true one, and the true centres in patch pixels."""
    simulator = BraggSimulator(shape, n_reflections=n_reflections, seed=SEED)
    threshold = BraggParams().threshold
    patches, truths = [], []
    for frame in simulator.sweep(n_frames):
        centres = find_peaks(frame.image, threshold)
        centres = centres[split_edge(centres, frame.image.shape)]
        if not len(centres) or not len(frame.truth):
            continue
        cut, origins = extract_patches(frame.image, centres)
        d = np.hypot(*(centres[:, None, :] - frame.truth[None, :, :2]).transpose(2, 0, 1))
        nearest = d.argmin(axis=1)
        ok = d[np.arange(len(centres)), nearest] < MATCH_PX
        patches.append(cut[ok])
        truths.append(frame.truth[nearest[ok], :2] - origins[ok])
    return np.concatenate(patches), np.concatenate(truths)


def timed(function, *args):
    """``function(*args)``, with the CPU seconds and wall seconds it took."""
    cpu, wall = time.process_time(), time.perf_counter()
    out = function(*args)
    return out, time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="60 frames (about 1000 peaks)")
    args = parser.parse_args()
    n_frames = 60 if args.quick else 240
    shape, n_reflections = (256, 256), 2400
    torch.set_num_threads(1)
    model, record = load_model()
    patches, truth = sweep_patches(n_frames, shape, n_reflections)
    print(f"{len(patches)} peaks from {n_frames} frames of {shape}")

    fitted, fit_cpu, fit_wall = timed(fit_patches, patches)
    predict_centres(model, patches[:4096])  # warm-up
    many = np.concatenate([patches] * max(1, -(-32768 // len(patches))))[:32768]
    runs = [timed(predict_centres, model, many) for _ in range(3)]
    nn_cpu, nn_wall = min(r[1] for r in runs), min(r[2] for r in runs)
    predicted = predict_centres(model, patches)

    fit_err = np.hypot(*(fitted - truth).T)
    nn_err = np.hypot(*(predicted - truth).T)
    fit_rate, nn_rate = len(patches) / fit_cpu, len(many) / nn_cpu
    result = {
        "benchmark": "bragg",
        "quick": args.quick,
        "frames": n_frames,
        "shape": list(shape),
        "n_peaks": len(patches),
        "seed": SEED,
        "model": {"name": record["name"], "sha256": record["sha256"], "architecture": record["architecture"]},
        "error_px": {
            "braggnn": {"median": float(np.median(nn_err)), "p90": float(np.percentile(nn_err, 90))},
            "pseudo_voigt": {
                "median": float(np.nanmedian(fit_err)),
                "p90": float(np.nanpercentile(fit_err, 90)),
                "untrusted": int(np.isnan(fit_err).sum()),  # fits that found no peak give no centre
            },
        },
        "peaks_per_cpu_s": {"braggnn": nn_rate, "pseudo_voigt": fit_rate},
        "peaks_per_wall_s": {"braggnn": len(many) / nn_wall, "pseudo_voigt": len(patches) / fit_wall},
        "speedup_per_core": nn_rate / fit_rate,
        "batch_size": 4096,
        "torch_threads": 1,
        "machine": machine_info("torch"),
    }
    nn_median, fit_median = result["error_px"]["braggnn"]["median"], result["error_px"]["pseudo_voigt"]["median"]
    result["targets"] = {
        "median_within_0.05_of_fit": bool(nn_median <= fit_median + 0.05),
        "median_at_most_0.15": bool(nn_median <= 0.15),
        "speedup_at_least_200": bool(result["speedup_per_core"] >= 200),
    }
    print(f"median error: BraggNN {nn_median:.4f} px, pseudo-Voigt fit {fit_median:.4f} px")
    print(f"peaks per CPU-second of one core: BraggNN {nn_rate:,.0f}, fit {fit_rate:,.1f}")
    print(f"speed-up per core: {result['speedup_per_core']:,.0f}x; targets {result['targets']}")
    print(f"appended to {append_result('bragg', result)}")


if __name__ == "__main__":
    main()
