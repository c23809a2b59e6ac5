"""The surrogate over a run's life: the model store, training as views accumulate, use by the live preview.

* Store: :func:`ptychonn_registry` keeps :class:`~.surrogate.Surrogate` versions in Tiled
  ``models/ptychonn_n<n>_c<channels>`` (:class:`~tomolive.ml.registry.ModelRegistry`), each one
  :class:`StoredSurrogate` module: the network plus, as buffers (so the weights' SHA-256 covers
  them), the probe it stitches with, its training-set size and its trust threshold. Lineage
  (scan uids, pairs, parent version, held-out scores) is the version's record.
* Training: :class:`SurrogateStage` runs after the per-view reconstruction. All views but the
  last give training pairs from their iterative results (:func:`~.surrogate.training_set`); the
  last is held out. On a Dask worker (:func:`train_task`) it fine-tunes the deployed version (or
  trains from scratch), calibrates the trust threshold on the held-out view's patterns and scores
  new and deployed versions by phase NRMSE against the held-out view's iterative result. The
  new version is published (and deployed) only when it scores better (with none deployed: better
  than the flat image).
* Preview: :func:`deployed_surrogate` loads the deployed version for a run's pattern size off
  the ingest thread; :meth:`LiveSurrogate.image` gives the preview its stitched image when the
  trust check passes on the patterns so far, or says why not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

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

    @classmethod
    def pack(cls, sur: sg.Surrogate) -> StoredSurrogate:
        """``sur`` (network, probe, training-set size, threshold) as one module."""
        stored = cls(int(sur.net.arch["n"]), int(sur.net.arch["channels"]))
        stored.net.load_state_dict(sur.net.state_dict())
        stored.probe.copy_(torch.from_numpy(np.stack([sur.probe.real, sur.probe.imag]).astype(np.float32)))
        stored.n_train.fill_(sur.n_train)
        stored.threshold.fill_(sur.threshold)
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


@dataclass
class TrainingOutcome:
    """What :func:`train_task` made: the surrogate and its (and the deployed version's) held-out scores."""

    surrogate: sg.Surrogate
    score: float
    flat_score: float
    deployed_score: float | None
    pairs: int
    measured: int
    seconds: float


def train_task(
    training: list[Solved],
    held_out: Solved,
    object_shape: tuple[int, int],
    parent: sg.Surrogate | None,
    params: PtychoParams,
) -> TrainingOutcome:
    """Dask task: train (or fine-tune ``parent``), calibrate on ``held_out``'s patterns, score both versions.

    Torch uses ``params.threads_per_task`` threads, or the worker's thread count.
    """
    started = time.perf_counter()
    measured = sum(len(pats) for pats, *_ in training)
    extra = max(0, -(-(params.surrogate_pairs - measured) // len(training)))
    parts = [sg.training_set(*solved, extra=extra, rng=k) for k, solved in enumerate(training)]
    x, amp, phase = (np.concatenate(v) for v in zip(*parts))
    _, pos, obj, probe = training[0]
    lr = 1e-3 if parent is not None else 2e-3
    sur = sg.train(
        x,
        amp,
        phase,
        sg.label_probe(obj, pos, probe),
        epochs=params.surrogate_epochs,
        lr=lr,
        channels=params.surrogate_channels,
        threads=params.threads_per_task or worker_threads(),
        init=None if parent is None else parent.net,
    )
    sur.n_train = len(x) + (parent.n_train if parent is not None else 0)
    held_pats, held_pos, held_obj, held_probe = held_out
    sg.calibrate(sur, held_pats, held_pos, object_shape)
    mask = metrics.illuminated_mask(object_shape, held_pos, held_probe)

    def score(model: sg.Surrogate) -> float:
        return metrics.phase_nrmse(model.image(held_pats, held_pos, object_shape), held_obj, mask)

    flat = metrics.phase_nrmse(np.ones(object_shape, np.complex64), held_obj, mask)
    deployed = None if parent is None else score(parent)
    return TrainingOutcome(sur, score(sur), flat, deployed, len(x), measured, time.perf_counter() - started)


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


class SurrogateStage:
    """Train the surrogate on this run's views (a Dask task), publish it when it beats the deployed one."""

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
        parent_version = registry.deployed()
        parent = None if parent_version is None else _unpack(registry.load(parent_version))
        solved: list[Solved] = [
            (v.patterns, np.asarray(r.positions), np.asarray(r.object), np.asarray(r.probe))
            for v, r in zip(views, results)
        ]
        ctx.report("surrogate")
        with ctx.provenance.stage("surrogate"):
            dask = ctx.dask_client()
            training, held_out = dask.scatter([solved[:-1], solved[-1]])  # patterns travel once
            shape = ctx.acquisition.setup.object_shape
            outcome: TrainingOutcome = dask.submit(
                train_task, training, held_out, shape, parent, params, pure=False
            ).result()
        ctx.metadata["surrogate"] = self._publish(ctx, registry, outcome, parent_version, views)
        ctx.metadata["surrogate"]["seconds"] = round(time.perf_counter() - started, 2)

    @staticmethod
    def _publish(
        ctx: StageContext, registry: ModelRegistry, out: TrainingOutcome, parent: int | None, views: list[View]
    ) -> dict[str, Any]:
        """Publish ``out`` when it beats the deployed version (with none, the flat image); what was done."""
        better = out.score < (out.flat_score if out.deployed_score is None else out.deployed_score)
        scores = {"held_out_phase_nrmse": round(out.score, 5), "flat_phase_nrmse": round(out.flat_score, 5)}
        if out.deployed_score is not None:
            scores["deployed_phase_nrmse"] = round(out.deployed_score, 5)
        pairs = {"train": out.pairs, "measured": out.measured, "held_out": len(views[-1].patterns)}
        record = {"registry": registry.name, "parent_version": parent, "scores": scores, "pairs": pairs,
                  "threshold": round(out.surrogate.threshold, 5), "n_train": out.surrogate.n_train,
                  "held_out_angle_deg": views[-1].angle_deg, "training_seconds": round(out.seconds, 2),
                  "fine_tuned": parent is not None}  # fmt: skip
        if not better:
            return {**record, "published": False, "kept": parent, "version": parent}
        version = registry.publish(
            StoredSurrogate.pack(out.surrogate),
            parent=parent,
            metrics={**scores, "threshold": record["threshold"], "n_train": out.surrogate.n_train},
            scan_uids=[ctx.uid],
            labels=pairs,
            hyperparameters={**out.surrogate.record, "loss": out.surrogate.record.get("loss", [])[-1:]},
        )
        return {**record, "published": True, "version": version}


def _unpack(module: nn.Module) -> sg.Surrogate:
    """The surrogate in a module the registry loaded."""
    if not isinstance(module, StoredSurrogate):
        raise TypeError(f"expected a StoredSurrogate from the registry, got {type(module).__name__}")
    return module.unpack()
