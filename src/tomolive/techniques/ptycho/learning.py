"""The surrogate over a run's life: the model store, training as views accumulate, use by the live preview.

* Store: :func:`ptychonn_registry` keeps :class:`~.surrogate.Surrogate` versions in Tiled
  ``models/ptychonn_n<n>_c<channels>`` (:class:`~tomolive.ml.registry.ModelRegistry`), each one
  :class:`StoredSurrogate` module: the network plus, as buffers (so the weights' SHA-256 covers
  them), the probe it stitches with, its training-set size and its trust threshold. Lineage
  (scan uids, pairs, parent version, held-out scores) is the version's record.
* Training: :class:`SurrogateStage` runs after the per-view reconstruction and is one pass of
  the retraining loop Bragg peaks also use (:func:`tomolive.ml.loop.train_and_deploy`). The
  labels are the views' iterative results, already made, so nothing is labelled; all views but
  the last train, the last is held out. :class:`SurrogateTrainer` fine-tunes the deployed
  version (or trains from scratch) on a Dask worker on :func:`~.surrogate.training_set` pairs
  and calibrates the candidate's trust threshold on the held-out view's patterns;
  :class:`PhaseError` scores new and deployed versions by phase NRMSE against the held-out
  view's iterative result. The new version is published (and deployed) only when it scores
  better (with none deployed: better than the flat image).
* Preview: :func:`deployed_surrogate` loads the deployed version for a run's pattern size off
  the ingest thread; :meth:`LiveSurrogate.image` gives the preview its stitched image when the
  trust check passes on the patterns so far, or says why not.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ...ml.loop import train_and_deploy
from ...ml.registry import ModelRegistry
from ...stages import StageContext
from . import metrics
from . import surrogate as sg
from .params import PtychoParams
from .stages import worker_threads
from .views import View

if TYPE_CHECKING:
    from tiled.client.base import BaseClient

Solved = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""One view for training: measured patterns, refined positions, iterative object, iterative probe."""


class StoredSurrogate(nn.Module):
    """A :class:`~.surrogate.Surrogate` as one module for the registry (network + buffers)."""

    probe: torch.Tensor
    n_train: torch.Tensor
    threshold: torch.Tensor

    def __init__(self, n: int, channels: int):
        super().__init__()
        self.net = sg.PtychoNN(n, channels)
        self.register_buffer("probe", torch.zeros(2, n, n))
        self.register_buffer("n_train", torch.zeros((), dtype=torch.int64))
        self.register_buffer("threshold", torch.tensor(float("inf")))
        self.record: dict[str, Any] = {}  # training's record when packed after training; not in the weights

    @classmethod
    def pack(cls, sur: sg.Surrogate) -> StoredSurrogate:
        """``sur`` (network, probe, training-set size, threshold) as one module."""
        stored = cls(int(sur.net.arch["n"]), int(sur.net.arch["channels"]))
        stored.net.load_state_dict(sur.net.state_dict())
        stored.probe.copy_(torch.from_numpy(np.stack([sur.probe.real, sur.probe.imag]).astype(np.float32)))
        stored.n_train.fill_(sur.n_train)
        stored.threshold.fill_(sur.threshold)
        stored.record = dict(sur.record)
        return stored

    def unpack(self) -> sg.Surrogate:
        """The :class:`~.surrogate.Surrogate` again (its training record is the registry version's)."""
        probe = (self.probe[0] + 1j * self.probe[1]).numpy().astype(np.complex64)
        return sg.Surrogate(self.net.eval(), probe, int(self.n_train), float(self.threshold))


def ptychonn_registry(client: BaseClient, n: int, channels: int) -> ModelRegistry:
    """The registry of surrogate versions for ``n x n`` patterns and width ``channels``."""
    return ModelRegistry(
        client, f"ptychonn_n{n}_c{channels}", build=StoredSurrogate, arch={"n": n, "channels": channels}
    )


@dataclass(frozen=True)
class LiveSurrogate:
    """The deployed surrogate a run's preview may use (``version``), or why there is none (``why_not``)."""

    surrogate: sg.Surrogate | None
    version: int | None
    why_not: str = ""

    def image(self, view: View, object_shape: tuple[int, int]) -> tuple[np.ndarray | None, str]:
        """The stitched object of the patterns so far and a line saying so, or None and why not."""
        if self.surrogate is None:
            return None, self.why_not
        obj = self.surrogate.image(view.patterns, view.positions, object_shape)
        report = sg.check_trust(self.surrogate, view.patterns, view.positions, object_shape, image=obj)
        if not report.trusted:
            return None, f"surrogate v{self.version} not trusted: {report.reason}"
        return obj, f"surrogate v{self.version} (misfit ratio {report.ratio:.3f} <= {report.threshold:.3f})"


def deployed_surrogate(client: BaseClient | None, n: int, channels: int) -> LiveSurrogate:
    """The deployed surrogate for ``n x n`` patterns from the model store, or why there is none."""
    if client is None:
        return LiveSurrogate(None, None, "no model store: the result goes to the outbox")
    unsupported = _unsupported(n)
    if unsupported is not None:
        return LiveSurrogate(None, None, f"no surrogate: {unsupported}")
    registry = ptychonn_registry(client, n, channels)
    version = registry.deployed()
    if version is None:
        return LiveSurrogate(None, None, f"no surrogate in the model store ({registry.name})")
    return LiveSurrogate(_unpack(registry.load(version)), version)


MAX_PATTERN_PX = 64
"""Largest pattern the surrogate takes: its dense bottleneck grows as n^4 (0.56 M parameters at
32 px, 8.4 M at 64, 134 M at 128), past what a preview network should cost to train and ship."""


def skip_reason(params: PtychoParams, n_views: int, n: int) -> str | None:
    """Why this run trains no surrogate (None: it trains one)."""
    least = 3 if params.surrogate == "auto" else 2
    if n_views < least:
        return f"{n_views} view(s): surrogate={params.surrogate!r} trains on rotation series of >= {least} views"
    return _unsupported(n)


def _unsupported(n: int) -> str | None:
    """Why ``n x n`` patterns get no surrogate (None: they can)."""
    if n % 8:
        return f"{n} px patterns: the surrogate needs a multiple of 8"
    if n > MAX_PATTERN_PX:
        return f"{n} px patterns: the surrogate takes up to {MAX_PATTERN_PX} px (bin the detector to use it)"
    return None


Views = list[Solved]
"""Solved views: the loop's labelled data (the iterative object and probe label the measured patterns)."""


def _extra_per_view(training: Views, pairs: int) -> int:
    """Pairs to simulate per view so that, with the measured ones, ``training`` gives ``pairs``."""
    measured = sum(len(pats) for pats, *_ in training)
    return max(0, -(-(pairs - measured) // len(training)))


def training_pairs(training: Views, pairs: int) -> int:
    """Pairs a run trains on: ``pairs`` drawn from the measured ones when there are more (a long
    rotation series would otherwise make training outlast the reconstruction), else all measured
    plus simulated ones."""
    measured = sum(len(pats) for pats, *_ in training)
    return pairs if measured >= pairs else measured + len(training) * _extra_per_view(training, pairs)


@dataclass(frozen=True)
class SurrogateTrainer:
    """The surrogate's :class:`~tomolive.ml.loop.Trainer`: solved views in, a :class:`StoredSurrogate` out.

    Each view gives its measured pairs plus simulated ones up to ``pairs`` in all
    (:func:`~.surrogate.training_set`); with more measured pairs than that, ``pairs`` of them. The candidate's trust threshold is calibrated on
    ``calibration`` (a held-out view's patterns and positions), so the version the loop
    publishes carries its own. Torch uses ``threads`` threads, or the Dask worker's count.
    """

    object_shape: tuple[int, int]
    calibration: tuple[np.ndarray, np.ndarray]
    pairs: int
    epochs: int
    channels: int
    threads: int | None = None
    fine_tune_lr: float = 1e-3
    scratch_lr: float = 2e-3

    @classmethod
    def from_params(
        cls, params: PtychoParams, object_shape: tuple[int, int], calibration: tuple[np.ndarray, np.ndarray]
    ) -> SurrogateTrainer:
        """The trainer ``params`` ask for (``surrogate_pairs``, ``surrogate_epochs``, ...)."""
        return cls(
            object_shape,
            calibration,
            params.surrogate_pairs,
            params.surrogate_epochs,
            params.surrogate_channels,
            params.threads_per_task,
        )

    def fine_tune(self, model: StoredSurrogate, data: Views) -> StoredSurrogate:
        """A copy of ``model`` trained further on ``data`` and calibrated."""
        return self._fit(data, model.unpack())

    def from_scratch(self, data: Views) -> StoredSurrogate:
        """A new surrogate trained on ``data`` and calibrated."""
        return self._fit(data, None)

    def _fit(self, data: Views, parent: sg.Surrogate | None) -> StoredSurrogate:
        extra = _extra_per_view(data, self.pairs)
        parts = [sg.training_set(*solved, extra=extra, rng=k) for k, solved in enumerate(data)]
        x, amp, phase = (np.concatenate(v) for v in zip(*parts))
        if len(x) > self.pairs:  # more measured pairs than asked for: an even random draw over the views
            keep = np.sort(np.random.default_rng(0).choice(len(x), self.pairs, replace=False))
            x, amp, phase = x[keep], amp[keep], phase[keep]
        _, pos, obj, probe = data[0]
        sur = sg.train(
            x,
            amp,
            phase,
            sg.label_probe(obj, pos, probe),
            epochs=self.epochs,
            lr=self.scratch_lr if parent is None else self.fine_tune_lr,
            channels=self.channels,
            threads=self.threads or worker_threads(),
            init=None if parent is None else parent.net,
        )
        sur.n_train = len(x) + (parent.n_train if parent is not None else 0)
        sg.calibrate(sur, *self.calibration, self.object_shape)
        return StoredSurrogate.pack(sur)

    def hyperparameters(self) -> dict[str, Any]:
        """What the registry records of this trainer."""
        return {"pairs": self.pairs, "epochs": self.epochs, "channels": self.channels,
                "fine_tune_lr": self.fine_tune_lr, "scratch_lr": self.scratch_lr}  # fmt: skip


@dataclass(frozen=True)
class PhaseError:
    """The surrogate's :class:`~tomolive.ml.loop.Validator`: stitched phase NRMSE against each held-out
    view's iterative result inside its illuminated area, averaged over the views; lower is better."""

    object_shape: tuple[int, int]

    def score(self, model: StoredSurrogate, held_out: Views) -> float:
        """``model``'s error on ``held_out``."""
        sur = model.unpack()
        return self._mean(held_out, lambda pats, pos: sur.image(pats, pos, self.object_shape))

    def flat(self, held_out: Views) -> float:
        """A flat (all-ones) object's error: what a first version must beat."""
        ones = np.ones(self.object_shape, np.complex64)
        return self._mean(held_out, lambda pats, pos: ones)

    def _mean(self, held_out: Views, image: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> float:
        errors = [
            metrics.phase_nrmse(image(pats, pos), obj, metrics.illuminated_mask(self.object_shape, pos, probe))
            for pats, pos, obj, probe in held_out
        ]
        return float(np.mean(errors))


def _describe(model: StoredSurrogate) -> dict[str, Any]:
    """What a new version records besides its scores: training-set size, trust threshold, last epoch's loss."""
    return {"n_train": int(model.n_train), "threshold": float(model.threshold), "train_loss": model.record["loss"][-1]}


class SurrogateStage:
    """Train the surrogate on this run's views and publish it when it beats the deployed one.

    One pass of :func:`~tomolive.ml.loop.train_and_deploy`: the labels are the iterative
    reconstructions the reconstruction stage made, so there is nothing to label. All views but
    the last train (on a Dask worker), the last is held out; with nothing deployed the new
    version must beat the flat image.
    """

    name = "surrogate"

    def run(self, ctx: StageContext) -> None:
        params: PtychoParams = ctx.params
        views: list[View] = ctx.results["views"]
        results = ctx.results["ptycho"]
        n = int(views[0].patterns.shape[-1])
        client = getattr(ctx.store, "models_client", None)
        why = skip_reason(params, len(views), n)
        if why is not None or client is None:
            ctx.metadata["surrogate"] = {"skipped": why or "no model store: the result goes to the outbox"}
            return
        started = time.perf_counter()
        registry = ptychonn_registry(client, n, params.surrogate_channels)
        solved: Views = [
            (v.patterns, np.asarray(r.positions), np.asarray(r.object), np.asarray(r.probe))
            for v, r in zip(views, results)
        ]
        training, held_out = solved[:-1], solved[-1:]
        shape = ctx.acquisition.setup.object_shape
        trainer = SurrogateTrainer.from_params(params, shape, calibration=held_out[0][:2])
        validator = PhaseError(shape)
        measured = sum(len(pats) for pats, *_ in training)
        pairs = {
            "train": training_pairs(training, trainer.pairs),
            "measured": measured,
            "held_out": len(held_out[0][0]),
        }
        flat = validator.flat(held_out)
        ctx.report("surrogate")
        with ctx.provenance.stage("surrogate"):
            result = train_and_deploy(
                training,
                lambda: held_out,  # labelled already
                trainer=trainer,
                validator=validator,
                registry=registry,
                labels=pairs,
                client=ctx.dask_client(),
                baseline=flat,
                metric="held_out_phase_nrmse",
                describe=_describe,
                scan_uids=[ctx.uid],
                hyperparameters=trainer.hyperparameters(),
            )
        scores = {"held_out_phase_nrmse": result.candidate_score, "flat_phase_nrmse": flat}
        if result.deployed_score is not None:
            scores["deployed_phase_nrmse"] = result.deployed_score
        md = {"registry": registry.name, "parent_version": result.parent, "scores": scores, "pairs": pairs,
                  "threshold": result.metrics["threshold"], "n_train": result.metrics["n_train"],
                  "held_out_angle_deg": views[-1].angle_deg, "training_seconds": round(result.seconds["train"], 2),
                  "fine_tuned": result.parent is not None, "published": result.deployed}  # fmt: skip
        if result.deployed:
            md["version"] = result.version
        else:
            md["kept"] = md["version"] = registry.deployed()
        md["seconds"] = round(time.perf_counter() - started, 2)
        ctx.metadata["surrogate"] = md


def _unpack(module: nn.Module) -> sg.Surrogate:
    """The surrogate in a module the registry loaded."""
    if not isinstance(module, StoredSurrogate):
        raise TypeError(f"expected a StoredSurrogate from the registry, got {type(module).__name__}")
    return module.unpack()
