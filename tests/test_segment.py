"""Segmentation: shipped weights on held-out scans, fallback, fine-tuning, block-wise use, statistics."""

from __future__ import annotations

import doctest
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

import tomolive.ml.segmentation
import tomolive.segment
from tomolive.errors import BadInputError, MissingDataError
from tomolive.ml.model_store import find_models, load_model, model_to_bytes, save_model, sha256
from tomolive.ml.segmentation import (
    DEFAULT_MODEL,
    WEIGHTS_DIR,
    SegmentationModel,
    load_segmenter,
    save_segmenter,
    segment_volume,
)
from tomolive.ml.segmenter_training import fine_tune
from tomolive.recon import reconstruct
from tomolive.segment import PHASES, dice_scores, intensity_range, phase_statistics
from tomolive.sim.phantoms import FoamPhantom, make_foam, make_rock, measure
from tomolive.store import connect

SHAPE = (20, 128, 128)
ANGLES = np.linspace(0.0, np.pi, 180, endpoint=False)
HELD_OUT = 2024
"""Phantom seed the training script never used (it trains on 0-7 and validates on 1000)."""
# Dice inside the sample of the shipped weights on held-out scans (20 x 128^2, 180 angles,
# 5000 photons) measured for seeds 2024-2026: foam pore 0.968, solid 0.985-0.986,
# inclusion 0.977-0.982; rock pore 0.954-0.962, solid 0.993, inclusion 0.962-0.965
# (multi-Otsu: foam 0.946 / 0.976 / 0.954, rock 0.920 / 0.987 / 0.909 at worst). Each floor
# is the lowest measured value less about 0.02 (twice the spread between seeds), and never
# below the goal (0.95 foam, 0.90 rock), itself above the published 0.92 / 0.87.
FOAM_FLOOR = {"pore": 0.95, "solid": 0.96, "inclusion": 0.95}
ROCK_FLOOR = {"pore": 0.93, "solid": 0.97, "inclusion": 0.94}


def _scan(phantom, *, photons: float | None = 5000.0, seed: int = HELD_OUT, **stripes) -> np.ndarray:
    return reconstruct(measure(phantom.sinogram(ANGLES), photons=photons, seed=seed, **stripes), ANGLES)


def _in_sample(phantom) -> np.ndarray:
    g = np.arange(phantom.shape[-1]) - (phantom.shape[-1] - 1) / 2.0
    return (g[:, None] ** 2 + g[None, :] ** 2) <= phantom.radius**2


def _dice(labels: np.ndarray, phantom, slices: slice = slice(None)) -> dict[str, float]:
    scores = dice_scores(labels[slices], phantom.labels()[slices], len(PHASES), mask=_in_sample(phantom))
    return dict(zip(PHASES, scores))


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Small networks on small slices: one thread is as fast, and immune to a busy CI machine
    (two OpenMP threads contending with other processes ran 10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> SegmentationModel:
    return load_segmenter(device="cpu")


@pytest.fixture(scope="module")
def foam() -> FoamPhantom:
    return make_foam(SHAPE, seed=HELD_OUT)


@pytest.fixture(scope="module")
def foam_volume(foam: FoamPhantom) -> np.ndarray:
    """A held-out foam at the simulated detector's default dose, with a few bad pixels."""
    return _scan(foam, stripe_fraction=0.005, stripe_strength=0.02)


def test_shipped_weights_and_their_record(model: SegmentationModel) -> None:
    pt, record_path = WEIGHTS_DIR / f"{DEFAULT_MODEL}.pt", WEIGHTS_DIR / f"{DEFAULT_MODEL}.json"
    assert pt.stat().st_size < 4 * 2**20
    record = json.loads(record_path.read_text())
    assert sha256(pt.read_bytes()) == record["sha256"] == model.sha256
    assert record["script"] == "scripts/train_segmenter.py" and record["phases"] == list(PHASES)
    assert record["torch"] and record["training"]["seed"] == 0 and record["training"]["steps"] > 0
    assert min(record["validation"]["dice"]["foam"].values()) >= 0.95
    assert model.n_classes == 3 and model.info()["sha256"] == record["sha256"]


def test_unet_beats_floor_on_held_out_foam(
    model: SegmentationModel, foam: FoamPhantom, foam_volume: np.ndarray
) -> None:
    labels, info = segment_volume(foam_volume, model=model)
    assert labels.shape == SHAPE and labels.dtype == np.uint8
    assert info["method"] == "unet" and info["requested"] == "auto" and "n_phases not given" in info["reason"]
    assert info["model"]["sha256"] == model.sha256 and info["device"] == "cpu"
    json.dumps(info)
    dice = _dice(labels, foam)
    assert all(dice[p] >= FOAM_FLOOR[p] for p in PHASES), dice
    otsu = _dice(segment_volume(foam_volume, "otsu")[0], foam)
    assert np.mean(list(dice.values())) > np.mean(list(otsu.values()))


def test_unet_beats_floor_on_held_out_rock(model: SegmentationModel) -> None:
    rock = make_rock(SHAPE, seed=HELD_OUT)
    labels, info = segment_volume(_scan(rock), model=model, n_phases=3)
    assert info["method"] == "unet" and "as the data has" in info["reason"]
    dice = _dice(labels, rock)
    assert all(dice[p] >= ROCK_FLOOR[p] for p in PHASES), dice


def test_auto_falls_back_to_multi_otsu_without_weights(tmp_path: Path, foam: FoamPhantom) -> None:
    volume = _scan(foam, photons=None)
    labels, info = segment_volume(volume, model=tmp_path / "absent.pt")
    assert info["method"] == "otsu" and "no usable network weights" in info["reason"]
    assert len(info["thresholds"]) == 2 and info["n_phases"] == 3
    assert min(_dice(labels, foam).values()) > 0.8  # noise-free: thresholds do well
    with pytest.raises(MissingDataError, match="absent.pt"):
        segment_volume(volume, "unet", model=tmp_path / "absent.pt")


def test_auto_takes_otsu_when_phase_counts_differ(model: SegmentationModel) -> None:
    two_phase = make_foam((8, 64, 64), n_inclusions=0, seed=3)
    labels, info = segment_volume(_scan(two_phase, photons=None), model=model, n_phases=2)
    assert info["method"] == "otsu" and "labels 3 phases, the data has 2" in info["reason"]
    assert set(np.unique(labels)) == {0, 1}
    with pytest.raises(BadInputError, match="n_phases: the data has 2 phases"):
        segment_volume(np.zeros((3, 64, 64)), "unet", model, n_phases=2)


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    for suffix in (".pt", ".json"):
        shutil.copy(WEIGHTS_DIR / f"{DEFAULT_MODEL}{suffix}", tmp_path / f"m{suffix}")
    record = json.loads((tmp_path / "m.json").read_text())
    record["sha256"] = "0" * 64
    (tmp_path / "m.json").write_text(json.dumps(record))
    with pytest.raises(BadInputError, match="does not match the record"):
        load_segmenter(tmp_path / "m.pt")
    _, info = segment_volume(np.random.default_rng(0).random((3, 32, 32)), model=tmp_path / "m.pt")
    assert info["method"] == "otsu" and "corrupt" in info["reason"]


def test_blocks_with_context_match_the_whole_volume(model: SegmentationModel, foam_volume: np.ndarray) -> None:
    whole, _ = segment_volume(foam_volume, model=model)
    value_range = intensity_range(foam_volume)
    assert list(value_range) == segment_volume(foam_volume, model=model)[1]["value_range"]
    for start, stop in ((0, 8), (8, 14), (14, 20)):
        lo, hi = max(0, start - 1), min(SHAPE[0], stop + 1)
        block, _info = segment_volume(
            foam_volume[lo:hi], model=model, value_range=value_range, context=(start - lo, hi - stop)
        )
        np.testing.assert_array_equal(block, whole[start:stop])


def test_tiles_agree_with_whole_slices(model: SegmentationModel, foam_volume: np.ndarray) -> None:
    whole, _ = segment_volume(foam_volume[:4], model=model)
    tiled, info = segment_volume(foam_volume[:4], model=model, tile=64, batch_size=1)
    assert info["tile"] == 64
    assert np.mean(tiled == whole) > 0.995


def test_fine_tuning_on_three_slices_learns_an_unseen_sample_class(model: SegmentationModel) -> None:
    """Inclusions only 1.4x denser than the matrix: the shipped weights saw 2-4x."""
    faint = make_foam(SHAPE, seed=77, n_inclusions=14, mu_inclusion=0.0056)
    volume = _scan(faint, photons=20000.0)
    before = _dice(segment_volume(volume, model=model)[0], faint, slice(6, None))
    labelled = {z: faint.labels()[z] for z in (0, 2, 4)}
    tuned = fine_tune(model, volume, labelled, steps=40, seed=0, device="cpu")
    after = _dice(segment_volume(volume, model=tuned)[0], faint, slice(6, None))  # slices it never saw
    # measured: inclusion Dice 0.00 before (they read as solid), 0.93 after 30 steps, 0.96 after 60
    assert before["inclusion"] < 0.3 and after["inclusion"] > 0.85, (before, after)
    assert np.mean(list(after.values())) > np.mean(list(before.values()))
    assert tuned.record["parent"] == {"name": model.name, "sha256": model.sha256}
    assert tuned.record["fine_tune"]["slices"] == [0, 2, 4] and tuned.sha256 != model.sha256
    assert model.sha256 == load_segmenter(device="cpu").sha256  # the parent is untouched


def test_fine_tune_takes_a_label_volume_with_unlabelled_pixels(tmp_path: Path, model: SegmentationModel) -> None:
    small = make_foam((8, 64, 64), seed=5)
    labels = np.full(small.shape, -1, dtype=np.int16)
    labels[2, 10:50, 10:50] = small.labels()[2, 10:50, 10:50]  # a partly labelled slice
    tuned = fine_tune(model, _scan(small), labels, steps=2, name="partial", device="cpu")
    assert tuned.name == "partial" and tuned.record["fine_tune"]["slices"] == [2]
    assert tuned.record["fine_tune"]["labelled_pixels"] == 40 * 40
    path = save_segmenter(tuned, tmp_path / "partial.pt")
    again = load_segmenter(path, device="cpu")
    assert again.sha256 == tuned.sha256 and again.record["parent"]["sha256"] == model.sha256
    with pytest.raises(BadInputError, match="no labelled pixel"):
        fine_tune(model, _scan(small), np.full(small.shape, 255, np.uint8), steps=1)
    with pytest.raises(BadInputError, match=r"values must be 0..2 or -1/255"):
        fine_tune(model, _scan(small), {1: np.full((64, 64), 7)}, steps=1)
    with pytest.raises(BadInputError, match=r"labels\[9\]: expected a slice index in \[0, 8\)"):
        fine_tune(model, _scan(small), {9: np.zeros((64, 64))}, steps=1)


def test_phase_statistics_of_the_truth(foam: FoamPhantom) -> None:
    truth = foam.labels()
    stats = phase_statistics(truth, min_pore_voxels=1)
    inside = truth[:, _in_sample(foam)]
    assert stats["sample_voxels"] == inside.size
    assert stats["porosity"] == pytest.approx(np.mean(inside == 0), abs=1e-6)
    assert sum(stats["volume_fractions"].values()) == pytest.approx(1.0, abs=1e-5)
    assert stats["volume_fractions"]["inclusion"] == pytest.approx(np.mean(inside == 2), abs=1e-6)
    _, n_pores = ndimage.label(truth == 0)
    assert stats["pore_count"] == n_pores - 1  # less the air around the sample
    assert stats["pore_count"] == pytest.approx(np.sum(foam.labels_of_spheres == 0), abs=3)
    blocks = phase_statistics(truth[i : i + 3] for i in range(0, SHAPE[0], 3))  # min_pore_voxels=8
    assert blocks == phase_statistics(truth, slices_per_block=5) == phase_statistics(truth)
    json.dumps(stats)


def test_connected_pores_are_counted_once_across_blocks() -> None:
    labels = np.ones((10, 32, 32), dtype=np.uint8)
    labels[:, 10:14, 10:14] = 0  # a tube through every block
    labels[2:4, 20:24, 20:24] = 0  # a small pore
    labels[6:9, 20:24, 20:24] = 0  # and another below it
    for size in (1, 3, 10):
        stats = phase_statistics(labels, 2, min_pore_voxels=1, slices_per_block=size)
        assert stats["pore_count"] == 3 and stats["largest_pore_fraction"] == pytest.approx(160 / 240)


def test_bad_inputs_are_named(model: SegmentationModel) -> None:
    with pytest.raises(BadInputError, match=r"volume: expected a 3D array.*\(4, 4\)"):
        segment_volume(np.zeros((4, 4)))
    volume = np.zeros((3, 32, 32), dtype=np.float32)
    volume[1, 5, 7] = np.nan
    with pytest.raises(BadInputError, match=r"volume\[1:2\] contains 1 NaN/inf"):
        segment_volume(volume, "otsu")
    with pytest.raises(BadInputError, match="method: expected one of"):
        segment_volume(np.zeros((3, 32, 32)), "watershed")
    with pytest.raises(BadInputError, match="context"):
        segment_volume(np.zeros((3, 32, 32)), "otsu", context=(2, 1))
    with pytest.raises(BadInputError, match="labels: expected values 0..1"):
        phase_statistics(np.full((2, 8, 8), 2, np.uint8), 2)
    labels, _ = segment_volume(np.ones((32, 32), np.float32), model=model)  # one slice in, one out
    assert labels.shape == (32, 32)


def test_segmentation_weights_share_the_tiled_model_store(tiled_server, model: SegmentationModel) -> None:
    client = connect(tiled_server.uri, api_key=tiled_server.api_key)
    model_id = save_model(client, model.net, sample_class="foam-rock-segment-test", metadata={"phases": PHASES})
    assert model_id == f"seg-{model.sha256[:16]}"
    [stored] = find_models(client, sample_class="foam-rock-segment-test")
    assert stored.metadata["kind"] == model.net.kind and stored.metadata["sha256"] == model.sha256
    loaded = load_model(client, model_id)
    assert type(loaded) is type(model.net) and model_to_bytes(loaded) == model_to_bytes(model.net)


@pytest.mark.parametrize("module", [tomolive.segment, tomolive.ml.segmentation])
def test_docstring_examples_run(module) -> None:
    result = doctest.testmod(module, verbose=False)
    assert result.failed == 0 and result.attempted >= 3
