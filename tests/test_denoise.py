"""Tests of tomolive.ml.noise2inverse and .denoising (Noise2Inverse) and tomolive.ml.model_store (Tiled).

Real torch training on a simulated low-dose foam scan, numbers asserted against the
ground-truth phantom; the model store goes through a real Tiled server.
"""

from __future__ import annotations

import doctest
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import zarr
from scipy import ndimage

import tomolive.ml.noise2inverse
from tomolive.errors import BadInputError, MissingDataError
from tomolive.ml.denoising import denoise, load_torchscript
from tomolive.ml.model_store import (
    ModelIntegrityError,
    find_models,
    load_model,
    model_from_bytes,
    model_record,
    model_to_bytes,
    models_root,
    save_model,
)
from tomolive.ml.noise2inverse import DenoiseConfig, new_model, split_reconstructions, train
from tomolive.ml.training import last_checkpoint
from tomolive.qc import circle_mask, psnr
from tomolive.recon import reconstruct
from tomolive.sim.phantoms import FoamPhantom, make_foam
from tomolive.store import connect

SHAPE = (24, 128, 128)
PHOTONS = 300
N_ANGLES = 180
#: ~10 s of training on one core. One thread: two torch threads on a machine busy with
#: other work run ~10x slower than one (OpenMP threads wait on each other).
TRAIN = DenoiseConfig(steps=200, time_budget=None, seed=0, threads=1)
#: A tiny network for the mechanics tests (checkpoints, seeds, stores).
TINY = DenoiseConfig(
    features=4, depth=1, patch=16, batch=2, steps=6, time_budget=None, checkpoint_every=2, slices_per_batch=3, threads=1
)


def pixel_averaged(phantom: FoamPhantom, factor: int = 2) -> np.ndarray:
    """The phantom's attenuation averaged over each voxel (``factor``^3 samples)."""
    fine = FoamPhantom(
        shape=tuple(s * factor for s in phantom.shape),
        radius=phantom.radius * factor,
        centers=phantom.centers * factor,
        radii=phantom.radii * factor,
        labels_of_spheres=phantom.labels_of_spheres,
        mu_solid=phantom.mu_solid,
        mu_inclusion=phantom.mu_inclusion,
    )
    nz, ny, nx = phantom.shape
    return fine.attenuation().reshape(nz, factor, ny, factor, nx, factor).mean(axis=(1, 3, 5))


@pytest.fixture(scope="module")
def scan():
    """Low-dose foam: Poisson noise at PHOTONS per pixel on exact line integrals."""
    phantom = make_foam(SHAPE, seed=3)
    angles = np.linspace(0.0, np.pi, N_ANGLES, endpoint=False)
    sino = phantom.sinogram(angles).astype(np.float64)
    counts = np.random.default_rng(3).poisson(PHOTONS * np.exp(-sino))
    projections = (-np.log(np.maximum(counts, 1) / PHOTONS)).astype(np.float32)
    return {
        "projections": projections,
        "angles": angles,
        "truth": pixel_averaged(phantom),
        "mask": np.broadcast_to(circle_mask(SHAPE[1:]), SHAPE),
        "splits": split_reconstructions(projections, angles, None, k=2),
        "recon": reconstruct(projections, angles),
    }


@pytest.fixture(scope="module")
def trained(scan):
    return train(scan["splits"], TRAIN)


@pytest.fixture(scope="module")
def tiny_splits():
    rng = np.random.default_rng(1)
    clean = rng.normal(size=(1, 10, 24, 24)).astype(np.float32)
    return clean + 0.5 * rng.normal(size=(2, 10, 24, 24)).astype(np.float32)


@pytest.fixture
def client(tiled_server):
    return connect(tiled_server.uri, api_key=tiled_server.api_key)


def test_splits_are_half_scans_that_average_to_the_full_reconstruction(scan):
    splits = scan["splits"]
    assert splits.shape == (2, *SHAPE) and splits.dtype == np.float32
    # Each split has half the angles: about twice the noise variance of the full scan...
    full_noise = np.std((scan["recon"] - scan["truth"])[scan["mask"]])
    split_noise = np.std((splits[0] - scan["truth"])[scan["mask"]])
    assert 1.25 < split_noise / full_noise < 1.6
    # ...and their mean is the full reconstruction (linear method, same filter).
    assert psnr(splits.mean(axis=0), scan["recon"], mask=scan["mask"]) > 40.0


def test_noise2inverse_raises_psnr_against_the_phantom(scan, trained):
    truth, mask = scan["truth"], scan["mask"]
    raw = psnr(scan["recon"], truth, mask=mask)
    gaussian = max(psnr(ndimage.gaussian_filter(scan["recon"], sigma), truth, mask=mask) for sigma in (0.8, 1.0, 1.2))
    denoised = denoise(trained.model, scan["splits"], config=TRAIN)
    assert denoised.shape == SHAPE and denoised.dtype == np.float32
    gained = psnr(denoised, truth, mask=mask)
    # Bounds below the measured values (docs/measurements/ml.md) by ~3 dB and ~0.7 dB for
    # other BLAS builds; the issue asks +5 dB.
    assert raw < 14.0
    assert gained - raw > 9.0, (raw, gained)
    assert gained > gaussian + 0.3, (gaussian, gained)
    assert np.mean(trained.losses[-20:]) < 0.85 * np.mean(trained.losses[:20])


def test_same_seed_same_model_other_seed_other_model(tiny_splits):
    a, b = train(tiny_splits, TINY), train(tiny_splits, TINY)
    c = train(tiny_splits, DenoiseConfig(**{**TINY.as_dict(), "seed": 1}))
    assert a.losses == b.losses
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key]), key
    assert a.losses != c.losses


def test_resume_continues_exactly_where_training_stopped(tiny_splits, tmp_path):
    straight = train(tiny_splits, TINY)
    first = train(tiny_splits, DenoiseConfig(**{**TINY.as_dict(), "steps": 3}), checkpoint_dir=tmp_path)
    assert first.steps == 3 and last_checkpoint(tmp_path).name == "checkpoint-000000003.pt"
    resumed = train(tiny_splits, TINY, checkpoint_dir=tmp_path, resume=True)
    assert resumed.resumed_from == 3 and resumed.steps == 6
    assert resumed.losses == straight.losses
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    # Checkpoints every 2 steps, at the end, and only the last two are kept.
    assert [p.name for p in sorted(tmp_path.glob("checkpoint-*.pt"))] == [
        "checkpoint-000000004.pt",
        "checkpoint-000000006.pt",
    ]
    again = train(tiny_splits, TINY, checkpoint_dir=tmp_path, resume=True)
    assert again.steps == 6 and again.resumed_from == 6 and again.losses == straight.losses


def test_resume_refuses_a_checkpoint_of_another_architecture(tiny_splits, tmp_path):
    train(tiny_splits, TINY, checkpoint_dir=tmp_path)
    wider = DenoiseConfig(**{**TINY.as_dict(), "features": 8})
    with pytest.raises(BadInputError, match="checkpoint_dir"):
        train(tiny_splits, wider, checkpoint_dir=tmp_path, resume=True)


def test_time_budget_stops_training(tiny_splits, monkeypatch):
    ticks = iter(np.arange(1, 100) * 0.125)  # the clock moves 0.125 s each time it is read
    monkeypatch.setattr(tomolive.ml.noise2inverse, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    result = train(tiny_splits, DenoiseConfig(**{**TINY.as_dict(), "steps": 10**9, "time_budget": 0.5}))
    # read at the start, then before each step: 0.125, 0.25, 0.375 s pass, 0.5 s stops
    assert result.stopped == "time" and result.steps == 3 and len(result.losses) == 3
    assert result.seconds == 0.625  # the last read, after the stop


def test_tiles_and_row_blocks_agree_with_the_whole_volume(scan, trained):
    splits = scan["splits"][:, :6]
    whole = denoise(trained.model, splits, config=TRAIN)
    tiled = denoise(trained.model, splits, config=DenoiseConfig(tile=64, overlap=24, threads=1))
    block = denoise(trained.model, splits, rows=(2, 5), config=TRAIN)
    scale = np.ptp(whole)
    assert np.abs(tiled - whole).max() < 0.02 * scale
    assert np.abs(tiled - whole).mean() < 1e-3 * scale
    np.testing.assert_allclose(block, whole[2:5], atol=1e-6 * scale)


def test_zarr_splits_train_in_slabs_and_denoise_into_zarr(tiny_splits, tmp_path):
    on_disk = zarr.open_array(
        tmp_path / "splits.zarr", mode="w", shape=tiny_splits.shape, chunks=(1, 2, 24, 24), dtype="float32"
    )
    on_disk[:] = tiny_splits
    # Room for 4 slices of both splits at once: training moves between slabs.
    slabs = DenoiseConfig(**{**TINY.as_dict(), "slab_bytes": 4 * 2 * 24 * 24 * 4, "slab_steps": 2})
    from_disk = train(on_disk, slabs)
    in_memory = train(tiny_splits, slabs)
    assert from_disk.losses == in_memory.losses
    out = zarr.open_array(tmp_path / "denoised.zarr", mode="w", shape=(10, 24, 24), chunks=(2, 24, 24), dtype="float32")
    assert denoise(from_disk.model, on_disk, out=out, config=TINY) is out
    np.testing.assert_allclose(out[:], denoise(in_memory.model, tiny_splits, config=TINY), atol=1e-6)


def test_fine_tune_keeps_the_normalisation_and_continues(tiny_splits):
    base = train(tiny_splits, TINY)
    offset, scale = float(base.model.offset), float(base.model.scale)
    tuned = train(tiny_splits * 2.0, TINY, model=model_from_bytes(model_to_bytes(base.model)))
    assert (float(tuned.model.offset), float(tuned.model.scale)) == (offset, scale)
    assert tuned.steps == TINY.steps and tuned.losses != base.losses


def test_model_store_round_trip_and_search(client, trained, scan):
    model_id = save_model(
        client,
        trained.model,
        sample_class="foam-n2i-test",
        training=trained,
        scan_uids=["uid-a"],
        metadata={"beamline": "sim"},
    )
    assert save_model(client, trained.model, sample_class="foam-n2i-test") == model_id
    found = find_models(client, sample_class="foam-n2i-test")
    assert [m.id for m in found] == [model_id]
    md = found[0].metadata
    assert md["sha256"].startswith(model_id.removeprefix("n2i-"))
    assert md["torch_version"] == torch.__version__ and md["scan_uids"] == ["uid-a"]
    assert md["training"]["steps"] == TRAIN.steps and len(md["training"]["loss_curve"]) == 200
    assert md["hyperparameters"]["features"] == TRAIN.features and md["beamline"] == "sim"
    assert find_models(client, sample_class="no-such-class") == []
    loaded = load_model(client, model_id)
    splits = scan["splits"][:, :3]
    np.testing.assert_array_equal(denoise(loaded, splits, config=TRAIN), denoise(trained.model, splits, config=TRAIN))
    # Fine-tune the stored model on a scan and store the child with its parent's id.
    tuned = train(splits, DenoiseConfig(**{**TRAIN.as_dict(), "steps": 2}), model=loaded)
    child = save_model(
        client, tuned.model, sample_class="foam-n2i-test", training=tuned, scan_uids=["uid-b"], parent=model_id
    )
    assert child != model_id and model_record(client, child).metadata["parent_model"] == model_id
    assert {m.id for m in find_models(client, sample_class="foam-n2i-test")} == {model_id, child}


def test_tampered_weights_are_refused(client):
    model = new_model(TINY)
    model_id = save_model(client, model, sample_class="foam-n2i-tamper")
    record = model_record(client, model_id)
    blob = bytearray(model_to_bytes(model))
    blob[len(blob) // 2] ^= 0xFF
    models_root(client).write_array(
        np.frombuffer(bytes(blob), dtype=np.uint8), key="n2i-tampered", metadata=record.metadata
    )
    with pytest.raises(ModelIntegrityError, match="refusing"):
        load_model(client, "n2i-tampered")
    assert isinstance(load_model(client, model_id), type(model))
    with pytest.raises(MissingDataError, match="no-such-model"):
        load_model(client, "no-such-model")


def test_torchscript_model_denoises_like_the_original(trained, scan, tmp_path):
    splits = scan["splits"][:, :3]
    path = tmp_path / "n2i.pt"
    traced = torch.jit.trace(trained.model, torch.zeros(1, 5, 128, 128))
    with pytest.warns(DeprecationWarning):
        torch.jit.save(traced, str(path))
    scripted = load_torchscript(path)
    with pytest.raises(BadInputError, match="neighbours"):
        denoise(scripted, splits, config=TRAIN)
    np.testing.assert_allclose(
        denoise(scripted, splits, neighbours=2, config=TRAIN), denoise(trained.model, splits, config=TRAIN), atol=1e-6
    )
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(BadInputError, match="junk.pt"):
        load_torchscript(tmp_path / "junk.pt")
    with pytest.raises(BadInputError, match="missing.pt"):
        load_torchscript(tmp_path / "missing.pt")


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda s: denoise(new_model(TINY), s[0]), "splits"),
        (lambda s: train(s[:1], TINY), "splits"),
        (lambda s: train(s, DenoiseConfig(**{**TINY.as_dict(), "k": 4})), "splits"),
        (lambda s: train(np.where(s > 2, np.nan, s), TINY), "splits"),
        (lambda s: denoise(new_model(TINY), s, rows=(5, 20)), "rows"),
        (lambda s: denoise(new_model(TINY), s, out=np.empty((3, 24, 24))), "out"),
        (lambda s: train(s, TINY, resume=True), "resume"),
        (lambda s: train(s, DenoiseConfig(**{**TINY.as_dict(), "depth": 5, "patch": 32, "tile": 96})), "splits"),
        (lambda s: DenoiseConfig(k=1), "k"),
        (lambda s: DenoiseConfig(patch=30), "patch"),
        (lambda s: DenoiseConfig(time_budget=0), "time_budget"),
        (lambda s: DenoiseConfig(device="tpu"), "device"),
        (lambda s: split_reconstructions(np.zeros((8, 4), np.float32), np.zeros(8), k=2), "projections"),
        (lambda s: split_reconstructions(np.zeros((8, 2, 16), np.float32), np.zeros(8), k=1), "k"),
        (lambda s: split_reconstructions(np.zeros((8, 2, 16), np.float32), np.zeros(7)), "angles"),
    ],
)
def test_bad_input_names_the_input(tiny_splits, call, name):
    with pytest.raises(BadInputError, match=name):
        call(tiny_splits)


def test_store_refuses_an_empty_sample_class(client):
    with pytest.raises(BadInputError, match="sample_class"):
        save_model(client, new_model(TINY), sample_class="")


def test_docstring_examples_run():
    result = doctest.testmod(tomolive.ml.noise2inverse, verbose=False)
    assert result.failed == 0 and result.attempted >= 5
