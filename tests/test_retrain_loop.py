"""The data-centre-to-edge loop with a toy surrogate (a linear map learnt by real torch training),
a real Tiled server for the registry and the conftest's Dask cluster for training.

The toy's "setup" is the matrix the labeller applies; changing it mid-stream is the setup change
that makes the deployed model drift.
"""

from __future__ import annotations

import copy
import sys
import threading
import time
from dataclasses import replace

import cloudpickle
import numpy as np
import pytest
import torch
from torch import nn

from tomolive.errors import BadInputError, MissingDataError
from tomolive.ml.cost_model import CostConstants, Plan, break_even, predict
from tomolive.ml.deploy import DriftMonitor, ModelSlot
from tomolive.ml.loop import retrain, train_and_deploy
from tomolive.ml.model_store import ModelIntegrityError
from tomolive.ml.registry import ModelRegistry, RegistryPermissionError, state_to_bytes
from tomolive.server.keys import create_key
from tomolive.store import connect

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the toy's classes travel to the Dask workers

ARCH = {"in_features": 4, "out_features": 2}
SETUP_A = np.array([[1.0, 0.0], [0.5, -1.0], [0.0, 2.0], [-1.0, 0.5]])
SETUP_B = SETUP_A + np.array([[0.8, -0.4], [0.0, 0.6], [-0.7, 0.0], [0.3, 0.9]])  # the setup changed


class Labeller:
    """The conventional method: exact labels for the current setup (plus a little noise)."""

    def __init__(self, setup: np.ndarray) -> None:
        self.setup = setup
        self.calls = 0

    def label(self, samples: np.ndarray) -> np.ndarray:
        self.calls += 1
        noise = np.random.default_rng(len(samples)).normal(0, 0.01, (len(samples), 2))
        return (samples @ self.setup + noise).astype(np.float32)


class Trainer:
    def __init__(self, steps: int = 300, broken: bool = False) -> None:
        self.steps, self.broken = steps, broken

    def fine_tune(self, model: nn.Module, data: tuple[np.ndarray, np.ndarray]) -> nn.Module:
        return self._fit(copy.deepcopy(model), data)

    def from_scratch(self, data: tuple[np.ndarray, np.ndarray]) -> nn.Module:
        torch.manual_seed(0)
        return self._fit(nn.Linear(**ARCH), data)

    def _fit(self, model: nn.Module, data: tuple[np.ndarray, np.ndarray]) -> nn.Module:
        x, y = (torch.as_tensor(a, dtype=torch.float32) for a in data)
        if self.broken:  # learns the wrong sign: a candidate worse than what is deployed
            y = -y
        optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
        model.train()
        for _ in range(self.steps):
            optimiser.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            optimiser.step()
        return model.eval()


class Validator:
    def score(self, model: nn.Module, held_out: tuple[np.ndarray, np.ndarray]) -> float:
        with torch.no_grad():
            predicted = model(torch.as_tensor(held_out[0], dtype=torch.float32)).numpy()
        return float(np.abs(predicted - held_out[1]).mean())


def samples(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)


@pytest.fixture
def keys(tiled_server):
    """(writer client, read-only client) of the session's server."""
    reader = create_key(tiled_server.uri, tiled_server.admin_key, note="edge")
    return connect(tiled_server.uri, tiled_server.api_key), connect(tiled_server.uri, reader)


@pytest.fixture
def deployed_v1(keys, request):
    """A registry (unique name per test) with version 1 trained on setup A, deployed in a slot."""
    writer, _ = keys
    registry = ModelRegistry(writer, f"toy_{request.node.name.split('[')[0][5:35]}", build=nn.Linear, arch=ARCH)
    x = samples(256, 1)
    model = Trainer().from_scratch((x, Labeller(SETUP_A).label(x)))
    version = registry.publish(model, parent=None, metrics={"held_out": 0.0}, scan_uids=["scan-a"])
    return registry, ModelSlot(registry.load(version), version)


def test_registry_round_trip_keys_and_tampered_weights(keys, deployed_v1):
    writer, reader = keys
    registry, slot = deployed_v1
    assert registry.versions() == [1] and registry.deployed() == 1
    edge = ModelRegistry(reader, registry.name, build=nn.Linear, arch=ARCH)  # the edge reads with a read-only key
    loaded = edge.load()
    assert state_to_bytes(loaded) == state_to_bytes(slot.get())  # the same tensors, byte for byte
    record = edge.record(1)
    assert record["parent_version"] is None and record["scan_uids"] == ["scan-a"] and len(record["sha256"]) == 64
    with pytest.raises(RegistryPermissionError, match="writer key"):
        edge.publish(loaded, parent=1, metrics={"held_out": 0.0})
    with pytest.raises(RegistryPermissionError, match="writer key"):
        edge.rollback(to=1)
    assert registry.versions() == [1]
    with pytest.raises(MissingDataError, match="published versions are \\[1\\]"):
        edge.load(7)
    with pytest.raises(BadInputError, match="parent"):
        registry.publish(loaded, parent=7, metrics={})

    node = writer["models"][registry.name]["v1"]
    tampered = np.array(node.read(), dtype=np.uint8)
    tampered[-9] ^= 1  # one bit of a weight flipped in the store
    node.write(tampered)
    with pytest.raises(ModelIntegrityError, match="refusing"):
        edge.load(1)


def test_a_worse_model_is_never_deployed(deployed_v1, dask_client):
    registry, slot = deployed_v1
    before = state_to_bytes(slot.get())
    new = samples(200, 5)
    result = retrain(
        new,
        labeller=Labeller(SETUP_A),
        trainer=Trainer(broken=True),
        validator=Validator(),
        registry=registry,
        slot=slot,
        client=dask_client,
    )
    assert not result.deployed and result.version is None and result.parent == 1
    assert result.candidate_score > result.deployed_score
    assert registry.versions() == [1] and registry.deployed() == 1
    assert slot.version == 1 and state_to_bytes(slot.get()) == before


class PartialLabeller(Labeller):
    """Labels setup B, but not the samples whose first feature is above ``cutoff`` (NaN): a fit that found no peak."""

    def __init__(self, cutoff: float) -> None:
        super().__init__(SETUP_B)
        self.cutoff = cutoff

    def label(self, samples: np.ndarray) -> np.ndarray:
        labels = super().label(samples)
        labels[samples[:, 0] > self.cutoff] = np.nan
        return labels


def test_samples_the_labeller_cannot_label_are_left_out_and_counted(deployed_v1):
    registry, slot = deployed_v1
    new = samples(400, 6)
    result = retrain(
        new, labeller=PartialLabeller(0.5), trainer=Trainer(), validator=Validator(), registry=registry, slot=slot
    )
    unlabelled = int((new[:, 0] > 0.5).sum())
    assert 80 < unlabelled < 160  # about 31 % of a normal draw
    assert result.deployed and result.candidate_score < 0.05 < result.deployed_score  # learnt setup B from the rest
    counts = registry.record(result.version)["labels"]
    assert counts == {"train": counts["train"], "held_out": result.n_held_out, "offered": 400, "unlabelled": unlabelled}
    assert counts["train"] + counts["held_out"] == 400 - unlabelled

    with pytest.raises(MissingDataError, match="labelled 0 of 320 training samples"):
        retrain(
            new,
            labeller=PartialLabeller(-np.inf),
            trainer=Trainer(),
            validator=Validator(),
            registry=registry,
            slot=slot,
        )
    assert registry.deployed() == result.version  # nothing published by the failed pass


def test_with_nothing_deployed_a_candidate_must_beat_the_baseline(keys, dask_client):
    writer, _ = keys
    registry = ModelRegistry(writer, "toy_baseline", build=nn.Linear, arch=ARCH)
    labeller, slot = Labeller(SETUP_A), ModelSlot()
    x, held = samples(200, 11), samples(50, 12)
    train, held_out = (x, labeller.label(x)), (held, labeller.label(held))
    zeros = float(np.abs(held_out[1]).mean())  # predicting zeros: the baseline a first model must beat
    common = {"validator": Validator(), "registry": registry, "labels": {"train": 200, "held_out": 50}}

    worse = train_and_deploy(train, lambda: held_out, trainer=Trainer(broken=True), slot=slot, baseline=zeros, **common)
    assert not worse.deployed and worse.version is None and worse.parent is None and worse.deployed_score is None
    assert worse.candidate_score > zeros and f"baseline {zeros:.4g}" in worse.reason
    assert worse.metrics["baseline_held_out"] == zeros
    assert registry.versions() == [] and slot.peek() is None

    better = train_and_deploy(
        train, lambda: held_out, trainer=Trainer(), slot=slot, baseline=zeros, client=dask_client, **common
    )
    assert better.deployed and better.version == 1 and better.parent is None and better.candidate_score < zeros
    assert slot.version == 1 and registry.deployed() == 1
    assert registry.record(1)["metrics"] == better.metrics and better.metrics["baseline_held_out"] == zeros

    # without a slot the registry's deployed version is the one to beat: a worse fine-tune is kept out
    kept = train_and_deploy(train, lambda: held_out, trainer=Trainer(broken=True), baseline=zeros, **common)
    assert not kept.deployed and kept.parent == 1 and kept.deployed_score == pytest.approx(better.candidate_score)
    assert registry.versions() == [1] and registry.deployed() == 1


def test_drift_triggers_retrain_and_hot_swap_without_dropping_frames(deployed_v1, dask_client):
    registry, slot = deployed_v1
    labeller, validator = Labeller(SETUP_A), Validator()

    def on_drift(collected: np.ndarray, sources: tuple[str, ...]):
        return retrain(
            collected,
            labeller=labeller,
            trainer=Trainer(),
            validator=validator,
            registry=registry,
            slot=slot,
            client=dask_client,
            label_fraction=0.5,
            scan_uids=sources,
        )

    monitor = DriftMonitor(
        slot, labeller, validator, threshold=0.1, on_drift=on_drift, every=5, audit_size=16, min_samples=160
    )
    processed: list[tuple[int, int | None, float, bool]] = []  # frame, version, error vs truth, during a retrain
    sent, frame = 0, 0
    deadline = time.monotonic() + 120  # a bound for a stuck loop, not a timing assertion
    while sum(p[1] == 2 for p in processed) < 10 and time.monotonic() < deadline:
        if frame == 30:
            labeller.setup = SETUP_B  # the setup changes mid-scan
        x = samples(16, 1000 + frame)
        sent += 1
        model, version = slot.current()  # the edge callback: one model per frame
        with torch.no_grad():
            predicted = model(torch.as_tensor(x)).numpy()
        truth = x @ labeller.setup
        processed.append((frame, version, float(np.abs(predicted - truth).mean()), monitor.retraining))
        monitor.observe(frame, x, source="scan-a" if frame < 30 else "scan-b")
        frame += 1
        time.sleep(0.01)
    monitor.wait(timeout=60)
    monitor.close()

    assert len(processed) == sent and [p[0] for p in processed] == list(range(sent))  # none dropped
    assert sum(p[3] for p in processed) > 0  # frames kept flowing while the retrain ran
    versions = [p[1] for p in processed]
    assert versions == sorted(versions) and set(versions) == {1, 2}  # one swap, between two frames
    first_drift = next(a for a in monitor.audits if a.drifted)
    assert first_drift.frame >= 30 and all(not a.drifted for a in monitor.audits if a.frame < 30)
    [result] = [f.result() for f in monitor.retrains]
    assert result.deployed and result.version == 2 and result.parent == 1
    assert result.candidate_score < 0.05 < 0.1 < result.deployed_score
    after = [p[2] for p in processed if p[1] == 2]
    before = [p[2] for p in processed if p[1] == 1 and p[0] >= 30]
    assert max(after) < 0.05 < 0.1 < min(before)  # the swapped-in model fits the new setup
    record = registry.record(2)
    assert record["parent_version"] == 1 and record["scan_uids"] == ["scan-b"]
    labels = record["labels"]
    assert labels["offered"] >= 160 and labels["train"] + labels["held_out"] == round(0.5 * labels["offered"])
    assert registry.deployed() == 2


def test_rollback_to_a_version(deployed_v1):
    registry, slot = deployed_v1
    v1 = state_to_bytes(slot.get())
    x = samples(128, 9)
    v2 = registry.publish(Trainer().from_scratch((x, Labeller(SETUP_B).label(x))), parent=1, metrics={"held_out": 0})
    slot.swap(registry.load(v2), v2)
    model = registry.rollback(to=1, slot=slot, why="v2 misbehaves")
    assert slot.version == 1 and state_to_bytes(model) == state_to_bytes(slot.get()) == v1
    assert registry.deployed() == 1 and registry.versions() == [1, 2]
    assert [(d["version"], d["why"]) for d in registry.deployments()] == [
        (1, "published from parent None"),
        (2, "published from parent 1"),
        (1, "v2 misbehaves"),
    ]


def test_deployments_from_many_threads_are_all_recorded(deployed_v1):
    """Eight threads (two loops' worth) deploy at once: every deployment lands in the history."""
    registry, _ = deployed_v1
    registry.publish(registry.load(1), parent=1, metrics={"held_out": 0.0}, deploy=False)
    threads = [threading.Thread(target=registry.rollback, args=(1 + i % 2,), kwargs={"why": f"t{i}"}) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    whys = [d["why"] for d in registry.deployments()]
    assert sorted(whys[1:]) == [f"t{i}" for i in range(8)], whys


def test_cost_model_chooses_the_fit_for_small_scans_and_the_surrogate_for_large_ones():
    k = CostConstants(
        c_fit=2.5e-3, o_fit=0.3, c_infer=2e-5, c_step=1e-4, o_train=1.0, o_transfer=0.5, bandwidth=1e8,
        sample_bytes=484, workers=2, overlap=True,
    )  # fmt: skip
    plan = Plan(label_fraction=0.25, held_out=0.2, epochs=4)
    n_star = break_even(k, plan)
    # training (o_train + 4 * 0.2 n c_step) outlasts labelling the held-out 0.05 n: eq. 5 is linear in n
    slope = k.c_fit - (k.c_infer + 0.2 * k.c_fit + 4 * 0.2 * k.c_step + 0.25 * 484 / 1e8)
    assert n_star == pytest.approx((1.0 + 0.5) / slope, abs=2)  # o_fit is paid on both paths
    small, large = predict(n_star // 2, k, plan), predict(n_star * 2, k, plan)
    assert small.choice == "fit" and large.choice == "surrogate" and "break-even" in large.why
    assert predict(10, k, plan, retrain=False).choice == "surrogate"  # a model that still fits always pays
    # training on one of the labelling workers: the held-out labelling adds to it
    shared = replace(k, overlap=False)
    parts, own = predict(4000, shared, plan).parts, predict(4000, k, plan).parts
    assert parts["train_and_label_held_out"] == pytest.approx(
        1.0 + 4 * 0.2 * 4000 * k.c_step + 0.3 + 0.05 * 4000 * k.c_fit
    ) and own["train_and_label_held_out"] == pytest.approx(1.0 + 4 * 0.2 * 4000 * k.c_step)
    assert break_even(shared, plan) > n_star
    with pytest.raises(BadInputError, match="label_fraction"):
        Plan(label_fraction=0)
