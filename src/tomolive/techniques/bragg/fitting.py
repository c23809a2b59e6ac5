"""The conventional labeller: a pseudo-Voigt least-squares fit to each peak's patch.

:func:`fit_pseudo_voigt` fits ``amplitude * (eta * L + (1 - eta) * G) + background`` (a
Gaussian ``G`` of sigma ``width`` and a Lorentzian ``L`` of the same FWHM) with
``scipy.optimize.least_squares`` and an analytic Jacobian; :func:`fit_patches` does a stack
on one core and :func:`fit_patches_dask` spreads a stack over a Dask cluster in chunks.
Centres are in patch pixel coordinates (pixel ``(i, j)`` has its centre at ``(i, j)``); a fit
that is not :func:`trusted` gives NaN, never a centre, so nothing learns from it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from scipy.optimize import least_squares

from ...errors import BadInputError

if TYPE_CHECKING:
    from distributed import Client

HWHM_PER_SIGMA = float(np.sqrt(2.0 * np.log(2.0)))  # the Lorentzian's gamma for a Gaussian sigma
LOWER = (-np.inf, -np.inf, 0.0, 0.3, 0.0, -np.inf)
UPPER = (np.inf, np.inf, np.inf, 6.0, 1.0, np.inf)
MIN_SIGNIFICANCE = 5.0
"""Height times width over the fit's noise below which a fit is noise: pure Poisson patches score
1.8 at the median (5 % pass); 5 % of the peaks in crowded simulated frames score below it."""
MAX_OFFSET_PX = 2.0
"""Peak finding centres each patch on its brightest pixel: a fitted centre further than this from
the middle has gone to a neighbour or into the noise (crowded frames, wide peaks)."""


class PeakFit(NamedTuple):
    """One fitted peak: centre (patch pixels), height above background, sigma, Lorentzian fraction."""

    row: float
    col: float
    amplitude: float
    width: float
    eta: float
    background: float
    noise: float  # robust sigma (1.4826 MAD) of data minus model: the patch's noise, neighbours aside


def _model_and_jacobian(p: np.ndarray, yy: np.ndarray, xx: np.ndarray, jac: bool):
    row, col, amp, width, eta, _ = p
    dy, dx = yy - row, xx - col
    r2 = dy * dy + dx * dx
    gamma = HWHM_PER_SIGMA * width
    gauss = np.exp(-r2 / (2.0 * width * width))
    lorentz = 1.0 / (1.0 + r2 / (gamma * gamma))
    shape = eta * lorentz + (1.0 - eta) * gauss
    if not jac:
        return amp * shape + p[5]
    l2g = lorentz * lorentz / (gamma * gamma)
    d_centre = amp * (eta * 2.0 * l2g + (1.0 - eta) * gauss / (width * width))
    d_width = amp * r2 * (eta * 2.0 * l2g * HWHM_PER_SIGMA / gamma + (1.0 - eta) * gauss / width**3)
    return np.stack([d_centre * dy, d_centre * dx, shape, d_width, amp * (lorentz - gauss), np.ones_like(r2)], axis=1)


def initial_guess(patch: np.ndarray) -> np.ndarray:
    """Starting parameters: the middle pixel (peak finding centred the patch on its brightest pixel;
    a centroid is pulled towards neighbours: 12 % of fits went astray in crowded frames), height, sigma 1, eta 0.3."""
    border = np.concatenate([patch[0], patch[-1], patch[1:-1, 0], patch[1:-1, -1]])
    background = float(np.median(border))
    row = col = (patch.shape[0] - 1) / 2.0
    amplitude = max(float(patch.max()) - background, 1e-3)
    return np.array([row, col, amplitude, 1.0, 0.3, background])


def fit_pseudo_voigt(patch: np.ndarray) -> PeakFit:
    """Least-squares pseudo-Voigt fit to one square patch (any odd size).

    Raises
    ------
    BadInputError
        Not a square 2-D patch of finite values.
    """
    patch = np.asarray(patch, dtype=np.float64)
    if patch.ndim != 2 or patch.shape[0] != patch.shape[1] or patch.shape[0] < 3:
        raise BadInputError(f"patch has shape {patch.shape!r}; expected a square 2-D patch of at least 3x3.")
    if not np.isfinite(patch).all():
        raise BadInputError("patch holds NaN or infinite values; expected finite counts.")
    size = patch.shape[0]
    yy, xx = (a.ravel().astype(np.float64) for a in np.mgrid[0:size, 0:size])
    data = patch.ravel()
    start = np.clip(initial_guess(patch), np.array(LOWER) + 1e-9, np.array(UPPER) - 1e-9)
    result = least_squares(
        lambda p: _model_and_jacobian(p, yy, xx, False) - data,
        start,
        jac=lambda p: _model_and_jacobian(p, yy, xx, True),
        bounds=(LOWER, UPPER),
        method="trf",
        x_scale="jac",
        max_nfev=100,
    )
    row, col, amplitude, width, eta, background = (float(v) for v in result.x)
    noise = 1.4826 * float(np.median(np.abs(result.fun)))
    return PeakFit(row, col, amplitude, width, eta, background, noise)


def trusted(fit: PeakFit, size: int, max_offset: float = MAX_OFFSET_PX) -> bool:
    """Whether ``fit`` of a ``size``-pixel patch found its peak: significant above the noise
    (:data:`MIN_SIGNIFICANCE`), a width below its bound (a flat patch drives it there) and a centre
    within ``max_offset`` px of the middle."""
    middle = (size - 1) / 2.0
    return bool(
        fit.amplitude * fit.width >= MIN_SIGNIFICANCE * fit.noise
        and fit.amplitude > 0
        and fit.width < UPPER[3] * (1.0 - 1e-6)
        and np.hypot(fit.row - middle, fit.col - middle) <= max_offset
    )


def fit_patches(patches: np.ndarray) -> np.ndarray:
    """Fitted centres ``(P, 2)`` (row, col in patch pixels) of a stack of patches, on this core;
    NaN rows where the fit is not :func:`trusted`."""
    patches = _check_stack(patches)
    out = np.full((len(patches), 2), np.nan)
    for k, patch in enumerate(patches):
        fit = fit_pseudo_voigt(patch)
        if trusted(fit, patch.shape[0]):
            out[k] = fit.row, fit.col
    return out


def fit_patches_dask(client: Client, patches: np.ndarray, chunk: int = 256) -> np.ndarray:
    """:func:`fit_patches` over a Dask cluster, ``chunk`` patches per task; centres ``(P, 2)``, NaN where untrusted."""
    patches = _check_stack(patches)
    if chunk < 1:
        raise BadInputError(f"chunk must be >= 1 patch; got {chunk!r}.")
    if len(patches) == 0:
        return np.zeros((0, 2))
    pieces = [patches[start : start + chunk] for start in range(0, len(patches), chunk)]
    futures = client.map(fit_patches, pieces, pure=False)
    return np.concatenate(client.gather(futures))


def _check_stack(patches: np.ndarray) -> np.ndarray:
    patches = np.asarray(patches)
    if patches.ndim != 3 or patches.shape[1] != patches.shape[2]:
        raise BadInputError(f"patches have shape {patches.shape!r}; expected a stack (P, size, size).")
    return patches
