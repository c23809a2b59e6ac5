"""Rotation centre on hard geometry: samples wider than the field of view, no 180-degree partner.

The phantom is a disc wider than the detector holding many small discs (exact line
integrals), scanned over [0, 180) degrees at 0.5-degree steps (360 angles spanning 179.5
degrees, so every 180-degree partner is missing and registration must extrapolate one).
There registration's correlation falls below the level ``"auto"`` trusts and the
image-quality check (:mod:`tomolive.preprocess.center.quality`) decides.
"""

from __future__ import annotations

import numpy as np
import pytest

from tomolive.preprocess import find_center
from tomolive.preprocess.center.auto import _quality_check
from tomolive.preprocess.center.common import check_center_inputs
from tomolive.preprocess.center.quality import quality_scan


def wide_sample(theta: np.ndarray, n_cols: int, center: float, radius: float, seed: int = 0) -> np.ndarray:
    """Noisy sinogram (n_angles, n_cols) of discs inside a disc of ``radius`` px about the axis."""
    rng = np.random.default_rng(seed)
    discs = [(0.0, 0.0, radius, 0.004), (0.15 * radius, -0.1 * radius, 0.5 * radius, 0.003)]
    for _ in range(int(0.6 * radius)):
        r, a = radius * np.sqrt(rng.uniform(0, 0.9)), rng.uniform(0, 2 * np.pi)
        discs.append((r * np.cos(a), r * np.sin(a), rng.uniform(1.5, 6.0), rng.uniform(0.005, 0.03)))
    u = np.arange(n_cols, dtype=np.float64)[None, :]
    cos, sin = np.cos(theta)[:, None], np.sin(theta)[:, None]
    sino = np.zeros((theta.size, n_cols))
    for x, y, rad, rho in discs:
        t = u - center - (x * cos + y * sin)
        sino += 2.0 * rho * np.sqrt(np.clip(rad * rad - t * t, 0.0, None))
    sino += 0.01 * sino.max() * rng.standard_normal(sino.shape)
    return sino.astype(np.float32)


HALF_TURN = np.linspace(0.0, np.pi, 360, endpoint=False)  # spans 179.5 degrees


@pytest.mark.parametrize(
    ("n_cols", "radius", "center"),
    [(256, 180.0, 120.6), (384, 300.0, 197.4), (512, 400.0, 260.7)],
)
def test_auto_within_half_pixel_on_truncated_phantoms(n_cols: int, radius: float, center: float) -> None:
    sino = wide_sample(HALF_TURN, n_cols, center, radius)
    assert sino[:, 0].min() > 0.1 and sino[:, -1].min() > 0.1  # truncated on both sides at every angle
    result = find_center(sino, HALF_TURN)
    # measured: 120.62, 197.41, 260.69 (registration alone 120.61, 197.34, 260.89; Vo 120.18, 197.03, 261.37)
    assert abs(result.center - center) < 0.5, result
    assert result.method == "quality"
    assert result.details["registration"]["confidence"] < 0.9  # why the image check ran
    assert result.details["quality_agreement"] == 1.0  # the seeds lie within agree_px
    assert result.confidence > 0.7  # measured 0.90-0.93


def test_auto_without_any_partner_uses_vo_and_image_quality() -> None:
    sino = wide_sample(HALF_TURN, 256, 131.3, 180.0, seed=1)
    result = find_center(sino, HALF_TURN, max_residual=1e-4)  # registration refused
    assert result.details["registration"] is None and "180 degrees" in result.details["registration_error"]
    assert result.method == "quality"
    assert abs(result.center - 131.3) < 0.5


def test_confidence_is_low_on_noise() -> None:
    """No object: whatever centre comes out, the reported confidence must say it is a guess."""
    rng = np.random.default_rng(3)
    theta = np.linspace(0.0, np.pi, 180, endpoint=False)
    result = find_center(rng.standard_normal((180, 4, 128)).astype(np.float32), theta)
    assert result.method == "quality"
    assert result.confidence < 0.5  # measured 0.29 (rows disagree, the entropy barely moves)


def test_quality_scan_flags_a_range_that_misses_the_centre() -> None:
    data, theta = check_center_inputs(wide_sample(HALF_TURN, 256, 120.6, 180.0), HALF_TURN)
    missed = quality_scan(data, theta, np.arange(110.0, 116.1, 1.0), [0])
    assert missed.at_edge and missed.sharpness == 0.0
    hit = quality_scan(data, theta, np.arange(117.0, 124.1, 0.5), [0])
    assert not hit.at_edge and abs(hit.center - 120.6) < 0.25
    assert set(hit.as_dict()) == {"center", "sharpness", "centers", "entropy", "row_centers", "at_edge"}


def test_image_check_searches_again_when_its_minimum_is_on_the_edge() -> None:
    data, theta = check_center_inputs(wide_sample(HALF_TURN, 256, 120.6, 180.0), HALF_TURN)
    scan = _quality_check(data, theta, None, [115.0])  # seeds 5.6 px off: 113..117 misses
    assert scan is not None and not scan.at_edge
    assert scan.centers[-1] > 120.0  # the second window, about the first one's edge (117)
    assert abs(scan.center - 120.6) < 0.5
