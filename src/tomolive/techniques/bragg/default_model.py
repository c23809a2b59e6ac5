"""The recipe of the shipped BraggNN: simulated peaks, a seeded training run, a held-out score.

:func:`train_default` is what scripts/train_braggnn.py runs to write
``tomolive/weights/braggnn.pt`` and its record; :func:`default_model` loads the shipped
weights (hash checked). Peaks are drawn from the simulator's default shape, with heights
down to the weakest a default threshold finds (30 counts), so the model covers every
peak the technique localises before a setup change.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...sim.bragg import Noise, PeakShape, simulate_patches
from .braggnn import BraggNN, BraggNNConfig, load_model, predict_centres, train

TRAINING_SHAPE = PeakShape(amplitude=(30.0, 1500.0))
N_TRAIN, N_VALIDATE = 24_000, 4_000
EPOCHS, LR, BATCH = 12, 2e-3, 256
SEED, VALIDATION_SEED = 0, 1000


def train_default(threads: int = 1) -> tuple[BraggNN, dict[str, Any]]:
    """Train the default model from scratch (about a minute on one quiet core); return it and its record."""
    torch.set_num_threads(threads)
    patches, centres = simulate_patches(N_TRAIN, peak_shape=TRAINING_SHAPE, seed=SEED)
    torch.manual_seed(SEED)
    model, history = train(
        BraggNN(BraggNNConfig()), patches, centres, epochs=EPOCHS, lr=LR, batch_size=BATCH, seed=SEED
    )
    held_out, truth = simulate_patches(N_VALIDATE, peak_shape=TRAINING_SHAPE, seed=VALIDATION_SEED)
    errors = np.hypot(*(predict_centres(model, held_out) - truth).T)
    record = {
        "name": "braggnn",
        "script": "scripts/train_braggnn.py",
        "data": {
            "kind": "tomolive.sim.bragg.simulate_patches",
            "peak_shape": TRAINING_SHAPE.as_dict(),
            "noise": vars(Noise()),
            "n_train": N_TRAIN,
            "seed": SEED,
        },
        "training": {**history, "threads": threads, "loss": [round(v, 8) for v in history["loss"]]},
        "validation": {
            "n": N_VALIDATE,
            "seed": VALIDATION_SEED,
            "median_error_px": round(float(np.median(errors)), 4),
            "p90_error_px": round(float(np.percentile(errors, 90)), 4),
        },
        "torch": torch.__version__,
    }
    return model, record


def default_model() -> tuple[BraggNN, dict[str, Any]]:
    """The shipped model and its record (see :func:`tomolive.techniques.bragg.braggnn.load_model`)."""
    return load_model()
