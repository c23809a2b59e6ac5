"""PSNR and the reconstruction-circle mask."""

from __future__ import annotations

import numpy as np
import pytest

from tomolive.errors import BadInputError
from tomolive.qc import circle_mask, psnr


def _reference() -> np.ndarray:
    ref = np.zeros((32, 32))
    ref[8:24, 8:24] = 1.0
    return ref


def test_psnr_known_values() -> None:
    ref = _reference()
    assert psnr(ref + 0.1, ref) == pytest.approx(20.0)  # peak 1, mse 0.01
    assert psnr(ref + 0.01, ref) == pytest.approx(40.0)
    assert psnr(2 * ref + 0.1, 2 * ref) == pytest.approx(20 * np.log10(20.0))  # peak 2
    noise = np.random.default_rng(0).standard_normal(ref.shape)
    noise *= 0.05 / noise.std()
    assert psnr(ref + noise, ref) == pytest.approx(10 * np.log10(1.0 / np.mean(noise**2)), rel=1e-12)
    assert psnr(ref, ref) == float("inf")


def test_fit_removes_an_affine_scaling() -> None:
    ref = _reference()
    noise = 0.01 * np.random.default_rng(1).standard_normal(ref.shape)
    scaled = 3.0 * (ref + noise) - 7.0
    assert psnr(scaled, ref) < 0
    fitted = psnr(scaled, ref, fit=True)
    assert fitted == pytest.approx(psnr(ref + noise, ref), abs=0.05)
    assert fitted == pytest.approx(40.0, abs=0.5)
    assert psnr(-2.0 * ref + 5.0, ref, fit=True) > 250  # exact up to rounding


def test_mask_restricts_error_and_peak() -> None:
    ref = _reference()
    image = ref.copy()
    image[0, 0] = 100.0  # a wild corner pixel outside the mask
    mask = circle_mask(ref.shape, 0.9)
    assert not mask[0, 0]
    assert psnr(image, ref) < 0
    assert psnr(image, ref, mask=mask) == float("inf")
    image[16, 16] += 0.1
    assert psnr(image, ref, mask=mask) == pytest.approx(10 * np.log10(mask.sum() / 0.01))


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(BadInputError, match=r"image has shape \(4, 5\).*reference has \(4, 4\)"):
        psnr(np.zeros((4, 5)), np.zeros((4, 4)))


@pytest.mark.parametrize(("shape", "fraction"), [((128, 128), 0.95), ((101, 101), 0.5), ((64, 96), 1.0)])
def test_circle_mask_area(shape: tuple[int, int], fraction: float) -> None:
    mask = circle_mask(shape, fraction)
    assert mask.shape == shape and mask.dtype == bool
    r = fraction * min(shape) / 2
    assert mask.sum() == pytest.approx(np.pi * r**2, rel=0.02)
    ny, nx = shape
    assert mask[ny // 2, nx // 2] and not mask[0, 0]
    np.testing.assert_array_equal(mask, mask[::-1, ::-1])  # centred
