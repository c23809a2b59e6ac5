"""Foam phantoms: seeding, label fractions, projection geometry, input checks."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tomolive.errors import BadInputError
from tomolive.sim.phantoms import INCLUSION, PORE, SOLID, FoamPhantom, RockPhantom, make_foam, make_rock, measure

SHAPE = (32, 96, 96)


@pytest.fixture(scope="module")
def foam() -> FoamPhantom:
    return make_foam(SHAPE, porosity=0.15, seed=3)


def _cylinder(phantom: FoamPhantom) -> np.ndarray:
    n = phantom.n_cols
    g = np.arange(n) - (n - 1) / 2.0
    return (g[:, None] ** 2 + g[None, :] ** 2) <= phantom.radius**2


def _pore_fraction(phantom: FoamPhantom) -> float:
    return float(np.mean(phantom.labels()[:, _cylinder(phantom)] == PORE))


def test_same_seed_same_foam_other_seed_differs() -> None:
    a, b, c = (make_foam(SHAPE, porosity=0.15, seed=s) for s in (5, 5, 6))
    np.testing.assert_array_equal(a.centers, b.centers)
    np.testing.assert_array_equal(a.radii, b.radii)
    np.testing.assert_array_equal(a.labels(), b.labels())
    np.testing.assert_array_equal(a.project(0.7), b.project(0.7))
    assert np.mean(a.labels() != c.labels()) > 0.05


def test_labels_hold_three_phases_with_sensible_fractions(foam: FoamPhantom) -> None:
    labels = foam.labels()
    assert labels.shape == SHAPE and labels.dtype == np.uint8
    assert set(np.unique(labels)) == {PORE, SOLID, INCLUSION}
    inside = _cylinder(foam)
    assert np.all(labels[:, ~inside] == PORE)  # nothing outside the cylinder
    core = labels[:, inside]
    assert np.mean(core == PORE) == pytest.approx(0.15, abs=0.03)
    assert 0.005 < np.mean(core == INCLUSION) < 0.05
    assert np.mean(core == SOLID) > 0.65
    mu = foam.attenuation()
    assert mu.dtype == np.float32
    assert set(np.unique(mu).tolist()) == pytest.approx([0.0, foam.mu_solid, foam.mu_inclusion])


@pytest.mark.parametrize("target", [0.05, 0.12, 0.2])
@pytest.mark.parametrize("seed", [0, 1])
def test_porosity_inside_cylinder_near_target(target: float, seed: int) -> None:
    assert _pore_fraction(make_foam(SHAPE, porosity=target, seed=seed)) == pytest.approx(target, abs=0.02)


def test_two_phase_foam_has_no_inclusions() -> None:
    labels = make_foam(SHAPE, porosity=0.1, n_inclusions=0, seed=2).labels()
    assert set(np.unique(labels)) == {PORE, SOLID}


def test_default_porosity_target_is_reached() -> None:
    phantom = make_foam((64, 128, 128), seed=0)  # the default target: 0.3
    assert _pore_fraction(phantom) == pytest.approx(0.3, abs=0.05)


@pytest.mark.parametrize(("theta", "axis"), [(0.0, 1), (np.pi / 2, 2)])
def test_projection_matches_voxel_sums(foam: FoamPhantom, theta: float, axis: int) -> None:
    exact = foam.project(theta)
    voxels = foam.attenuation().sum(axis=axis)
    assert exact.shape == voxels.shape == (SHAPE[0], SHAPE[2])
    peak = float(exact.max())
    assert peak > foam.radius * foam.mu_solid  # at least half a diameter of solid
    # point-sampled voxels vs exact chords: small on average, a few voxels at edges
    assert np.mean(np.abs(exact - voxels)) < 0.01 * peak
    assert np.max(np.abs(exact - voxels)) < 0.05 * peak
    assert voxels.sum() == pytest.approx(exact.sum(), rel=0.005)


def test_large_and_small_spheres_project_alike() -> None:
    wide = make_foam((12, 256, 256), seed=4)  # pores of 8-23 px: projected one by one and in batches
    assert wide.radii.max() > 17 and wide.radii.min() < 12
    for theta, axis in ((0.0, 1), (np.pi / 2, 2)):
        exact, voxels = wide.project(theta), wide.attenuation().sum(axis=axis)
        assert np.mean(np.abs(exact - voxels)) < 0.01 * float(exact.max())
        assert voxels.sum() == pytest.approx(exact.sum(), rel=0.005)


def test_opposite_angles_are_mirror_images(foam: FoamPhantom) -> None:
    for theta in (0.0, 0.4, 1.3, 2.9):
        a, b = foam.project(theta), foam.project(theta + np.pi)
        np.testing.assert_allclose(b, a[:, ::-1], atol=1e-5)  # u -> 2c - u
        assert not np.allclose(a, a[:, ::-1], atol=1e-3)  # the foam itself is not symmetric


def test_sinogram_stacks_projections(foam: FoamPhantom) -> None:
    angles = np.array([0.0, 0.5, 1.0])
    sino = foam.sinogram(angles)
    assert sino.shape == (3, SHAPE[0], SHAPE[2]) and sino.dtype == np.float32
    np.testing.assert_array_equal(sino[1], foam.project(0.5))


@pytest.mark.parametrize("shape", [(16, 32, 48), (4, 32, 32), (16, 6, 6)])
def test_bad_shape_is_named(shape: tuple[int, int, int]) -> None:
    with pytest.raises(BadInputError, match=re.escape(repr(shape))):
        make_foam(shape)


def test_bad_porosity_raises() -> None:
    with pytest.raises(BadInputError, match="porosity"):
        make_foam(SHAPE, porosity=0.7)


@pytest.fixture(scope="module")
def rock() -> RockPhantom:
    return make_rock(SHAPE, porosity=0.12, seed=4)


def test_rock_is_seeded_and_has_three_phases_and_grain_texture(rock: RockPhantom) -> None:
    again, other = make_rock(SHAPE, porosity=0.12, seed=4), make_rock(SHAPE, porosity=0.12, seed=5)
    np.testing.assert_array_equal(rock.labels(), again.labels())
    assert np.mean(rock.labels() != other.labels()) > 0.05
    labels = rock.labels()
    assert labels.dtype == np.uint8 and set(np.unique(labels)) == {PORE, SOLID, INCLUSION}
    inside = _cylinder(rock)
    assert np.all(labels[:, ~inside] == PORE)
    core = labels[:, inside]
    assert np.mean(core == PORE) == pytest.approx(0.12, abs=0.03)
    assert 0.003 < np.mean(core == INCLUSION) < 0.05
    mu = rock.attenuation()[:, inside][core == SOLID]
    assert len(np.unique(mu)) > 10  # grains differ from the matrix and from each other
    assert mu.min() >= 0.8 * rock.mu_matrix and mu.max() <= 1.2 * rock.mu_matrix


@pytest.mark.parametrize(("theta", "axis"), [(0.0, 1), (np.pi / 2, 2)])
def test_rock_projection_matches_voxel_sums(rock: RockPhantom, theta: float, axis: int) -> None:
    exact, voxels = rock.project(theta), rock.attenuation().sum(axis=axis)
    peak = float(exact.max())
    assert np.mean(np.abs(exact - voxels)) < 0.01 * peak
    assert np.max(np.abs(exact - voxels)) < 0.05 * peak
    assert voxels.sum() == pytest.approx(exact.sum(), rel=0.005)
    np.testing.assert_allclose(rock.project(theta + np.pi), exact[:, ::-1], atol=1e-5)


def test_rock_bad_inputs_are_named() -> None:
    with pytest.raises(BadInputError, match=re.escape(repr((16, 32, 48)))):
        make_rock((16, 32, 48))
    with pytest.raises(BadInputError, match="porosity"):
        make_rock(SHAPE, porosity=0.5)


def test_measure_adds_poisson_noise_and_stripes() -> None:
    p = np.full((400, 4, 64), 0.5, dtype=np.float32)
    np.testing.assert_allclose(measure(p), p, rtol=1e-6)  # noise-free, no stripes
    noisy = measure(p, photons=1000, seed=1)
    # -log of Poisson counts: std ~ 1 / sqrt(photons * exp(-p))
    assert noisy.std() == pytest.approx(1 / np.sqrt(1000 * np.exp(-0.5)), rel=0.05)
    assert noisy.mean() == pytest.approx(0.5, abs=0.005)
    striped = measure(p, stripe_fraction=0.1, stripe_strength=0.05, seed=2)
    offsets = striped[0] - p[0]
    np.testing.assert_allclose(striped, np.broadcast_to(striped[0], p.shape))  # same at every angle
    assert 0.04 < np.mean(offsets != 0) < 0.2
    with pytest.raises(BadInputError, match="photons"):
        measure(p, photons=0)
