"""QC numbers respond to what they measure: dose, rings, blur; alerts fire at their thresholds."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage

from tomolive.errors import BadInputError
from tomolive.qc import QCThresholds, _sector_profiles, edge_width, qc_alerts, qc_metrics, ring_severity, snr_cnr
from tomolive.recon import reconstruct
from tomolive.sim.phantoms import FoamPhantom, make_foam, measure

ANGLES = np.linspace(0.0, np.pi, 150, endpoint=False)


@pytest.fixture(scope="module")
def foam() -> FoamPhantom:
    return make_foam((8, 96, 96), porosity=0.25, seed=21)


@pytest.fixture(scope="module")
def sinogram(foam: FoamPhantom) -> np.ndarray:
    return foam.sinogram(ANGLES)


def _scan(sinogram: np.ndarray, **conditions) -> np.ndarray:
    return reconstruct(measure(sinogram, seed=4, **conditions), ANGLES, method="gridrec")


def test_snr_and_cnr_fall_with_dose(foam: FoamPhantom, sinogram: np.ndarray) -> None:
    labels = foam.labels()
    high, low = (snr_cnr(_scan(sinogram, photons=p), labels) for p in (20000, 1000))
    # noise grows as 1/sqrt(dose): 4.5x here, less where reconstruction artefacts add to it
    assert high["snr"] > 2.5 * low["snr"] and high["cnr"] > 2.5 * low["cnr"]
    assert low["noise_sigma"] > 2.5 * high["noise_sigma"]
    assert high["phase_means"]["1"] == pytest.approx(foam.mu_solid, rel=0.1)
    estimated = [snr_cnr(_scan(sinogram, photons=p))["snr"] for p in (20000, 1000)]  # no labels: Otsu
    assert estimated[0] > 2 * estimated[1]


def test_ring_severity_rises_with_stripes(sinogram: np.ndarray) -> None:
    clean = ring_severity(_scan(sinogram, photons=5000))
    rings = ring_severity(_scan(sinogram, photons=5000, stripe_fraction=0.05, stripe_strength=0.03))
    assert rings > 3 * clean
    assert clean < QCThresholds().max_ring_severity < rings


def test_ring_severity_ignores_a_centred_cylinder() -> None:
    """A noise-free disc centred on the axis is concentric, but not an artefact."""
    g = np.arange(96) - 47.5
    disc = ((g[:, None] ** 2 + g[None, :] ** 2) <= 35.0**2).astype(np.float32)
    volume = ndimage.gaussian_filter(np.repeat(disc[None], 4, axis=0), (0, 0.7, 0.7))
    assert ring_severity(volume) < 0.001
    volume[:, (np.abs(np.hypot(g[:, None], g[None, :]) - 20.0) < 0.5)] += 0.05  # a 5% ring
    # one ring at one radius: an RMS over ~40 radii gives about 0.05 / sqrt(40)
    assert ring_severity(volume) > 0.004


@pytest.mark.parametrize("shape", [(3, 96, 96), (2, 70, 101)])
def test_sector_profiles_are_map_coordinates_on_the_polar_grid(shape) -> None:
    """The sparse polar resampling gives scipy's bilinear interpolation, sector-averaged."""
    images = np.random.default_rng(5).normal(size=shape).astype(np.float32)
    _n_images, ny, nx = shape
    radii = np.arange(4, min(ny, nx) // 2 - 2, dtype=float)
    per_sector = max(8, int(2 * np.pi * radii[-1]) // 8)
    theta = np.linspace(0, 2 * np.pi, 8 * per_sector, endpoint=False)
    coords = np.stack([(ny - 1) / 2 + radii[:, None] * np.sin(theta), (nx - 1) / 2 + radii[:, None] * np.cos(theta)])
    expected = [
        ndimage.map_coordinates(image, coords, order=1).reshape(len(radii), 8, -1).mean(axis=2) for image in images
    ]
    np.testing.assert_allclose(_sector_profiles(images, 8), expected, rtol=1e-5, atol=1e-6)


def test_edge_width_of_a_blurred_step() -> None:
    step = np.zeros((4, 96, 96), dtype=np.float32)
    step[:, :, 48:] = 1.0
    labels = step.astype(np.uint8)
    for s in (1.0, 2.0, 3.0):
        blurred = ndimage.gaussian_filter(step, (0, s, s))
        assert edge_width(blurred, labels) == pytest.approx(2.563 * s, rel=0.1)


def test_edge_width_grows_with_blur(foam: FoamPhantom, sinogram: np.ndarray) -> None:
    volume, labels = _scan(sinogram, photons=20000), foam.labels()
    sharp = edge_width(volume, labels)
    blurred = edge_width(ndimage.gaussian_filter(volume, (0, 1.5, 1.5)), labels)
    assert 0.5 < sharp < QCThresholds().max_edge_width < blurred
    assert blurred - sharp > 2.0


def test_qc_metrics_are_json_and_alert_on_a_bad_scan(foam: FoamPhantom, sinogram: np.ndarray) -> None:
    good = qc_metrics(_scan(sinogram, photons=20000), foam.labels(), center_confidence=0.9)
    bad = qc_metrics(
        _scan(sinogram, photons=300, stripe_fraction=0.05, stripe_strength=0.05), foam.labels(), center_confidence=0.2
    )
    json.dumps(good, allow_nan=False)
    assert good["phases_from"] == "labels" and good["center_confidence"] == 0.9
    assert qc_alerts(good) == []
    alerts = qc_alerts(bad)
    assert [a.split(":")[0] for a in alerts] == [
        "low signal-to-noise ratio",
        "low pore/solid contrast-to-noise ratio",
        "ring artefacts",
        "uncertain rotation centre",
    ]
    assert "stripe_method" in alerts[2] and f"{bad['ring_severity']:.2g}" in alerts[2]


@pytest.mark.parametrize(
    ("key", "limit", "inside", "outside"),
    [
        ("snr", "min_snr", 5.0, 4.99),
        ("cnr", "min_cnr", 3.0, 2.9),
        ("ring_severity", "max_ring_severity", 0.005, 0.0051),
        ("edge_width_px", "max_edge_width", 3.0, 3.01),
        ("center_confidence", "min_center_confidence", 0.5, 0.49),
    ],
)
def test_alerts_fire_beyond_each_threshold(key: str, limit: str, inside: float, outside: float) -> None:
    assert getattr(QCThresholds(), limit) == inside  # the documented defaults
    assert qc_alerts({key: inside}) == []
    (alert,) = qc_alerts({key: outside})
    assert limit in alert
    stricter = QCThresholds.from_mapping({limit: outside})
    assert qc_alerts({key: outside}, stricter) == []


def test_missing_or_undefined_metrics_raise_no_alert() -> None:
    assert qc_alerts({"snr": None, "cnr": math.nan, "edge_width_px": None}) == []
    assert qc_alerts({}) == []


def test_bad_inputs_are_named() -> None:
    with pytest.raises(BadInputError, match="unknown keys.*max_snr"):
        QCThresholds.from_mapping({"max_snr": 3})
    with pytest.raises(BadInputError, match=r"volume: expected a 3D array.*\(32, 32\)"):
        qc_metrics(np.zeros((32, 32)))
    with pytest.raises(BadInputError, match=r"labels has shape \(2, 32, 32\) but volume has \(3, 32, 32\)"):
        snr_cnr(np.zeros((3, 32, 32)), np.zeros((2, 32, 32), np.uint8))
