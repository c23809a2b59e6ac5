"""The data-centre-to-edge retraining loop, for any technique with a surrogate model.

Roles (one protocol each): a :class:`Labeller` makes ground-truth labels the slow,
conventional way (a pseudo-Voigt fit for Bragg peaks, an iterative reconstruction for
ptychography); a :class:`Trainer` fine-tunes a model or trains one from scratch on labelled
samples; a :class:`Validator` scores a model on held-back labelled samples (lower is better).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..engine.cluster import gpu_resources
from ..errors import BadInputError
from .deploy import ModelSlot

if TYPE_CHECKING:
    from distributed import Client

    from .registry import ModelRegistry

log = logging.getLogger(__name__)

Labelled = tuple[np.ndarray, np.ndarray]
"""(samples, labels), stacked along axis 0."""


class Labeller(Protocol):
    """The conventional method: labels for ``samples`` (same length along axis 0)."""

    def label(self, samples: np.ndarray) -> np.ndarray:
        """Labels for ``samples``."""
        ...


class Trainer(Protocol):
    """Trains models of one architecture; both methods return a new model and leave inputs untouched."""

    def fine_tune(self, model: Any, data: Labelled) -> Any:
        """A copy of ``model`` trained further on ``data``."""
        ...

    def from_scratch(self, data: Labelled) -> Any:
        """A new model trained on ``data`` from random weights."""
        ...


class Validator(Protocol):
    """The metric the loop compares models with; lower is better."""

    def score(self, model: Any, held_out: Labelled) -> float:
        """``model``'s error on ``held_out``."""
        ...


@dataclass(frozen=True)
class RetrainResult:
    """What one pass of the loop did, and why."""

    deployed: bool
    version: int | None  # the new version when published, else None
    parent: int | None  # the version fine-tuned from (None: trained from scratch)
    candidate_score: float
    deployed_score: float | None  # the model deployed before, on the same held-out samples
    n_train: int
    n_held_out: int
    seconds: dict[str, float]  # label, train, validate, publish, total
    reason: str


def _train(trainer: Trainer, base: Any, data: Labelled) -> Any:
    """The data-centre task: fine-tune ``base``, or train from scratch when there is none."""
    return trainer.from_scratch(data) if base is None else trainer.fine_tune(base, data)


def _split(samples: np.ndarray, label_fraction: float, held_out: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if samples.ndim < 1 or len(samples) < 2:
        raise BadInputError(f"samples: expected at least 2 samples stacked along axis 0, got shape {samples.shape}")
    if not 0 < label_fraction <= 1 or not 0 < held_out < 1:
        raise BadInputError(
            f"label_fraction, held_out: expected 0 < label_fraction <= 1 and 0 < held_out < 1, "
            f"got {label_fraction!r}, {held_out!r}"
        )
    rng = np.random.default_rng(seed)
    picked = rng.permutation(len(samples))[: max(2, round(label_fraction * len(samples)))]
    n_held = min(max(1, round(held_out * len(picked))), len(picked) - 1)
    return samples[np.sort(picked[n_held:])], samples[np.sort(picked[:n_held])]


def retrain(
    samples: np.ndarray,
    *,
    labeller: Labeller,
    trainer: Trainer,
    validator: Validator,
    registry: ModelRegistry,
    slot: ModelSlot[Any],
    client: Client | None = None,
    label_fraction: float = 1.0,
    held_out: float = 0.2,
    scan_uids: Iterable[str] = (),
    hyperparameters: dict[str, Any] | None = None,
    seed: int = 0,
) -> RetrainResult:
    """Label a fraction of ``samples``, fine-tune the deployed model, and deploy it only if it is better.

    The training samples are labelled first; training then runs on a Dask worker of ``client``
    (GPU-tagged when the cluster has one; in a thread when ``client`` is None) while the
    held-out samples are labelled here. The candidate and the model deployed now are scored
    on the same held-out samples; the candidate is published to ``registry`` (lineage:
    parent version, scan uids, label counts, both scores) and swapped into ``slot`` only when
    its score is lower. The base model is the registry's deployed version; with none (or
    one that no longer loads) a model is trained from scratch.
    """
    start = time.perf_counter()
    train_x, held_x = _split(np.asarray(samples), label_fraction, held_out, seed)
    seconds: dict[str, float] = {}
    train_y = labeller.label(train_x)
    seconds["label"] = time.perf_counter() - start
    parent = registry.deployed()
    try:
        base = None if parent is None else registry.load(parent)
    except BadInputError as err:  # a version of another architecture: start afresh
        log.warning("retrain: deployed version %s cannot be fine-tuned (%s); training from scratch", parent, err)
        base, parent = None, None
    mark = time.perf_counter()
    with ThreadPoolExecutor(1, thread_name_prefix="retrain") as pool:
        future: Any
        if client is not None:
            future = client.submit(
                _train, trainer, base, (train_x, train_y), resources=gpu_resources(client), pure=False
            )
        else:
            future = pool.submit(_train, trainer, base, (train_x, train_y))
        held_y = labeller.label(held_x)  # overlaps the training
        seconds["label_held_out"] = time.perf_counter() - mark
        candidate = future.result()
    seconds["train"] = time.perf_counter() - mark
    mark = time.perf_counter()
    score = float(validator.score(candidate, (held_x, held_y)))
    current = slot.peek()
    before = None if current is None else float(validator.score(current.model, (held_x, held_y)))
    seconds["validate"] = time.perf_counter() - mark
    better = before is None or score < before
    version = None
    mark = time.perf_counter()
    if better:
        metrics = {"held_out": score, "previous_held_out": before, "previous_version": slot.version}
        labels = {"train": len(train_x), "held_out": len(held_x), "offered": len(samples)}
        version = registry.publish(
            candidate,
            parent=parent,
            metrics=metrics,
            scan_uids=scan_uids,
            labels=labels,
            hyperparameters=hyperparameters,
        )
        slot.swap(candidate, version)
    seconds["publish"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - start
    reason = (
        f"candidate {score:.4g} vs deployed {before if before is None else format(before, '.4g')} on "
        f"{len(held_x)} held-out samples: " + (f"published and deployed as version {version}" if better else "kept")
    )
    log.info("retrain: %s", reason)
    return RetrainResult(better, version, parent, score, before, len(train_x), len(held_x), seconds, reason)
