"""The parameters of Bragg-peak processing, all recorded in provenance."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ...errors import BadInputError

RETRAIN_MODES = ("auto", "off")
DECIDE_MODES = ("cost", "always")


@dataclass(frozen=True)
class RetrainParams:
    """The knobs of the automatic retraining loop (:mod:`tomolive.techniques.bragg.live_loop`).

    Parameters
    ----------
    mode : {"auto", "off"}
        ``"auto"``: runs whose store has a model store (Tiled ``models/``) audit the deployed
        model, retrain on drift and hot-swap; ``"off"``: edge-only, the deployed model is kept.
    registry : str
        The model series in Tiled ``models/<registry>``.
    threshold_px : float
        Median surrogate-vs-fit disagreement (px) of an audit that counts as drift.
    every, audit_size : int
        Frames between audits; peaks fitted per audit.
    min_samples : int
        Peaks collected after drift before the retrain starts.
    label_fraction : float
        Fraction of the collected peaks labelled by the fit (a fifth of them held back to validate).
    fine_tune_epochs, scratch_epochs : int
        Epochs of a fine-tune from the deployed version, and of training from scratch (none loads).
    decide : {"cost", "always"}
        ``"cost"``: retrain only when the cost model predicts label-train-infer beats fitting
        the rest of the scan; ``"always"``: retrain on every drift (the prediction is still recorded).
    wait_s : float
        How long a run's processing waits after its stop for the retrains its peaks started.
    """

    mode: str = "auto"
    registry: str = "braggnn"
    threshold_px: float = 0.08
    every: int = 10
    audit_size: int = 32
    min_samples: int = 2000
    label_fraction: float = 1.0
    fine_tune_epochs: int = 4
    scratch_epochs: int = 30
    decide: str = "cost"
    wait_s: float = 300.0

    def __post_init__(self) -> None:
        if self.mode not in RETRAIN_MODES or self.decide not in DECIDE_MODES:
            raise BadInputError(
                f"retrain mode must be one of {RETRAIN_MODES} and decide one of {DECIDE_MODES}; "
                f"got {self.mode!r}, {self.decide!r}."
            )
        counts = (self.every, self.audit_size, self.min_samples, self.fine_tune_epochs, self.scratch_epochs)
        if min(counts) < 1 or not 0 < self.label_fraction <= 1 or not self.threshold_px > 0 or self.wait_s < 0:
            raise BadInputError(
                "retrain: every, audit_size, min_samples and epochs must be >= 1, 0 < label_fraction <= 1, "
                f"threshold_px > 0 and wait_s >= 0; got {self!r}."
            )


@dataclass(frozen=True)
class BraggParams:
    """Every knob of peak finding, localisation and the audit.

    Parameters
    ----------
    threshold : float
        Counts above a frame's median a pixel needs to belong to a peak; a start document's
        ``bragg.threshold`` (``bragg_scan(threshold=...)``) overrides it for its run.
    min_pixels : int
        Smallest peak (8-connected pixels above the threshold); ``bragg.min_pixels`` overrides it.
    patch_size : int
        Side of the patch around each peak; the model's input size (11 for BraggNN).
    saturation : float or None
        Counts at or above which a pixel is saturated; None: the maximum of an integer
        frame's dtype (no check for float frames).
    batch_size : int
        Patches per forward pass of the model.
    audit_fraction : float
        Fraction of localised peaks also fitted with the pseudo-Voigt labeller on Dask after
        the scan (rows with ``method="pseudo-voigt"`` in the table; their disagreement with the
        model is in the container's ``audit``); 0 for none.
    audit_max : int
        At most this many peaks audited per scan.
    fit_chunk : int
        Patches per Dask task of the audit.
    retrain : RetrainParams
        The automatic retraining loop's knobs.
    """

    threshold: float = 30.0
    min_pixels: int = 4
    patch_size: int = 11
    saturation: float | None = None
    batch_size: int = 4096
    audit_fraction: float = 0.05
    audit_max: int = 2000
    fit_chunk: int = 128
    retrain: RetrainParams = field(default_factory=RetrainParams)

    def __post_init__(self) -> None:
        if not (np.isfinite(self.threshold) and self.threshold > 0):
            raise BadInputError(f"threshold must be a positive number of counts; got {self.threshold!r}.")
        if self.min_pixels < 1 or self.batch_size < 1 or self.fit_chunk < 1 or self.audit_max < 0:
            raise BadInputError(
                "min_pixels, batch_size and fit_chunk must be >= 1 and audit_max >= 0; got "
                f"{self.min_pixels!r}, {self.batch_size!r}, {self.fit_chunk!r}, {self.audit_max!r}."
            )
        if self.patch_size < 3 or self.patch_size % 2 == 0:
            raise BadInputError(f"patch_size must be odd and >= 3; got {self.patch_size!r}.")
        if not 0.0 <= self.audit_fraction <= 1.0:
            raise BadInputError(f"audit_fraction must lie in [0, 1]; got {self.audit_fraction!r}.")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
