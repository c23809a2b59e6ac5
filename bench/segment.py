"""Segmentation accuracy and speed: the shipped U-Net beside multi-Otsu, on low-dose scans.

A foam and a rock phantom (seeds the training script never used) are scanned at low dose
(1000 photons per pixel by default, ``--photons`` to change) and reconstructed with tomolive's default backend. Each method
labels the raw reconstruction and a denoised one: Noise2Inverse (:mod:`tomolive.ml.noise2inverse`,
trained on the scan itself for a fixed time budget) when it runs here, and a Gaussian
filter (sigma 1 px) as a plain stand-in. Scored by Dice per phase inside the sample
cylinder and by the porosity error; speed is slices/s of segmentation alone (best of 2),
on CPU with one torch thread by default (multi-Otsu's scipy/skimage code is single
threaded too, so the ratio is per core), and on CUDA when torch sees one. Appends a JSON
line to bench/results/segment.jsonl.

    PYTHONPATH=src python bench/segment.py            # 32 slices of 256^2, 360 angles
    PYTHONPATH=src python bench/segment.py --quick    # 16 slices of 128^2, 180 angles
    PYTHONPATH=src python bench/segment.py --photons 300
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _common import append_result, machine_info
from scipy import ndimage

from tomolive.ml.segmentation import load_segmenter, segment_volume
from tomolive.recon import reconstruct
from tomolive.segment import PHASES, dice_scores, phase_statistics
from tomolive.sim.phantoms import make_foam, make_rock, measure

SEED = 4242


def scan(phantom, n_angles: int, photons: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Low-dose line integrals, their angles, and the reconstruction."""
    angles = np.linspace(0.0, np.pi, n_angles, endpoint=False)
    data = measure(phantom.sinogram(angles), photons=photons, seed=seed)
    return data, angles, reconstruct(data, angles)


def noise2inverse(data: np.ndarray, angles: np.ndarray, seconds: float) -> np.ndarray | None:
    """Noise2Inverse-denoised volume (trained on this scan for ``seconds``), or None if unusable."""
    try:
        from tomolive.ml import denoising, noise2inverse
    except ImportError as err:
        print(f"  Noise2Inverse unavailable ({err}); Gaussian stand-in only")
        return None
    splits = noise2inverse.split_reconstructions(data, angles, k=2)
    config = noise2inverse.DenoiseConfig(time_budget=seconds, device="cpu")
    result = noise2inverse.train(splits, config)
    return denoising.denoise(result.model, splits, config=config)


def sample_mask(phantom) -> np.ndarray:
    n = phantom.shape[-1]
    g = np.arange(n) - (n - 1) / 2.0
    return (g[:, None] ** 2 + g[None, :] ** 2) <= phantom.radius**2


def run_method(volume, truth, mask, method, model, device, true_porosity):
    """Best-of-2 timed segmentation and its scores."""
    runs = []
    for _ in range(2):
        t0 = time.perf_counter()
        labels, info = segment_volume(volume, method, model, device=device)
        runs.append(time.perf_counter() - t0)
    dice = dice_scores(labels, truth, len(PHASES), mask=mask)
    porosity = phase_statistics(labels)["porosity"]
    return {
        "method": info["method"],
        "device": device or "cpu",
        "dice": {name: round(d, 4) for name, d in zip(PHASES, dice)},
        "mean_dice": round(float(np.nanmean(dice)), 4),
        "porosity": round(porosity, 4),
        "porosity_error": round(porosity - true_porosity, 4),
        "slices_per_s": round(volume.shape[0] / min(runs), 2),
        "seconds": [round(s, 3) for s in runs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 slices of 128^2 instead of 32 of 256^2")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--photons", type=float, default=1000.0, help="open-beam counts per pixel")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape, n_angles, n2i_seconds = ((16, 128, 128), 180, 30.0) if args.quick else ((32, 256, 256), 360, 90.0)
    model = load_segmenter(device="cpu")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(
        f"shape {shape}, {n_angles} angles, {args.photons:g} photons; model {model.name} {model.sha256[:12]}; "
        f"devices {devices} (GPU {'available' if len(devices) > 1 else 'not available on this machine'})"
    )
    rows = []
    for kind, phantom in (("foam", make_foam(shape, seed=SEED)), ("rock", make_rock(shape, seed=SEED))):
        data, angles, raw = scan(phantom, n_angles, args.photons, SEED)
        truth, mask = phantom.labels(), sample_mask(phantom)
        true_porosity = phase_statistics(truth)["porosity"]
        inputs = {"raw": raw, "gaussian sigma=1 (stand-in)": ndimage.gaussian_filter(raw, (0, 1, 1))}
        denoised = noise2inverse(data, angles, n2i_seconds)
        if denoised is not None:
            inputs[f"noise2inverse ({n2i_seconds:g} s training)"] = denoised
        for input_name, volume in inputs.items():
            for method, device in [("unet", d) for d in devices] + [("otsu", None)]:
                row = {
                    "phantom": kind,
                    "input": input_name,
                    **run_method(
                        volume, truth, mask, method, model if method == "unet" else None, device, true_porosity
                    ),
                }
                rows.append(row)
                d = row["dice"]
                print(
                    f"  {kind:<5} {input_name:<30} {row['method']:<5} {row['device']:<5} "
                    f"Dice pore {d['pore']:.3f} solid {d['solid']:.3f} incl {d['inclusion']:.3f} "
                    f"(mean {row['mean_dice']:.3f})  porosity {row['porosity']:.3f} "
                    f"(true {true_porosity:.3f})  {row['slices_per_s']:8.1f} slices/s"
                )
    ratios = {}
    for r in rows:
        if r["method"] == "unet" and r["device"] == "cpu":
            peer = next(
                o for o in rows if o["method"] == "otsu" and o["phantom"] == r["phantom"] and o["input"] == r["input"]
            )
            ratios[f"{r['phantom']}:{r['input']}"] = {
                "mean_dice_diff": round(r["mean_dice"] - peer["mean_dice"], 4),
                "speed": round(r["slices_per_s"] / peer["slices_per_s"], 3),
            }
    print("unet vs multi-Otsu (same input):")
    for key, ratio in ratios.items():
        print(f"  {key:<45} mean Dice {ratio['mean_dice_diff']:+.3f}   speed x{ratio['speed']:.2f}")
    path = append_result(
        "segment",
        {
            "benchmark": "segment",
            "quick": args.quick,
            "shape": list(shape),
            "angles": n_angles,
            "photons": args.photons,
            "seed": SEED,
            "model": model.info(),
            "devices": devices,
            "torch_threads": torch.get_num_threads(),
            "machine": machine_info("torch", "scikit-image"),
            "results": rows,
            "ratios": ratios,
        },
    )
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
