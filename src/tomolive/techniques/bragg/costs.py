"""The cost model (:mod:`tomolive.ml.cost_model`) at run time: fit the rest of a scan, or retrain?

When drift is detected, the loop predicts both paths for the peaks still to come and retrains
only when label-train-infer is faster. The constants come from this cluster and this run:
inference from the edge's own timing; fit, training and registry transfer from the last
retrain's measured seconds, or, before any retrain, from a small calibration on the running
cluster (256 of the drifted peaks fitted, one epoch of fine-tuning on them). Each constant's
source is recorded beside the prediction.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ...ml.cost_model import CostConstants, Plan, predict
from .fitting import fit_patches_dask

if TYPE_CHECKING:
    from distributed import Client

    from ...ml.loop import RetrainResult
    from .retraining import BraggTrainer

CALIBRATION_PEAKS = 256


class LoopCosts:
    """Timings measured while the loop runs, turned into :class:`CostConstants` when a decision is due."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._lock = threading.Lock()
        self._infer = [0.0, 0]  # seconds, peaks localised at the edge
        self._load_s: float | None = None  # one registry load of the deployed model
        self._retrained: dict[str, float] | None = None  # per-sample costs of the last retrain

    def inferred(self, seconds: float, n: int) -> None:
        """The edge localised ``n`` peaks in ``seconds``."""
        with self._lock:
            self._infer[0] += seconds
            self._infer[1] += n

    def loaded(self, seconds: float) -> None:
        """A registry load took ``seconds``."""
        self._load_s = seconds

    def retrained(self, result: RetrainResult, epochs: int) -> None:
        """Take the constants from a finished retrain's measured seconds."""
        s = result.seconds
        self._retrained = {
            "c_fit": s["label"] / max(1, result.n_train),
            "c_step": max(0.0, s["train"] - s.get("label_held_out", 0.0)) / max(1, epochs * result.n_train),
            "o_transfer": s["publish"] + (self._load_s or 0.0),
        }

    def constants(self, client: Client, samples: np.ndarray, trainer: BraggTrainer) -> tuple[CostConstants, dict]:
        """The constants now, and where each came from (calibrating on ``client`` if no retrain ran yet)."""
        with self._lock:
            seconds, n = self._infer
        c_infer = seconds / n if n else 0.0
        sources = {"c_infer": f"edge timing of {n} peaks of this technique's runs"}
        if self._retrained is not None:
            measured = dict(self._retrained)
            sources.update(c_fit="the last retrain's labelling", c_step="the last retrain's training")
            sources["o_transfer"] = "the last retrain's publish and a registry load"
        else:
            measured = self._calibrate(client, samples, trainer)
            sources.update(
                c_fit=f"{CALIBRATION_PEAKS} drifted peaks fitted on the cluster now",
                c_step=f"one epoch on {CALIBRATION_PEAKS} peaks on a warm worker now (its start-up included)",
                o_transfer="two registry loads (publish not yet measured)",
            )
        constants = CostConstants(
            c_fit=measured["c_fit"],
            o_fit=0.0,  # inside c_fit: measured on whole jobs
            c_infer=c_infer,
            c_step=measured["c_step"],
            o_train=0.0,  # inside c_step
            o_transfer=measured["o_transfer"],
            bandwidth=float("inf"),  # the patches' trip to the workers is inside the measured labelling
            sample_bytes=int(samples[0].nbytes) if len(samples) else 0,
            workers=self.workers,
        )
        return constants, sources

    def _calibrate(self, client: Client, samples: np.ndarray, trainer: BraggTrainer) -> dict[str, float]:
        part = samples[:CALIBRATION_PEAKS]
        start = time.perf_counter()
        labels = fit_patches_dask(client, part, chunk=64)
        c_fit = (time.perf_counter() - start) / len(part)
        one = replace(trainer, fine_tune_epochs=1)
        from .default_model import default_model

        model = default_model()[0]
        labels = np.where(np.isfinite(labels), labels, (part.shape[1] - 1) / 2)  # only the step's time is wanted
        warm = [
            client.submit(one.fine_tune, model, (part[:16], labels[:16]), workers=[w], pure=False)
            for w in client.scheduler_info(n_workers=-1)["workers"]
        ]
        client.gather(warm)  # torch's first use on a worker is not a training step
        start = time.perf_counter()
        client.submit(one.fine_tune, model, (part, labels), pure=False).result()
        c_step = (time.perf_counter() - start) / len(part)
        return {"c_fit": c_fit, "c_step": c_step, "o_transfer": 2 * (self._load_s or 0.0)}


def decide(n_peaks: int, n_labelled: int, constants: CostConstants, epochs: int) -> dict[str, Any]:
    """Fit the rest vs retrain for ``n_peaks`` still to localise, ``n_labelled`` of them labelled by the fit."""
    plan = Plan(label_fraction=min(1.0, n_labelled / max(1, n_peaks)), held_out=0.2, epochs=epochs)
    prediction = predict(max(1, n_peaks), constants, plan)
    return {
        "n_peaks": prediction.n,
        "choice": prediction.choice,
        "predicted_s": {"fit": prediction.conventional, "surrogate": prediction.surrogate},
        "surrogate_parts_s": prediction.parts,
        "why": prediction.why,
        "constants": {k: None if v == float("inf") else v for k, v in constants.as_dict().items()},
    }
