"""Noise2Inverse denoising of a low-dose scan beside the raw reconstruction and classical filters.

A seeded N^3 foam (``make_foam``) is projected exactly at round(pi/2 N) angles over 180
degrees, and Poisson noise at ``--photons`` per open-beam pixel (default 300: low dose)
is added to the transmitted counts. Every volume is scored against the phantom averaged
over each voxel (2^3 sub-samples, so edges are partial-volume like a reconstruction's),
inside the reconstruction circle:

- raw: tomolive's default reconstruction of all angles;
- gaussian / median / tv: classical filters of the raw volume with their strength
  (sigma, size, weight) chosen by the best PSNR against the phantom. These are ORACLE-tuned
  baselines: no real scan has a ground truth to tune on, so they are upper bounds for
  what each filter can do here. TV is tuned on the middle 32 slices (it is slow);
- n2i: tomolive.ml.noise2inverse, trained on this scan's own k = 2 split reconstructions within
  the default time budget (DenoiseConfig().time_budget seconds), then inference over the
  whole volume (mean over the k held-out splits).

Reported: PSNR (dB), SSIM (skimage, 3D, on the square inscribed in the circle), SNR of the
solid phase (``tomolive.qc.snr_cnr`` with the phantom's labels), seconds and slices/s, and
the ratios n2i / raw and n2i / best classical. Appends a JSON line to
bench/results/denoise.jsonl. The machine may be shared: check the recorded load average.

    PYTHONPATH=src python bench/denoise.py            # 256^3
    PYTHONPATH=src python bench/denoise.py --quick    # 128^3
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace

import numpy as np
from _common import append_result, machine_info
from scipy import ndimage
from skimage.metrics import structural_similarity

from tomolive.ml.denoising import denoise
from tomolive.ml.noise2inverse import DenoiseConfig, split_reconstructions, train
from tomolive.qc import circle_mask, psnr, snr_cnr
from tomolive.recon import available_methods, reconstruct
from tomolive.sim.phantoms import FoamPhantom, make_foam


def pixel_averaged(phantom: FoamPhantom, factor: int = 2) -> np.ndarray:
    """The phantom's attenuation averaged over each voxel (``factor``^3 samples), float32."""
    fine = FoamPhantom(
        shape=tuple(s * factor for s in phantom.shape),
        radius=phantom.radius * factor,
        centers=phantom.centers * factor,
        radii=phantom.radii * factor,
        labels_of_spheres=phantom.labels_of_spheres,
        mu_solid=phantom.mu_solid,
        mu_inclusion=phantom.mu_inclusion,
    )
    nz, ny, nx = phantom.shape
    out = np.empty(phantom.shape, dtype=np.float32)
    attenuation = fine.attenuation()
    for z in range(nz):  # slice by slice: bounded temporaries
        block = attenuation[z * factor : (z + 1) * factor]
        out[z] = block.reshape(factor, ny, factor, nx, factor).mean(axis=(0, 2, 4))
    return out


def low_dose_scan(n: int, n_angles: int, photons: float, seed: int):
    """Phantom, angles and noisy line integrals (float32) of a seeded n^3 foam."""
    phantom = make_foam((n, n, n), seed=seed)
    angles = np.linspace(0.0, np.pi, n_angles, endpoint=False)
    rng = np.random.default_rng(seed)
    projections = np.empty((n_angles, n, n), dtype=np.float32)
    for i, theta in enumerate(angles):
        counts = rng.poisson(photons * np.exp(-phantom.project(theta).astype(np.float64)))
        projections[i] = -np.log(np.maximum(counts, 1) / photons)
    return phantom, angles, projections


class Scorer:
    """PSNR / SSIM / SNR of volumes against one phantom."""

    def __init__(self, truth: np.ndarray, labels: np.ndarray):
        n = truth.shape[-1]
        self.truth, self.labels = truth, labels
        self.mask = np.broadcast_to(circle_mask(truth.shape[1:]), truth.shape)
        half = int(0.35 * n)
        self.square = np.s_[:, n // 2 - half : n // 2 + half, n // 2 - half : n // 2 + half]
        self.range = float(np.ptp(truth[self.mask]))

    def psnr(self, volume: np.ndarray) -> float:
        return psnr(volume, self.truth, mask=self.mask)

    def score(self, volume: np.ndarray) -> dict:
        ssim = structural_similarity(volume[self.square], self.truth[self.square], data_range=self.range)
        return {
            "psnr_db": round(self.psnr(volume), 2),
            "ssim": round(float(ssim), 4),
            "snr": round(snr_cnr(volume, self.labels, max_slices=16)["snr"], 3),
        }

    def rows(self, rows: slice) -> Scorer:
        """A scorer for a slab of slices."""
        return Scorer(self.truth[rows], self.labels[rows])


def oracle(name, filt, strengths, raw, scorer: Scorer, rows: slice | None = None):
    """The best-PSNR strength of ``filt(volume, strength)`` (tuned on ``rows`` if given),
    then the whole volume filtered with it, timed."""
    tune_scorer, tune_volume = (scorer, raw) if rows is None else (scorer.rows(rows), raw[rows])
    scores = {s: tune_scorer.psnr(filt(tune_volume, s)) for s in strengths}
    best = max(scores, key=scores.get)
    start = time.perf_counter()
    volume = filt(raw, best)
    seconds = time.perf_counter() - start
    print(f"  {name}: PSNR by strength { ({k: round(v, 2) for k, v in scores.items()}) } -> {best}", flush=True)
    return volume, {
        "strength": best,
        "seconds": round(seconds, 2),
        "tuned_on": "all slices" if rows is None else f"slices {rows.start}:{rows.stop}",
        "at_grid_edge": best in (strengths[0], strengths[-1]),
    }


def classical(raw: np.ndarray, scorer: Scorer) -> dict[str, tuple[np.ndarray, dict]]:
    """Oracle-tuned Gaussian, median and total-variation (Chambolle) filters of the raw volume."""
    from skimage.restoration import denoise_tv_chambolle

    nz = raw.shape[0]
    mid = slice(max(0, nz // 2 - 16), nz // 2 + 16)
    scale = float(np.std(raw))  # TV weight relative to the volume's grey spread

    def tv(volume, w):
        return denoise_tv_chambolle(volume, weight=w * scale).astype(np.float32)

    return {
        "gaussian": oracle(
            "gaussian (sigma, 3D)",
            lambda v, s: ndimage.gaussian_filter(v, s),
            (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.4, 1.7, 2.0),
            raw,
            scorer,
        ),
        "median": oracle("median (size, 3D)", lambda v, s: ndimage.median_filter(v, size=s), (3, 5), raw, scorer, mid),
        "tv": oracle(
            "tv (Chambolle weight / std, 3D)",
            tv,
            (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0),
            raw,
            scorer,
            mid,
        ),
    }


def run(args) -> dict:
    n = args.size
    n_angles = args.angles or round(np.pi / 2 * n)
    t0 = time.perf_counter()
    phantom, angles, projections = low_dose_scan(n, n_angles, args.photons, args.seed)
    scorer = Scorer(pixel_averaged(phantom), phantom.labels())
    print(
        f"{n}^3 foam, {n_angles} angles, {args.photons:g} photons/pixel "
        f"(simulated in {time.perf_counter() - t0:.1f} s)",
        flush=True,
    )
    rows: dict[str, dict] = {}

    def record(name, volume, **extra):
        rows[name] = {**scorer.score(volume), **extra}
        r = rows[name]
        print(
            f"  {name:<10} PSNR {r['psnr_db']:6.2f} dB  SSIM {r['ssim']:.4f}  SNR {r['snr']:6.2f}  {extra}", flush=True
        )

    start = time.perf_counter()
    raw = reconstruct(projections, angles)
    record("raw", raw, method=available_methods()[0], seconds=round(time.perf_counter() - start, 2))
    for name, (volume, info) in classical(raw, scorer).items():
        record(name, volume, **info)

    config = DenoiseConfig(k=args.k, seed=args.seed, threads=args.threads)
    if args.budget is not None:
        config = replace(config, time_budget=args.budget)
    start = time.perf_counter()
    splits = split_reconstructions(projections, angles, None, k=config.k)
    split_seconds = time.perf_counter() - start
    del projections
    result = train(splits, config)
    start = time.perf_counter()
    denoised = denoise(result.model, splits, config=config)
    infer_seconds = time.perf_counter() - start
    record(
        "n2i",
        denoised,
        split_seconds=round(split_seconds, 2),
        train_seconds=result.seconds,
        train_steps=result.steps,
        stopped=result.stopped,
        infer_seconds=round(infer_seconds, 2),
        infer_slices_per_s=round(n / infer_seconds, 2),
        loss_first_last=[round(float(np.mean(result.losses[:20])), 4), round(float(np.mean(result.losses[-20:])), 4)],
    )
    return {
        "size": n,
        "angles": n_angles,
        "photons": args.photons,
        "seed": args.seed,
        "config": config.as_dict(),
        "results": rows,
    }


def ratios(rows: dict) -> dict:
    """n2i against raw and against the best (oracle-tuned) classical filter."""
    best = max(("gaussian", "median", "tv"), key=lambda name: rows[name]["psnr_db"])
    n2i, raw, peer = rows["n2i"], rows["raw"], rows[best]
    return {
        "psnr_gain_over_raw_db": round(n2i["psnr_db"] - raw["psnr_db"], 2),
        "snr_gain_over_raw": round(n2i["snr"] / raw["snr"], 2),
        "best_classical": best,
        "psnr_gain_over_best_classical_db": round(n2i["psnr_db"] - peer["psnr_db"], 2),
        "snr_ratio_to_best_classical": round(n2i["snr"] / peer["snr"], 2),
        "ssim_gain_over_best_classical": round(n2i["ssim"] - peer["ssim"], 4),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="128^3 instead of 256^3")
    ap.add_argument("--size", type=int, default=None, help="N of the N^3 scan (default 256)")
    ap.add_argument("--angles", type=int, default=None, help="default round(pi / 2 * N)")
    ap.add_argument("--photons", type=float, default=300.0)
    ap.add_argument("--k", type=int, default=2, help="Noise2Inverse angle splits")
    ap.add_argument("--budget", type=float, default=None, help="training seconds (default: DenoiseConfig's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default all cores; 1 on a machine busy with other work)",
    )
    ap.add_argument("--no-save", action="store_true", help="do not append to bench/results")
    args = ap.parse_args(argv)
    args.size = args.size or (128 if args.quick else 256)
    info = machine_info("torch", "scikit-image", "finufft")
    print(f"{info['cpu_model']}, {info['cores']} cores, load {info['loadavg_1m']}")
    record = run(args)
    record["ratios"] = ratios(record["results"])
    print("\nn2i vs raw and vs the best oracle-tuned classical filter:")
    for key, value in record["ratios"].items():
        print(f"  {key:<34} {value}")
    info["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    if not args.no_save:
        record = {"bench": "denoise", "quick": args.quick, "machine": info, **record}
        path = append_result("denoise", record)
        print(f"\nappended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
