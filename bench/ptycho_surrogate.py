"""Ptychography surrogate (issue 27): a PtychoNN-class network trained on earlier views' iterative results.

Case: a 96^3 phase foam (phase range 1.5 rad at angle 0, absorption 0.1 of the phase) seen at
a rotation series; each view a 96^2 object scanned by a 32^2 zone-plate probe (16 px aperture,
1.5 rad defocus) at 180 Fermat positions (4 px step), 1e6 photons per pattern (Poisson). The
first ``--train-views`` views are solved iteratively (ePIE, ``--solver-epochs``, aperture-only
probe guess) and give the training pairs (measured patterns + ``--extra`` re-illuminated ones per
view); one more view (patterns only) calibrates the trust threshold; the last, held-out view is
solved iteratively too, as the reference and for the solver's time.

Printed from one run: the surrogate's stitched-phase NRMSE against the held-out view's iterative
result (metrics.phase_nrmse, illuminated mask) beside the flat (zero-phase) baseline's, both also
against the true object; patterns/s (median of ``--repeats``) of the network alone, of
network + stitching, and of the iterative solver; training seconds; the trust report of the held-out view and of a different
object (skimage camera/moon). The machine may be shared: check the recorded load average.

    PYTHONPATH=src:bench python bench/ptycho_surrogate.py
    PYTHONPATH=src:bench python bench/ptycho_surrogate.py --quick
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import skimage.data
import torch
from _common import append_result, machine_info
from skimage.transform import resize

from tomolive.sim.ptycho_devices import ComplexSample
from tomolive.sim.ptycho_tomo import phase_foam
from tomolive.techniques.ptycho import metrics, physics
from tomolive.techniques.ptycho import surrogate as sg
from tomolive.techniques.ptycho.solver import reconstruct

N, SHAPE, PHOTONS = 32, (96, 96), 1e6


def scan(obj: np.ndarray, probe: np.ndarray, n_pos: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Patterns and positions of one view: Fermat spiral about the centre, +-0.5 px jitter."""
    rng = np.random.default_rng(seed)
    pos = physics.fermat_positions(n_pos, 4.0, (SHAPE[0] / 2, SHAPE[1] / 2)) + rng.uniform(-0.5, 0.5, (n_pos, 2))
    return physics.simulate_patterns(obj, probe, pos, photons_per_pattern=PHOTONS, rng=seed), pos


def solve(patterns: np.ndarray, pos: np.ndarray, epochs: int, threads: int):
    guess = physics.make_probe(N, aperture_px=16, kind="aperture")
    t0 = time.perf_counter()
    res = reconstruct(patterns, pos, guess, object_shape=SHAPE, epochs=epochs, threads=threads)
    return res, time.perf_counter() - t0


def other_object() -> np.ndarray:
    """A totally different sample: skimage camera (amplitude 0.75-1) and moon (phase, 1.5 rad)."""
    amp = 0.75 + 0.25 * resize(skimage.data.camera().astype(float) / 255, SHAPE, anti_aliasing=True)
    return physics.complex_object(amp, resize(skimage.data.moon().astype(float), SHAPE), phase_range_rad=1.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-views", type=int, default=4)
    ap.add_argument("--positions", type=int, default=180)
    ap.add_argument("--solver-epochs", type=int, default=40)
    ap.add_argument("--extra", type=int, default=1200, help="re-illuminated pairs per training view")
    ap.add_argument("--epochs", type=int, default=10, help="network training epochs")
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5, help="timings of the held-out view: median of this many")
    ap.add_argument("--quick", action="store_true", help="2 training views, 25 solver epochs, 800 extra")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.train_views, args.solver_epochs, args.extra = 2, 25, 800
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    sample = ComplexSample.from_phantom(phase_foam(96, seed=1), phase_range_rad=1.5)
    probe = physics.make_probe(N, aperture_px=16, defocus_phase_rad=1.5, kind="zone_plate")
    angles = [float(a) for a in np.linspace(0.0, 150.0, args.train_views + 2)]
    train_angles, val_angle, test_angle = angles[: args.train_views], angles[-2], angles[-1]

    parts, solve_s, n_measured = [], [], 0
    first = None
    for k, angle in enumerate(train_angles):
        pats, pos = scan(sample.at(angle), probe, args.positions, seed=10 + k)
        res, sec = solve(pats, pos, args.solver_epochs, args.threads)
        solve_s.append(sec)
        parts.append(sg.training_set(pats, pos, res.object, res.probe, extra=args.extra, rng=k))
        n_measured += len(pats)
        first = first if first is not None else (res.object, pos, res.probe)
        print(f"view {angle:6.1f} deg solved in {sec:.1f} s (loss {res.loss[-1]:.2e})")
    x, a, p = (np.concatenate(v) for v in zip(*parts))
    lp = sg.label_probe(*first)
    sur = sg.train(x, a, p, lp, epochs=args.epochs, channels=args.channels, threads=args.threads)
    print(f"trained on {len(x)} pairs ({n_measured} measured) in {sur.record['seconds']} s, loss {sur.record['loss']}")

    val_pats, val_pos = scan(sample.at(val_angle), probe, args.positions, seed=98)
    sg.calibrate(sur, val_pats, val_pos, SHAPE)

    truth = sample.at(test_angle)
    pats, pos = scan(truth, probe, args.positions, seed=99)
    ref_times = [solve(pats, pos, args.solver_epochs, args.threads) for _ in range(args.repeats)]
    ref, ref_s = ref_times[0][0], float(np.median([t for _, t in ref_times]))
    mask = metrics.illuminated_mask(SHAPE, pos, ref.probe)
    sur.predict(pats[:8])  # warm-up
    net_t, all_t = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        amp, phase = sur.predict(pats)
        net_t.append(time.perf_counter() - t0)
        image = sg.stitch(amp, phase, pos, sur.weight, SHAPE)
        all_t.append(time.perf_counter() - t0)
    net_s, all_s = float(np.median(net_t)), float(np.median(all_t))
    unaligned = sg.stitch(amp, phase, pos, sur.weight, SHAPE, align=False)
    flat = np.ones(SHAPE, np.complex64)
    score = {
        "surrogate": metrics.phase_nrmse(image, ref.object, mask),
        "surrogate_unaligned": metrics.phase_nrmse(unaligned, ref.object, mask),
        "flat": metrics.phase_nrmse(flat, ref.object, mask),
        "surrogate_vs_truth": metrics.phase_nrmse(image, truth, mask),
        "flat_vs_truth": metrics.phase_nrmse(flat, truth, mask),
        "iterative_vs_truth": metrics.phase_nrmse(ref.object, truth, mask),
    }
    trust = sg.check_trust(sur, pats, pos, SHAPE)
    o_pats, o_pos = scan(other_object(), probe, args.positions, seed=7)
    other = sg.check_trust(sur, o_pats, o_pos, SHAPE)
    rates = {"network": len(pats) / net_s, "network_and_stitch": len(pats) / all_s,
             "iterative": len(pats) / ref_s}  # fmt: skip

    print(f"\nheld-out view {test_angle:.1f} deg, {len(pats)} patterns; phase NRMSE vs its iterative result:")
    print(f"  surrogate {score['surrogate']:.4f}   flat baseline {score['flat']:.4f}   "
          f"(no offset alignment {score['surrogate_unaligned']:.4f})")  # fmt: skip
    print(f"  vs truth: surrogate {score['surrogate_vs_truth']:.4f}  flat {score['flat_vs_truth']:.4f}  "
          f"iterative {score['iterative_vs_truth']:.4f}")  # fmt: skip
    print(f"patterns/s: network {rates['network']:.0f}, network + stitch {rates['network_and_stitch']:.0f}, "
          f"iterative ({args.solver_epochs} epochs) {rates['iterative']:.1f}")  # fmt: skip
    print(f"trust, held-out view: {trust.trusted} ({trust.reason}, ratio {trust.ratio:.3f})")
    print(f"trust, different object: {other.trusted} ({other.reason}, ratio {other.ratio:.3f})")
    print(f"load average at start {load_start}, at end {os.getloadavg()}")
    record = {"case": {"object": SHAPE, "probe": N, "positions": args.positions, "photons": PHOTONS,
                       "train_views": train_angles, "validation_view": val_angle, "test_view": test_angle,
                       "solver_epochs": args.solver_epochs, "extra_per_view": args.extra},
              "phase_nrmse": {k: round(v, 5) for k, v in score.items()},
              "patterns_per_s": {k: round(v, 1) for k, v in rates.items()},
              "training": {**sur.record, "pairs": len(x), "measured_pairs": n_measured},
              "solver_seconds": {"train_views": [round(s, 2) for s in solve_s], "test_view": round(ref_s, 2)},
              "trust": {"held_out": trust.as_dict(), "other_object": other.as_dict()},
              "threads": args.threads, "loadavg_start": [round(v, 2) for v in load_start], "machine": machine_info("torch")}  # fmt: skip
    if not args.no_record:
        print("recorded in", append_result("ptycho_surrogate", record))


if __name__ == "__main__":
    main()
