"""Quality numbers: PSNR against a reference, reconstruction-circle masks."""

from __future__ import annotations

import numpy as np

from .errors import BadInputError


def circle_mask(shape: tuple[int, int], fraction: float = 0.95) -> np.ndarray:
    """Boolean mask of the inscribed circle (radius ``fraction`` of half the width)."""
    ny, nx = shape
    y = np.arange(ny) - (ny - 1) / 2.0
    x = np.arange(nx) - (nx - 1) / 2.0
    radius = fraction * min(ny, nx) / 2.0
    return (y[:, None] ** 2 + x[None, :] ** 2) <= radius**2


def psnr(
    image: np.ndarray,
    reference: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    fit: bool = False,
) -> float:
    """Peak signal-to-noise ratio (dB) of ``image`` against ``reference``.

    The peak is the reference's range inside ``mask`` (default: everywhere). With
    ``fit=True`` the image is first mapped by the least-squares affine fit ``a * image + b``
    to the reference, so a global scale or offset (e.g. arbitrary units) is not penalised.

    Examples
    --------
    >>> ref = np.zeros((4, 4)); ref[1:3, 1:3] = 1.0
    >>> round(psnr(ref + 0.1, ref), 1)
    20.0
    """
    image, reference = np.asarray(image, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if image.shape != reference.shape:
        raise BadInputError(
            f"image has shape {image.shape!r} but reference has {reference.shape!r}; they must match."
        )
    if mask is not None:
        image, reference = image[mask], reference[mask]
    if fit:
        design = np.stack([image.ravel(), np.ones(image.size)], axis=1)
        coef, *_ = np.linalg.lstsq(design, reference.ravel(), rcond=None)
        image = coef[0] * image + coef[1]
    mse = np.mean((image - reference) ** 2)
    peak = np.ptp(reference)
    return float(10.0 * np.log10(peak**2 / mse)) if mse > 0 else float("inf")
