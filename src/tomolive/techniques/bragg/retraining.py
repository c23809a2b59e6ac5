"""The Bragg side of the retraining loop (:mod:`tomolive.ml.loop`): the pseudo-Voigt fit as the
labeller, BraggNN training as the trainer, the median centre error as the validator, and a
:class:`~tomolive.ml.deploy.DriftMonitor` for a :class:`BraggTechnique` that retrains on drift.

Examples
--------
::

    registry = braggnn_registry(tiled_client)          # writer key: the loop publishes
    if not registry.versions():
        registry.publish(default_model()[0], parent=None, metrics={}, scan_uids=[])
    slot = ModelSlot(registry.load(), registry.deployed())
    monitor = bragg_drift_monitor(slot, registry, dask_client)
    technique = BraggTechnique(slot=slot, monitor=monitor)

The default pipeline wires this by itself for runs stored in Tiled (:mod:`.live_loop`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...ml.deploy import DriftMonitor, ModelSlot
from ...ml.loop import Labelled, RetrainResult, retrain
from ...ml.registry import ModelRegistry
from .braggnn import BraggNN, BraggNNConfig, predict_centres, train
from .fitting import fit_patches, fit_patches_dask

if TYPE_CHECKING:
    from distributed import Client
    from tiled.client.base import BaseClient


def build_braggnn(channels: Sequence[int], dense: Sequence[int], patch: int) -> BraggNN:
    """An untrained BraggNN from its recorded architecture (the registry's ``build``)."""
    c1, c2, c3 = (int(c) for c in channels)
    return BraggNN(BraggNNConfig((c1, c2, c3), tuple(int(d) for d in dense), int(patch)))


def braggnn_registry(client: BaseClient, name: str = "braggnn", config: BraggNNConfig | None = None) -> ModelRegistry:
    """The registry of BraggNN versions under Tiled ``models/<name>``."""
    return ModelRegistry(client, name, build=build_braggnn, arch=asdict(config or BraggNNConfig()))


class FitLabeller:
    """Peak centres by pseudo-Voigt least squares: on a Dask cluster when given one, else here."""

    def __init__(self, client: Client | None = None, chunk: int = 64) -> None:
        self.client, self.chunk = client, chunk

    def label(self, samples: np.ndarray) -> np.ndarray:
        if self.client is None:
            return fit_patches(samples)
        return fit_patches_dask(self.client, samples, chunk=self.chunk)


@dataclass(frozen=True)
class BraggTrainer:
    """BraggNN training for the loop: a short low-rate fine-tune, or a long run from scratch.

    ``threads`` bounds torch's threads in the task (a data-centre worker shares its cores).
    """

    fine_tune_epochs: int = 4
    fine_tune_lr: float = 5e-4
    scratch_epochs: int = 30
    scratch_lr: float = 2e-3
    batch_size: int = 128
    threads: int = 1
    seed: int = 0

    def fine_tune(self, model: BraggNN, data: Labelled) -> BraggNN:
        return self._fit(copy.deepcopy(model), data, self.fine_tune_epochs, self.fine_tune_lr)

    def from_scratch(self, data: Labelled) -> BraggNN:
        torch.manual_seed(self.seed)
        return self._fit(BraggNN(BraggNNConfig()), data, self.scratch_epochs, self.scratch_lr)

    def _fit(self, model: BraggNN, data: Labelled, epochs: int, lr: float) -> BraggNN:
        torch.set_num_threads(self.threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"  # a GPU-tagged worker has one
        model, _ = train(
            model.to(device), data[0], data[1], epochs=epochs, lr=lr, batch_size=self.batch_size, seed=self.seed
        )
        return model.cpu().eval()

    def hyperparameters(self) -> dict[str, Any]:
        return asdict(self)


class CentreError:
    """Median distance (px) between the model's centres and the labels; lower is better."""

    def score(self, model: BraggNN, held_out: Labelled) -> float:
        patches, centres = held_out
        return float(np.median(np.hypot(*(predict_centres(model, patches) - centres).T)))


def bragg_retrain(
    slot: ModelSlot[Any],
    registry: ModelRegistry,
    client: Client | None,
    trainer: BraggTrainer,
    label_fraction: float = 1.0,
) -> Callable[[np.ndarray, tuple[str, ...]], RetrainResult]:
    """``retrain(samples, scan_uids)``: one pass of :func:`tomolive.ml.loop.retrain` with the Bragg roles.

    Labels on ``client``'s workers, trains there, and records ``scan_uids`` as the new version's lineage.
    """
    validator = CentreError()

    def run(samples: np.ndarray, scan_uids: tuple[str, ...]) -> RetrainResult:
        return retrain(
            samples,
            labeller=FitLabeller(client),
            trainer=trainer,
            validator=validator,
            registry=registry,
            slot=slot,
            client=client,
            label_fraction=label_fraction,
            scan_uids=scan_uids,
            hyperparameters=trainer.hyperparameters(),
        )

    return run


def bragg_drift_monitor(
    slot: ModelSlot[Any],
    registry: ModelRegistry,
    client: Client | None,
    *,
    threshold: float = 0.08,
    every: int = 10,
    audit_size: int = 32,
    min_samples: int = 2000,
    label_fraction: float = 1.0,
    trainer: BraggTrainer | None = None,
    on_drift: Callable[[np.ndarray, tuple[str, ...]], Any] | None = None,
) -> DriftMonitor:
    """A DriftMonitor whose drift runs :func:`bragg_retrain` (or ``on_drift``, when given).

    Audits fit ``audit_size`` peaks here every ``every`` frames; a median disagreement above
    ``threshold`` px collects ``min_samples`` new patches, then labels and fine-tunes on
    ``client``'s workers; results are on ``monitor.retrains`` (futures of RetrainResult). The
    new version's lineage holds the ``source`` tags (scan uids) its patches were observed with.
    """
    trainer = trainer or BraggTrainer()
    return DriftMonitor(
        slot,
        FitLabeller(None),
        CentreError(),
        threshold=threshold,
        on_drift=on_drift or bragg_retrain(slot, registry, client, trainer, label_fraction),
        every=every,
        audit_size=audit_size,
        min_samples=min_samples,
        max_samples=max(min_samples, 4 * min_samples),
    )
