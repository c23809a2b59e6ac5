"""The Bragg loop's wiring without a scan: edge-only in the outbox, the run-time cost decision,
retraining on request with the samples' sources."""

from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace

import numpy as np
import pytest

from tomolive.errors import BadInputError, MissingDataError
from tomolive.ml.cost_model import CostConstants
from tomolive.ml.deploy import DriftMonitor, ModelSlot
from tomolive.store.outbox import OutboxResult
from tomolive.techniques import BraggTechnique
from tomolive.techniques.bragg import BraggParams
from tomolive.techniques.bragg.costs import decide
from tomolive.techniques.bragg.params import RetrainParams
from tomolive.techniques.bragg.technique import OUTBOX_WHY


def test_a_run_kept_in_the_outbox_stays_edge_only_and_says_why(tmp_path):
    store: Future = Future()
    store.set_result(OutboxResult.create(tmp_path, "outbox-run", {}))
    run = SimpleNamespace(uid="outbox-run", store=store, metadata={"bragg": {"n_frames": 3}})
    technique = BraggTechnique()
    assert technique.automatic
    assert technique.attach(run).result(timeout=10) == OUTBOX_WHY
    assert technique.loop is None
    with pytest.raises(MissingDataError, match="no run has connected"):
        technique.retrain_now()
    off = BraggTechnique(BraggParams(retrain=RetrainParams(mode="off")))
    assert not off.automatic
    with pytest.raises(BadInputError, match="retrain mode"):
        RetrainParams(mode="sometimes")


def test_the_cost_decision_fits_a_short_rest_and_retrains_for_a_long_one():
    k = CostConstants(
        c_fit=1e-3, o_fit=0.0, c_infer=2e-5, c_step=4e-5, o_train=0.0, o_transfer=0.8, bandwidth=float("inf"),
        sample_bytes=484, workers=2,
    )  # fmt: skip
    short, long = decide(1_000, 800, k, epochs=4), decide(50_000, 800, k, epochs=4)
    assert short["choice"] == "fit" and long["choice"] == "surrogate"
    # 50,000 peaks: fit 50 s; surrogate = label 640 + train 4 x 640 steps + label 160 held out + transfer + infer all
    expected = 640e-3 + 4 * 640 * 4e-5 + 160e-3 + 0.8 + 50_000 * 2e-5
    assert long["predicted_s"] == pytest.approx({"fit": 50.0, "surrogate": expected})
    assert long["constants"]["bandwidth"] is None and "break-even" in long["why"]


def test_retrain_now_takes_the_newest_samples_and_their_sources():
    slot = ModelSlot("model", 1)
    labeller = SimpleNamespace(label=lambda x: x)
    validator = SimpleNamespace(score=lambda model, held: 0.0)
    monitor = DriftMonitor(
        slot, labeller, validator, threshold=1.0, on_drift=lambda s, u: None, min_samples=6, max_samples=6
    )
    with pytest.raises(MissingDataError, match="0 samples"):
        monitor.retrain_now()
    for frame, source in enumerate(["a", "a", "b", "b"]):
        monitor.observe(frame, np.full((3, 2), frame), source=source)
    future = monitor.retrain_now(lambda samples, sources: (samples[:, 0].tolist(), sources))
    assert future.result(timeout=10) == ([2, 2, 2, 3, 3, 3], ("b",))  # the newest 6 samples
    assert monitor.retrains_for("b") == [future] and monitor.retrains_for("a") == []
    monitor.close()
