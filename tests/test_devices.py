"""Simulated beamline: dark, flat and sample images, Poisson noise, detector description."""

from __future__ import annotations

import numpy as np
import pytest

from tomolive.errors import BadInputError
from tomolive.sim.devices import SHUTTER_CLOSED, SHUTTER_OPEN, SimBeamline, make_sim_beamline
from tomolive.sim.phantoms import make_foam

DARK = 100.0  # SimTomoDetector's default dark_counts
LEVEL = 10000.0  # open-beam level of the noise-free detector


@pytest.fixture(scope="module")
def bl() -> SimBeamline:
    return make_sim_beamline(make_foam((16, 64, 64), porosity=0.15, seed=4), photons=None)


def _snap(beamline: SimBeamline) -> np.ndarray:
    beamline.detector.trigger().wait()
    image = beamline.detector.image.get()
    assert image.dtype == np.uint16
    return image.astype(np.float64)


def _flat(beamline: SimBeamline) -> np.ndarray:
    beamline.shutter.put(SHUTTER_OPEN)
    beamline.sample_x.set(beamline.sample_out).wait()
    try:
        return _snap(beamline)
    finally:
        beamline.sample_x.set(0.0).wait()


def test_shutter_closed_gives_the_dark_level(bl: SimBeamline) -> None:
    bl.shutter.put(SHUTTER_CLOSED)
    try:
        dark = _snap(bl)
    finally:
        bl.shutter.put(SHUTTER_OPEN)
    assert dark.shape == (16, 64)
    assert np.all(dark == DARK)


def test_sample_out_gives_the_flat_profile(bl: SimBeamline) -> None:
    flat = _flat(bl)
    expected = DARK + LEVEL * bl.detector.beam_profile
    assert np.max(np.abs(flat - expected)) <= 0.5  # uint16 rounding only
    # profile: brighter in the middle, ~exp(-1/4) dimmer at the side edges, 3% gain pattern
    assert 0.9 * LEVEL < flat[8, 31] - DARK < 1.1 * LEVEL
    assert (flat[8, 0] - DARK) / (flat[8, 31] - DARK) == pytest.approx(np.exp(-0.25), rel=0.1)
    bl.rotation.set(77).wait()
    try:
        np.testing.assert_array_equal(_flat(bl), flat)  # rotation does not matter with no sample
    finally:
        bl.rotation.set(0).wait()


@pytest.mark.parametrize("degrees", [0.0, 30.0, 135.0])
def test_sample_in_gives_the_projection(bl: SimBeamline, degrees: float) -> None:
    flat = _flat(bl)
    bl.rotation.set(degrees).wait()
    image = _snap(bl)
    line = -np.log((image - DARK) / (flat - DARK))
    expected = bl.phantom.project(np.deg2rad(degrees))
    assert expected.max() > 0.2  # the sample absorbs
    # 0.5-count rounding of >= ~2000 counts: |error| <= 0.5/2000 + 0.5/4000 < 1e-3
    np.testing.assert_allclose(line, expected, atol=1e-3)
    outside = expected == 0
    assert outside.any() and np.max(np.abs(line[outside])) < 1e-3


def test_poisson_noise_std_is_sqrt_counts() -> None:
    bl = make_sim_beamline(make_foam((16, 64, 64), porosity=0.1, seed=4), photons=1000, seed=3)
    bl.sample_x.set(bl.sample_out).wait()
    a, b = _snap(bl), _snap(bl)
    region = (slice(4, 12), slice(16, 48))  # flat, bright middle of the beam
    mean_counts = float(np.mean((bl.detector.expected_counts() - DARK)[region]))
    assert 850 < mean_counts < 1000  # beam profile <= 1 (times a 3% gain pattern)
    std = float(np.std((a - b)[region]) / np.sqrt(2))  # frame difference cancels the gain pattern
    assert std == pytest.approx(np.sqrt(mean_counts + 2.0**2), rel=0.15)  # Poisson + 2-count read
    assert np.mean(a[region]) - DARK == pytest.approx(mean_counts, rel=0.01)
    # a different seed gives a different frame
    other = make_sim_beamline(bl.phantom, photons=1000, seed=4)
    other.sample_x.set(other.sample_out).wait()
    assert not np.array_equal(_snap(other), a)


def test_describe_carries_shape_and_numpy_dtype(bl: SimBeamline) -> None:
    description = bl.detector.image.describe()[bl.detector.image.name]
    assert description["dtype"] == "array"
    assert description["shape"] == [16, 64]
    assert description["dtype_numpy"] == "<u2"
    assert bl.detector.image.name == "sim_det_image"


def test_default_beamline_images_the_default_foam() -> None:
    beamline = make_sim_beamline(photons=None)
    assert beamline.phantom.shape == (64, 128, 128)
    description = beamline.detector.image.describe()["sim_det_image"]
    assert description["shape"] == [64, 128] and description["dtype_numpy"] == "<u2"
    flat = _flat(beamline)
    image = _snap(beamline)  # sample in, angle 0
    line = -np.log((image - DARK) / (flat - DARK))
    np.testing.assert_allclose(line, beamline.phantom.project(0.0), atol=1e-3)


def test_nonpositive_photons_raise() -> None:
    with pytest.raises(BadInputError, match="photons must be positive"):
        make_sim_beamline(make_foam((16, 32, 32), porosity=0.1), photons=0)
