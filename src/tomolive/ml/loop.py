"""The data-centre-to-edge retraining loop, for any technique with a surrogate model.

Roles (one protocol each): a :class:`Labeller` makes ground-truth labels the slow,
conventional way (a pseudo-Voigt fit for Bragg peaks, an iterative reconstruction for
ptychography); a :class:`Trainer` fine-tunes a model or trains one from scratch on labelled
data; a :class:`Validator` scores a model on held-back labelled data (lower is better).

:func:`train_and_deploy` is the loop's core, for data already labelled: train on a Dask
worker, score candidate and deployed model on the same held-out data, publish and deploy the
candidate only if it is better. :func:`retrain` puts labelling in front of it, for raw samples
(Bragg peaks on drift, :mod:`tomolive.techniques.bragg.retraining`). The ptychography surrogate
calls the core directly (:mod:`tomolive.techniques.ptycho.learning`): its labels are the
iterative reconstructions the reconstruction stage has already made.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from ..engine.cluster import gpu_resources
from ..errors import BadInputError, MissingDataError
from .deploy import Deployed, ModelSlot, drop_unlabelled

if TYPE_CHECKING:
    from distributed import Client

    from .registry import ModelRegistry

log = logging.getLogger(__name__)

Labelled = tuple[np.ndarray, np.ndarray]
"""(samples, labels), stacked along axis 0: the labelled data of :func:`retrain`."""

D = TypeVar("D")
D_contra = TypeVar("D_contra", contravariant=True)


class Labeller(Protocol):
    """The conventional method: labels for ``samples`` (same length along axis 0).

    A sample it cannot label gets a label holding NaN; :func:`retrain` and the drift monitor's
    audits leave such samples out (:func:`~.deploy.drop_unlabelled`).
    """

    def label(self, samples: np.ndarray) -> np.ndarray:
        """Labels for ``samples``."""
        ...


class Trainer(Protocol[D_contra]):
    """Trains models of one architecture on labelled data of type ``D_contra``.

    Both methods return a new model and leave their inputs untouched.
    """

    def fine_tune(self, model: Any, data: D_contra) -> Any:
        """A copy of ``model`` trained further on ``data``."""
        ...

    def from_scratch(self, data: D_contra) -> Any:
        """A new model trained on ``data`` from random weights."""
        ...


class Validator(Protocol[D_contra]):
    """The metric the loop compares models with; lower is better."""

    def score(self, model: Any, held_out: D_contra) -> float:
        """``model``'s error on ``held_out``."""
        ...


@dataclass(frozen=True)
class RetrainResult:
    """What one pass of the loop did, and why."""

    deployed: bool
    version: int | None  # the new version when published, else None
    parent: int | None  # the version fine-tuned from (None: trained from scratch)
    candidate_score: float
    deployed_score: float | None  # the model deployed before, on the same held-out data
    n_train: int
    n_held_out: int
    seconds: dict[str, float]  # label (retrain only), label_held_out, train, validate, publish, total
    reason: str
    metrics: dict[str, Any] = field(default_factory=dict)  # the version's metrics, recorded when published


def _train(trainer: Trainer[D], base: Any, data: D) -> Any:
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


def _labelled(samples: np.ndarray, labels: np.ndarray, part: str) -> Labelled:
    """:func:`~.deploy.drop_unlabelled`, refusing a ``part`` left too small to train (2) or validate (1) on."""
    kept = drop_unlabelled(samples, labels)
    if len(kept[0]) < (2 if part == "training" else 1):
        raise MissingDataError(
            f"retrain: the labeller labelled {len(kept[0])} of {len(samples)} {part} samples; too few to "
            "train on (collect more samples, or check the labeller on them)"
        )
    return kept


def _base(registry: ModelRegistry) -> Deployed[Any] | None:
    """The registry's deployed model to fine-tune, or None (nothing deployed, or it no longer loads)."""
    version = registry.deployed()
    if version is None:
        return None
    try:
        return Deployed(registry.load(version), version)
    except BadInputError as err:  # a version of another architecture: start afresh
        log.warning("retrain: deployed version %s cannot be fine-tuned (%s); training from scratch", version, err)
        return None


def train_and_deploy(
    train: D,
    held_out: Callable[[], D],
    *,
    trainer: Trainer[D],
    validator: Validator[D],
    registry: ModelRegistry,
    labels: dict[str, int],
    slot: ModelSlot[Any] | None = None,
    client: Client | None = None,
    baseline: float | None = None,
    metric: str = "held_out",
    describe: Callable[[Any], dict[str, Any]] | None = None,
    scan_uids: Iterable[str] = (),
    hyperparameters: dict[str, Any] | None = None,
) -> RetrainResult:
    """Fine-tune the deployed model on labelled ``train`` data; publish and deploy the result only if it is better.

    The base model is the registry's deployed version; with none (or one that no longer loads)
    a model is trained from scratch. Training runs on a Dask worker of ``client`` (GPU-tagged
    when the cluster has one; in a thread when ``client`` is None) while ``held_out()`` makes
    the held-out data here, so labelling it overlaps the training.

    Parameters
    ----------
    train, held_out : labelled data, and a callable returning the held-out labelled data
        ``lambda: data`` for data labelled already.
    trainer, validator : the technique's roles (:class:`Trainer`, :class:`Validator`).
    registry : ModelRegistry
        Where the base comes from and the candidate goes (a writer key).
    labels : dict
        Labelled samples by kind, recorded as lineage; needs ``"train"`` and ``"held_out"``. It is
        read after ``held_out()`` returns, which may complete it (counts known once labelled).
    slot : ModelSlot, optional
        The edge's deployed model: compared against and swapped when the candidate is better.
        Without one the registry's deployed version is compared against.
    client : distributed.Client, optional
        Where training runs.
    baseline : float, optional
        With nothing deployed the candidate must score below it (e.g. a flat image's score).
    metric : str
        The score's name in the version's metrics (also ``previous_<metric>``, ``baseline_<metric>``).
    describe : callable, optional
        More of the candidate to record in its metrics (e.g. its calibrated trust threshold).
    scan_uids, hyperparameters : lineage recorded with the version.

    Returns
    -------
    RetrainResult
        Published or not, both scores, timings and a one-line reason.
    """
    missing = {"train", "held_out"} - labels.keys()
    if missing:
        raise BadInputError(f"labels: expected counts for 'train' and 'held_out', missing {sorted(missing)}")
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    base = _base(registry)
    model, parent = (None, None) if base is None else base
    mark = time.perf_counter()
    with ThreadPoolExecutor(1, thread_name_prefix="retrain") as pool:
        future: Any
        if client is not None:
            [data] = client.scatter([train], hash=False)  # not embedded in the task graph
            future = client.submit(_train, trainer, model, data, resources=gpu_resources(client), pure=False)
        else:
            future = pool.submit(_train, trainer, model, train)
        held = held_out()  # overlaps the training
        seconds["label_held_out"] = time.perf_counter() - mark
        candidate = future.result()
    seconds["train"] = time.perf_counter() - mark
    mark = time.perf_counter()
    score = float(validator.score(candidate, held))
    current = slot.peek() if slot is not None else base
    before = None if current is None else float(validator.score(current.model, held))
    seconds["validate"] = time.perf_counter() - mark
    bar = before if current is not None else baseline
    better = bar is None or score < bar
    metrics: dict[str, Any] = {
        metric: score,
        f"previous_{metric}": before,
        "previous_version": None if current is None else current.version,
    }
    if baseline is not None:
        metrics[f"baseline_{metric}"] = baseline
    metrics.update(describe(candidate) if describe is not None else {})
    version = None
    mark = time.perf_counter()
    if better:
        version = registry.publish(
            candidate,
            parent=parent,
            metrics=metrics,
            scan_uids=scan_uids,
            labels=labels,
            hyperparameters=hyperparameters,
        )
        if slot is not None:
            slot.swap(candidate, version)
    seconds["publish"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - start
    against = f"deployed {before if before is None else format(before, '.4g')}"
    against += "" if baseline is None else f", baseline {baseline:.4g}"
    reason = f"candidate {score:.4g} vs {against} on {labels['held_out']} held-out samples: " + (
        f"published and deployed as version {version}" if better else "kept"
    )
    log.info("retrain: %s", reason)
    return RetrainResult(
        better, version, parent, score, before, labels["train"], labels["held_out"], seconds, reason, metrics
    )


def retrain(
    samples: np.ndarray,
    *,
    labeller: Labeller,
    trainer: Trainer[Labelled],
    validator: Validator[Labelled],
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

    The training samples are labelled here first, the held-out ones while training runs; the
    rest is :func:`train_and_deploy`, comparing against and swapping ``slot``'s model. Samples the
    labeller leaves unlabelled (NaN) are left out; the version's labels count the training,
    held-out, offered and unlabelled samples.
    """
    start = time.perf_counter()
    samples = np.asarray(samples)
    picked_x, held_x = _split(samples, label_fraction, held_out, seed)
    train_x, train_y = _labelled(picked_x, labeller.label(picked_x), "training")
    labelled = time.perf_counter() - start
    counts = {"train": len(train_x), "held_out": 0, "offered": len(samples), "unlabelled": len(picked_x) - len(train_x)}

    def label_held_out() -> Labelled:
        held = _labelled(held_x, labeller.label(held_x), "held-out")
        counts["held_out"] = len(held[0])
        counts["unlabelled"] += len(held_x) - len(held[0])
        return held

    result = train_and_deploy(
        (train_x, train_y),
        label_held_out,
        trainer=trainer,
        validator=validator,
        registry=registry,
        labels=counts,
        slot=slot,
        client=client,
        scan_uids=scan_uids,
        hyperparameters=hyperparameters,
    )
    seconds = {"label": labelled, **result.seconds, "total": time.perf_counter() - start}
    return dataclasses.replace(result, seconds=seconds)
