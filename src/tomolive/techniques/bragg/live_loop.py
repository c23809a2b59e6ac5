"""The retraining loop in the shipped pipeline, wired by itself for runs stored in Tiled.

When a Bragg run's result store has a model store (Tiled ``models/``), its technique connects
one :class:`BraggLoop`: the registry ``models/<registry>`` (the shipped BraggNN is published as
version 1 when nothing is deployed), the deployed version loaded into the technique's slot,
and a drift monitor fed every frame's patches tagged with the run's uid. On drift the cost
model (:mod:`.costs`) decides whether retraining pays for the peaks still to come; if it does,
a fraction is labelled with the fit on Dask, the deployed version fine-tuned on a Dask worker,
validated on held-back peaks, published only if better and swapped into the slot, so the
running scan's next frame uses it. If it does not, the rest of the run's peaks are fitted
after the stop. :meth:`BraggLoop.retrain_now` retrains on request from the newest peaks seen.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ...ml.deploy import ModelSlot
from .costs import LoopCosts, decide
from .retraining import BraggTrainer, bragg_drift_monitor, bragg_retrain, braggnn_registry

if TYPE_CHECKING:
    from distributed import Client
    from tiled.client.base import BaseClient

    from ...ml.registry import ModelRegistry
    from .params import RetrainParams

RUNS_KEPT = 16  # run tallies remembered (a retrain may name a run that has stopped)


@dataclass
class RunTally:
    """What the loop knows of one run: frames expected and seen, peaks seen, the cost model's choice."""

    n_frames: int | None
    frames: int = 0
    peaks: int = 0
    fit_rest: bool = False  # the cost model chose to fit this run's remaining peaks


class BraggLoop:
    """One technique's loop: registry, deployed model's slot, drift monitor and measured costs."""

    def __init__(
        self, registry: ModelRegistry, slot: ModelSlot[Any], client: Client, params: RetrainParams, costs: LoopCosts
    ) -> None:
        self.registry, self.slot, self.client, self.params, self.costs = registry, slot, client, params, costs
        self.trainer = BraggTrainer(fine_tune_epochs=params.fine_tune_epochs, scratch_epochs=params.scratch_epochs)
        self._retrain = bragg_retrain(slot, registry, client, self.trainer, params.label_fraction)
        self.monitor = bragg_drift_monitor(
            slot,
            registry,
            client,
            threshold=params.threshold_px,
            every=params.every,
            audit_size=params.audit_size,
            min_samples=params.min_samples,
            trainer=self.trainer,
            on_drift=self._on_drift,
        )
        self.runs: dict[str, RunTally] = {}

    @classmethod
    def connect(
        cls, models_client: BaseClient, client: Client, slot: ModelSlot[Any], params: RetrainParams
    ) -> BraggLoop:
        """The loop on ``models/<params.registry>``; its deployed version (the shipped one if none) goes in ``slot``."""
        registry = braggnn_registry(models_client, params.registry)
        if registry.deployed() is None:
            from .default_model import default_model

            model, record = default_model()
            registry.publish(
                model,
                parent=None,
                metrics={"simulated_validation": record["validation"]},
                labels={"simulated": record["data"]["n_train"]},
                hyperparameters={"recipe": "tomolive.techniques.bragg.default_model", "sha256": record["sha256"]},
            )
        start = time.perf_counter()
        version = registry.deployed()
        slot.swap(registry.load(version), version)
        costs = LoopCosts(workers=len(client.scheduler_info(n_workers=-1)["workers"]))
        costs.loaded(time.perf_counter() - start)
        return cls(registry, slot, client, params, costs)

    def start_run(self, uid: str, n_frames: int | None) -> None:
        """Run ``uid`` (``n_frames`` expected) starts feeding the loop."""
        self.runs[uid] = RunTally(n_frames)
        for old in list(self.runs)[:-RUNS_KEPT]:
            del self.runs[old]

    def observe(self, uid: str, index: int, patches: np.ndarray, infer_s: float) -> None:
        """Frame ``index`` of run ``uid``: its patches to the monitor, its counts and timing to the tallies."""
        tally = self.runs[uid]
        tally.frames += 1
        tally.peaks += len(patches)
        self.costs.inferred(infer_s, len(patches))
        self.monitor.observe(index, patches, source=uid)

    def retrain_now(self) -> Future[Any]:
        """Retrain on request from the newest peaks the monitor kept (no cost check); the pass's future."""
        return self.monitor.retrain_now(lambda samples, sources: self._pass(samples, sources, "request", None))

    def record(self, uid: str, wait_s: float) -> dict[str, Any]:
        """What the loop did with run ``uid``'s peaks; waits up to ``wait_s`` for passes still running."""
        deadline = time.monotonic() + wait_s
        passes: list[dict[str, Any]] = []
        for future in self.monitor.retrains_for(uid):
            try:
                passes.append(future.result(timeout=max(0.0, deadline - time.monotonic())))
            except FutureTimeout:
                passes.append({"state": "running", "why": f"still running {wait_s:g} s after the stop"})
            except Exception as err:
                passes.append({"state": "failed", "why": f"{type(err).__name__}: {err}"})
        tally = self.runs.get(uid)
        return {
            "mode": "auto",
            "registry": f"models/{self.registry.name}",
            "deployed_version": self.slot.version,
            "fit_rest": bool(tally and tally.fit_rest),
            "passes": passes,
        }

    def _on_drift(self, samples: np.ndarray, sources: tuple[str, ...]) -> dict[str, Any]:
        decision = self._decide(samples, sources)
        if self.params.decide == "cost" and decision["choice"] == "fit":
            tally = self.runs.get(sources[-1]) if sources else None
            if tally is not None:
                tally.fit_rest = True
            return {
                "state": "done",
                "trigger": "drift",
                "scan_uids": list(sources),
                "decision": decision,
                "result": None,
            }
        return self._pass(samples, sources, "drift", decision)

    def _pass(
        self, samples: np.ndarray, sources: tuple[str, ...], trigger: str, decision: dict[str, Any] | None
    ) -> dict[str, Any]:
        result = self._retrain(samples, sources)
        epochs = self.trainer.fine_tune_epochs if result.parent is not None else self.trainer.scratch_epochs
        self.costs.retrained(result, epochs)
        return {
            "state": "done",
            "trigger": trigger,
            "scan_uids": list(sources),
            "decision": decision,
            "result": asdict(result),
        }

    def _decide(self, samples: np.ndarray, sources: tuple[str, ...]) -> dict[str, Any]:
        """The cost model's choice for the drifted peaks plus those the newest source run still expects."""
        tally = self.runs.get(sources[-1]) if sources else None
        remaining = 0.0
        if tally is not None and tally.n_frames and tally.frames:
            remaining = max(0, tally.n_frames - tally.frames) * tally.peaks / tally.frames
        constants, where = self.costs.constants(self.client, samples, self.trainer)
        labelled = round(self.params.label_fraction * len(samples))
        decision = decide(len(samples) + round(remaining), labelled, constants, self.trainer.fine_tune_epochs)
        return {**decision, "constant_sources": where}
