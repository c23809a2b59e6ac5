"""Train the shipped segmentation weights (tomolive/weights/foam_rock_unet.*) from simulated scans.

Foams (:func:`tomolive.sim.phantoms.make_foam`) and rocks (:func:`tomolive.sim.phantoms.make_rock`)
with random porosity, inclusion count and contrast (inclusion / matrix attenuation 2-4x)
are scanned with random dose (300-20000 photons per pixel, or noise-free), angle count,
detector stripes (rings), and sometimes smoothed as a denoiser would; they are
reconstructed by :func:`tomolive.recon.reconstruct` and their exact labels are the
targets. A held-out foam and rock (other seeds) give the validation Dice written in the
weights' record. Everything is seeded; on CPU with the same thread count two runs give
bit-identical weights (the record holds their sha256). About 5 minutes on 2 CPU cores (1.5 to
simulate, 3.5 to train with one thread).

    .venv/bin/python scripts/train_segmenter.py                 # rewrite the shipped weights
    .venv/bin/python scripts/train_segmenter.py --out /tmp/w    # elsewhere
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from tomolive.ml.segmentation import DEFAULT_MODEL, WEIGHTS_DIR, new_segmenter, save_segmenter, segment_volume
from tomolive.ml.segmenter_training import IGNORE, TrainSettings, train_segmenter
from tomolive.recon import reconstruct
from tomolive.segment import PERCENTILES, PHASES, RANGE_SIGMA, dice_scores, intensity_range, normalize, stacks
from tomolive.sim.phantoms import make_foam, make_rock, measure

SHAPE = (18, 128, 128)
"""Slices and pixels of each simulated scan."""
N_TRAIN = 8
"""Foams and as many rocks for training (seeds 0..N_TRAIN-1)."""
VALIDATION_SEED = 1000
SETTINGS = TrainSettings(steps=1200, lr=2e-3, batch_size=8, crop=64, seed=0)


def scan_conditions(rng: np.random.Generator) -> dict:
    """Random acquisition: dose, angles, stripes, and a smoothing standing in for denoising."""
    return {
        "photons": None if rng.random() < 0.15 else float(np.exp(rng.uniform(np.log(300), np.log(20000)))),
        "n_angles": int(rng.choice([90, 120, 180, 240])),
        "stripe_fraction": float(rng.uniform(0.005, 0.03)) if rng.random() < 0.4 else 0.0,
        "stripe_strength": float(rng.uniform(0.01, 0.05)),
        "smooth_sigma": float(rng.uniform(0.5, 1.2)) if rng.random() < 0.25 else 0.0,
    }


def random_phantom(kind: str, rng: np.random.Generator, seed: int):
    """A foam or rock with random structure, feature size and contrast.

    Pores and inclusions span 2.5 to 18 pixels in radius, so that the network sees the
    sizes a 128-pixel scan shows and those of a finer scan of the same sample.
    """
    mu = float(rng.uniform(0.002, 0.008))
    ratio = float(rng.uniform(2.0, 4.0))
    pore, inclusion = float(rng.uniform(0.02, 0.05)), float(rng.uniform(0.02, 0.07))
    if kind == "foam":
        return make_foam(
            SHAPE,
            porosity=float(rng.uniform(0.05, 0.3)),
            pore_radius=(pore, 2.5 * pore),
            n_inclusions=int(rng.choice([0, 4, 8, 12, 16])),
            inclusion_radius=(inclusion, 2 * inclusion),
            seed=seed,
            mu_solid=mu,
            mu_inclusion=mu * ratio,
        )
    return make_rock(
        SHAPE,
        porosity=float(rng.uniform(0.05, 0.25)),
        pore_radius=(pore, 2.5 * pore),
        n_inclusions=int(rng.choice([0, 10, 20, 30])),
        inclusion_radius=(inclusion / 1.5, inclusion),
        grain_contrast=float(rng.uniform(0.0, 0.25)),
        seed=seed,
        mu_matrix=mu,
        mu_inclusion=mu * ratio,
    )


def simulate(phantom, conditions: dict, seed: int) -> np.ndarray:
    """Reconstructed grey values of one simulated scan of ``phantom``."""
    angles = np.linspace(0.0, np.pi, conditions["n_angles"], endpoint=False)
    data = measure(
        phantom.sinogram(angles),
        photons=conditions["photons"],
        seed=seed,
        stripe_fraction=conditions["stripe_fraction"],
        stripe_strength=conditions["stripe_strength"],
    )
    volume = reconstruct(data, angles, method="gridrec")
    if conditions["smooth_sigma"]:
        volume = ndimage.gaussian_filter(volume, (0, conditions["smooth_sigma"], conditions["smooth_sigma"]))
    return volume


def training_pairs(volume: np.ndarray, labels: np.ndarray, context: int) -> tuple[np.ndarray, np.ndarray]:
    """2.5D inputs of every slice with full context, and their labels (outside the circle ignored)."""
    slab = normalize(volume, intensity_range(volume))
    inputs = stacks(slab, context)
    targets = labels[context : labels.shape[0] - context].copy()
    n = targets.shape[-1]
    g = np.arange(n) - (n - 1) / 2.0
    targets[:, (g[:, None] ** 2 + g[None, :] ** 2) > (n / 2.0) ** 2] = IGNORE
    return inputs, targets


def sample_mask(phantom) -> np.ndarray:
    """The phantom's cylinder (where Dice is scored: the air around it is too easy)."""
    n = phantom.shape[-1]
    g = np.arange(n) - (n - 1) / 2.0
    return (g[:, None] ** 2 + g[None, :] ** 2) <= phantom.radius**2


def build_dataset(seeds: list[int], context: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Training inputs, targets and a description of each simulated scan."""
    inputs, targets, described = [], [], []
    for seed in seeds:
        for kind in ("foam", "rock"):
            rng = np.random.default_rng([seed, int(kind == "rock")])
            phantom, conditions = random_phantom(kind, rng, seed), scan_conditions(rng)
            x, y = training_pairs(simulate(phantom, conditions, seed), phantom.labels(), context)
            inputs.append(x)
            targets.append(y)
            described.append({"kind": kind, "seed": seed, **conditions})
            print(f"  {kind} seed {seed}: {conditions}", flush=True)
    return np.concatenate(inputs), np.concatenate(targets), described


def validate(model, seed: int) -> dict:
    """Dice per phase inside the sample on held-out foams and rocks at 2000 photons, with rings:
    at the training scale (``SHAPE``) and at twice its resolution (features twice as wide)."""
    scores = {}
    for name, shape, n_angles in (("", SHAPE, 180), (" 256px", (8, 256, 256), 360)):
        conditions = {
            "photons": 2000.0,
            "n_angles": n_angles,
            "stripe_fraction": 0.01,
            "stripe_strength": 0.03,
            "smooth_sigma": 0.0,
        }
        for kind, make in (("foam", make_foam), ("rock", make_rock)):
            phantom = make(shape, seed=seed)
            labels, _ = segment_volume(simulate(phantom, conditions, seed), "unet", model, device="cpu")
            dice = dice_scores(labels, phantom.labels(), len(PHASES), mask=sample_mask(phantom))
            scores[kind + name] = {p: round(d, 4) for p, d in zip(PHASES, dice)}
    return {
        "conditions": {
            "photons": 2000.0,
            "stripe_fraction": 0.01,
            "stripe_strength": 0.03,
            "seed": seed,
            "shapes": {"": list(SHAPE), " 256px": [8, 256, 256]},
        },
        "dice": scores,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR / f"{DEFAULT_MODEL}.pt")
    parser.add_argument("--steps", type=int, default=SETTINGS.steps)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (results may depend on it; 1 is also fastest on a busy 2-core machine)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(SETTINGS.seed)
    started = time.perf_counter()
    model = new_segmenter(DEFAULT_MODEL, base=12, device="cpu")
    print("simulating training scans", flush=True)
    inputs, targets, scans = build_dataset(list(range(N_TRAIN)), model.net.config.context)
    simulated = time.perf_counter() - started
    settings = TrainSettings(**{**asdict(SETTINGS), "steps": args.steps})
    print(f"training on {len(inputs)} slices ({simulated:.0f} s so far)", flush=True)
    losses = train_segmenter(model.net, inputs, targets, settings, device=torch.device("cpu"))
    validation = validate(model, VALIDATION_SEED)
    model.record = {
        "script": "scripts/train_segmenter.py",
        "data": {
            "description": "simulated foam and rock scans reconstructed by tomolive.recon (gridrec)",
            "shape": list(SHAPE),
            "slices": len(inputs),
            "scans": scans,
        },
        "training": {
            **asdict(settings),
            "threads": args.threads,
            "device": "cpu",
            "loss_first": round(float(np.mean(losses[:20])), 4),
            "loss_last": round(float(np.mean(losses[-20:])), 4),
            "seconds": round(time.perf_counter() - started, 1),
        },
        "normalization": {
            "percentiles": list(PERCENTILES),
            "smoothing_sigma": RANGE_SIGMA,
            "of": "inscribed reconstruction circle",
        },
        "validation": validation,
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    path = save_segmenter(model, args.out)
    print(f"validation Dice: {validation['dice']}")
    print(f"wrote {path} and {path.with_suffix('.json')} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
