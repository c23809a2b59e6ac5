"""tomolive's ptychography solver beside Pty-chi's (APS) on the same data, through the optional backend.

The cross-check runs where ``ptychi`` imports (it needs a torch its torchvision accepts: the
CUDA build on Linux); elsewhere that test skips, naming why, and the backend's refusal is tested.
Only numpy, scikit-image and tomolive's ptychography modules are imported here, so the file
also runs in a Pty-chi environment without tomolive's server stack:
``PYTHONPATH=src python -m pytest -c /dev/null --noconftest tests/test_ptycho_ptychi.py``.
"""

from __future__ import annotations

import pytest
import skimage.data
from skimage.transform import resize

from tomolive.errors import BadInputError
from tomolive.techniques.ptycho import metrics, physics
from tomolive.techniques.ptycho.params import PtychoParams
from tomolive.techniques.ptycho.ptychi_backend import reconstruct_ptychi, reconstruct_ptychi_isolated, unavailable
from tomolive.techniques.ptycho.solver import data_error, reconstruct

N, SHAPE, EPOCHS = 32, (96, 96), 60
WHY = unavailable()


def _case() -> dict:
    amplitude = 0.75 + 0.25 * resize(skimage.data.camera() / 255.0, SHAPE, anti_aliasing=True)
    phase = resize(skimage.data.moon().astype(float), SHAPE, anti_aliasing=True)
    obj = physics.complex_object(amplitude, phase, phase_range_rad=1.0)
    probe = physics.make_probe(N, aperture_px=16, defocus_phase_rad=1.5)
    positions = physics.fermat_positions(100, 5.5, centre=(SHAPE[0] / 2, SHAPE[1] / 2))
    patterns = physics.simulate_patterns(obj, probe, positions, photons_per_pattern=1e6, rng=3)
    guess = physics.make_probe(N, aperture_px=16, kind="aperture")
    return {"obj": obj, "positions": positions, "patterns": patterns, "guess": guess,
            "mask": metrics.illuminated_mask(SHAPE, positions, probe)}  # fmt: skip


@pytest.mark.skipif(WHY is not None, reason=f"Pty-chi cannot be imported here: {WHY}")
def test_ours_and_ptychi_agree_on_the_same_patterns() -> None:
    case = _case()
    args = (case["patterns"], case["positions"], case["guess"])
    ours = reconstruct(*args, object_shape=SHAPE, method="epie", epochs=EPOCHS, batch_size=16, threads=1)
    theirs = reconstruct_ptychi(*args, object_shape=SHAPE, method="epie", epochs=EPOCHS, batch_size=16, threads=1)
    errors = {
        name: metrics.phase_nrmse(r.object, case["obj"], case["mask"])
        for name, r in (("ours", ours), ("ptychi", theirs))
    }
    assert errors["ours"] <= 0.025 and errors["ptychi"] <= 0.025, errors  # measured 0.015 and 0.020
    assert errors["ours"] <= errors["ptychi"] + 0.005, errors  # ours no worse than Pty-chi's on its own data
    # the same object: measured 0.016 apart (ours 0.015 from the truth, Pty-chi 0.020)
    assert metrics.phase_nrmse(ours.object, theirs.object, case["mask"]) <= 0.025
    assert theirs.probe.shape == (1, N, N) and len(theirs.loss) == EPOCHS
    assert abs(theirs.loss[-1] - ours.loss[-1]) < 0.5 * ours.loss[-1]  # one data error for both solvers


@pytest.mark.skipif(WHY is not None, reason=f"Pty-chi cannot be imported here: {WHY}")
def test_ours_and_ptychi_agree_on_a_partially_coherent_beam() -> None:
    """Two probe modes in both solvers, on a beam with 30 % of its power in a second mode."""
    case = _case()
    beam = physics.add_probe_modes(physics.make_probe(N, aperture_px=16, defocus_phase_rad=1.5), 2, fraction=0.3)
    patterns = physics.simulate_patterns(case["obj"], beam, case["positions"], photons_per_pattern=1e6, rng=3)
    args = (patterns, case["positions"], physics.add_probe_modes(case["guess"], 2))
    kw = {"object_shape": SHAPE, "method": "epie", "epochs": EPOCHS, "batch_size": 16, "threads": 1}
    results = {"ours": reconstruct(*args, **kw), "ptychi": reconstruct_ptychi(*args, **kw)}
    errors = {name: metrics.phase_nrmse(r.object, case["obj"], case["mask"]) for name, r in results.items()}
    assert errors["ours"] <= 0.035 and errors["ptychi"] <= 0.035, errors
    for result in results.values():
        power = (abs(result.probe) ** 2).sum(axis=(1, 2))
        assert result.probe.shape == (2, N, N) and 0.15 < power[1] / power.sum() < 0.45, power


@pytest.mark.skipif(WHY is None, reason="Pty-chi imports here: its refusal cannot be seen")
def test_the_backend_says_why_it_cannot_run() -> None:
    case = _case()
    args = (case["patterns"], case["positions"], case["guess"])
    with pytest.raises(BadInputError, match="ptychi"):
        reconstruct_ptychi(*args, object_shape=SHAPE, epochs=1)
    with pytest.raises(BadInputError, match=r"Pty-chi's process failed: .*pip install ptychi"):
        reconstruct_ptychi_isolated(*args, object_shape=SHAPE, epochs=1)  # the pipeline's way: its own process


def test_the_backend_checks_its_inputs_before_importing() -> None:
    case = _case()
    with pytest.raises(BadInputError, match="method"):
        reconstruct_ptychi(case["patterns"], case["positions"], case["guess"], object_shape=SHAPE, method="dm")
    with pytest.raises(BadInputError, match="positions"):
        reconstruct_ptychi(case["patterns"], case["positions"][:5], case["guess"], object_shape=SHAPE)
    with pytest.raises(BadInputError, match="refine_positions: the Pty-chi backend keeps positions fixed"):
        PtychoParams(method="ptychi-lsqml", refine_positions=True)  # refused, not silently ignored


def test_data_error_of_a_result_matches_the_solver_s_own() -> None:
    """The one data error both backends are judged by: at the truth only Poisson noise remains."""
    case = _case()
    args = (case["patterns"], case["positions"])
    ours = reconstruct(*args, case["guess"], object_shape=SHAPE, epochs=20, batch_size=16, threads=1)
    after = data_error(*args, ours.probe[0], ours.object)
    assert 0 < after <= 1.05 * ours.loss[-1], (after, ours.loss[-1])  # the last sweep's, measured mid-update
    probe = physics.make_probe(N, aperture_px=16, defocus_phase_rad=1.5)
    truth = data_error(*args, probe * physics.probe_scale(probe, 1e6), case["obj"])  # the probe as simulated
    assert truth < 0.8 * after, (truth, after)  # measured 3.8e-4 against 5.8e-4 after 20 epochs
