"""Rotation centre by Vo, Drakopoulos, Atwood and Rau's (2014) Fourier-domain metric.

https://doi.org/10.1364/OE.22.019078: the 0-180 degree sinogram and its mirrored copy are
stacked into a 360-degree sinogram; for the right centre its 2D Fourier transform has the
least energy outside the double wedge that a real object allows. Coarse search on integer
centres, then a fine search on a 0.25 px grid refined by a parabola through the minimum.
Per sinogram row; the result of several rows is their median.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import scipy.fft as sfft
import scipy.ndimage as ndi

from ...errors import BadInputError
from .common import CenterResult, check_center_inputs, check_search_range, median_step, parabola_min

__all__ = ["find_center_vo", "pick_rows"]


def _sino_180(sino: np.ndarray, theta: np.ndarray, n_out: int | None = None) -> np.ndarray:
    """Resample a sinogram onto ``n_out`` uniform angles over [theta0, theta0 + pi).

    Rows at or beyond ``theta0 + pi`` are dropped (a 360-degree scan keeps its first half);
    non-uniform or decimated grids are linearly interpolated in angle, after a Gaussian
    along the angles when decimating, to avoid aliasing.
    """
    order = np.argsort(theta)
    t = theta[order] - theta[order[0]]
    s = sino[order]
    keep = t < np.pi - 1e-6
    t, s = t[keep], s[keep]
    n_full = max(round(np.pi / median_step(t)), 4)
    n = n_full if n_out is None else max(4, min(int(n_out), n_full))
    uniform = np.arange(n) * (np.pi / n)
    if len(t) == n and np.allclose(t, uniform, atol=0.01 * np.pi / n):
        return np.ascontiguousarray(s)
    if n < len(t):
        s = ndi.gaussian_filter1d(s, 0.5 * len(t) / n, axis=0, mode="nearest")
    positions = np.interp(uniform, t, np.arange(len(t)))
    lo = np.floor(positions).astype(int)
    hi = np.minimum(lo + 1, len(t) - 1)
    w = (positions - lo)[:, None].astype(np.float32)
    return (s[lo] * (1 - w) + s[hi] * w).astype(np.float32)


def _wedge_weights(height: int, width: int, radius: float) -> np.ndarray:
    """Vo et al. 2014, Eq. (3), on the unshifted ``rfft2`` grid of a (height, width) image.

    1 where a correctly centred 360-degree sinogram of an object of ``radius`` pixels has
    (almost) no energy -- outside the double wedge -- minus a band around zero angular
    frequency and the three lowest column frequencies, as in algotom. Columns other than
    0 and the Nyquist one count twice, so the sum over this half-spectrum equals the sum
    over the full spectrum.
    """
    du = 1.0 / width
    dv = (height - 1.0) / (height * 2.0 * np.pi)
    ndrop = min(20, int(0.05 * height))
    v = np.abs(np.fft.fftfreq(height, 1.0 / height))[:, None]
    u = np.arange(width // 2 + 1)[None, :]
    half_width = np.ceil(v * dv / radius / du)
    mask = (u <= half_width) & (v > ndrop) & (u > 1)
    weights = np.full(u.shape, 2.0, dtype=np.float32)
    weights[0, 0] = 1.0
    if width % 2 == 0:
        weights[0, -1] = 1.0
    return (mask * weights).astype(np.float32)


def _shift_columns(coeffs: np.ndarray, shift: float, out: np.ndarray) -> None:
    """``out[:, j] = f(j - shift)``: cubic B-spline interpolation along columns only.

    ``coeffs`` are the rows' spline coefficients (``ndi.spline_filter1d(..., axis=1)``),
    computed once for every shift; the 4-tap weights are those of ``ndi.shift(order=3)``,
    without its 2-D prefilter and 16-tap 2-D interpolation for a shift along one axis.
    Columns wrapped in from the far edge (``j < shift`` or ``j >= ncol + shift``) are
    left for the caller to overwrite.
    """
    whole = int(np.floor(shift))
    u = 1.0 - (shift - whole)  # position past the sample left of j - shift
    taps = np.array([(1 - u) ** 3, 3 * u**3 - 6 * u**2 + 4, -3 * u**3 + 3 * u**2 + 3 * u + 1, u**3]) / 6
    # g[i] = taps . coeffs[i-2 : i+2], and out[j] = g[j - whole]
    out[:] = np.roll(ndi.correlate1d(coeffs, taps.astype(np.float32), axis=1, mode="mirror"), whole, axis=1)


def _vo_metrics(sino: np.ndarray, centers: np.ndarray, ratio: float) -> np.ndarray:
    """Vo's metric for each candidate centre (lower is better)."""
    nrow, ncol = sino.shape
    weights = _wedge_weights(2 * nrow, ncol, 0.5 * ratio * ncol)
    flip = np.ascontiguousarray(sino[:, ::-1])
    coeffs = None  # spline coefficients of flip, for fractional shifts
    comp = sino[::-1, :]
    metrics = np.empty(len(centers))
    batch = int(np.clip(2**23 // (2 * nrow * ncol), 1, len(centers)))
    stack = np.empty((batch, 2 * nrow, ncol), dtype=np.float32)
    stack[:, :nrow] = sino
    for start in range(0, len(centers), batch):
        chunk = centers[start : start + batch]
        for i, center in enumerate(chunk):
            shift = 2.0 * (center - (ncol - 1) / 2.0)
            moved = stack[i, nrow:]
            if shift == np.floor(shift):
                moved[:] = np.roll(flip, int(shift), axis=1)
                cut = int(shift)
            else:
                if coeffs is None:
                    coeffs = ndi.spline_filter1d(flip, order=3, axis=1, mode="mirror")
                _shift_columns(coeffs, shift, moved)
                cut = int(np.ceil(shift)) if shift >= 0 else int(np.floor(shift))
            if cut >= 0:
                moved[:, :cut] = comp[:, :cut]
            else:
                moved[:, cut:] = comp[:, cut:]
        spectra = sfft.rfft2(stack[: len(chunk)], axes=(1, 2), workers=-1)
        metrics[start : start + len(chunk)] = np.einsum("kij,ij->k", np.abs(spectra), weights) / (2 * nrow * ncol)
    return metrics


def _vo_row(
    sino: np.ndarray,
    theta: np.ndarray,
    start: float,
    stop: float,
    step: float,
    radius: float,
    ratio: float,
    refine: bool = True,
) -> tuple[float, float, dict[str, Any]]:
    """Vo's method on one sinogram row: coarse integer search, unit steps, then ``step``.

    The coarse search runs on a copy reduced to <= 360 angles and <= 320 columns; the
    fine search on <= 720 angles at full column resolution. Without ``refine`` the result
    is the unit-step minimum refined by a parabola, and the ``step`` pass is skipped.
    """
    ncol = sino.shape[1]
    info: dict[str, Any] = {}
    confidence = 0.0
    if stop - start > 2.0 * radius:
        dsp = max(1, int(np.ceil(ncol / 320.0)))
        coarse = ndi.gaussian_filter(_sino_180(sino, theta, 360), (3, 1), mode="reflect")
        w = ncol // dsp
        coarse = coarse[:, : w * dsp].reshape(coarse.shape[0], w, dsp).mean(axis=2)
        # column k of the binned sinogram is centred on full-resolution column k*dsp + (dsp-1)/2
        offset = 0.5 * (dsp - 1)
        lo = int(np.clip(np.floor((start - offset) / dsp), 0, w - 1))
        hi = int(np.clip(np.ceil((stop - offset) / dsp), 0, w - 1))
        grid = np.arange(lo, hi + 1, dtype=np.float64)
        metric = _vo_metrics(coarse, grid, ratio)
        best = int(np.argmin(metric))
        center0 = float(grid[best] * dsp + offset)
        radius = max(radius, float(dsp))
        typical = float(np.median(metric))
        confidence = float(np.clip(1.0 - metric[best] / typical, 0.0, 1.0)) if typical > 0 else 0.0
        info.update(coarse_center=center0, coarse_at_edge=best in (0, len(grid) - 1))
    else:
        center0 = 0.5 * (start + stop)
        radius = max(radius, 0.5 * (stop - start))
        info.update(coarse_center=None, coarse_at_edge=False)
    fine = ndi.gaussian_filter(_sino_180(sino, theta, 720), (2, 2), mode="reflect")
    # unit steps over the whole radius, then `step` within +/- 1 px of the best one
    reach = np.ceil(radius)
    grid = np.unique(np.clip(center0 + np.arange(-reach, reach + 0.5), 0, ncol - 1))
    metric = _vo_metrics(fine, grid, ratio)
    center1 = parabola_min(grid, metric)
    if confidence == 0.0:
        typical = float(np.median(metric))
        confidence = float(np.clip(1.0 - metric.min() / typical, 0.0, 1.0)) if typical > 0 else 0.0
    k = int(np.argmin(metric))
    info["fine_at_edge"] = bool(k in (0, len(grid) - 1)) and len(grid) > 2
    if not refine:
        return center1, confidence, info
    center1 = float(np.clip(round(center1 / step) * step, 0, ncol - 1))
    grid = np.unique(np.clip(center1 + np.arange(-1.0, 1.0 + step / 2, step), 0, ncol - 1))
    metric = _vo_metrics(fine, grid, ratio)
    return parabola_min(grid, metric), confidence, info


def pick_rows(n_rows: int, rows: object) -> list[int]:
    if rows is None:
        if n_rows <= 3:
            return list(range(n_rows))
        return sorted({round(v) for v in np.linspace(0.25, 0.75, 3) * (n_rows - 1)})
    picked = [int(r) for r in np.atleast_1d(np.asarray(rows))]
    bad = [r for r in picked if not 0 <= r < n_rows]
    if bad or not picked:
        raise BadInputError(f"rows must be detector row indices in [0, {n_rows - 1}]; got {rows!r}.")
    return picked


def find_center_vo(
    projections: np.ndarray,
    angles: np.ndarray,
    *,
    search_range: tuple[float, float] | None = None,
    rows: int | list[int] | None = None,
    step: float = 0.25,
    radius: float = 4.0,
    ratio: float = 0.5,
    refine: bool = True,
) -> CenterResult:
    """Find the centre with Vo et al.'s (2014) Fourier-domain sinogram metric.

    Parameters
    ----------
    projections : ndarray
        Line integrals, a sinogram (n_angles, n_cols) or projections
        (n_angles, n_rows, n_cols). Only the first half turn (``[theta0, theta0 + pi)``)
        is used; non-uniform angles are resampled onto a uniform grid.
    angles : ndarray
        (n_angles,) rotation angles in radians.
    search_range : (float, float), optional
        Columns ``(start, stop)`` searched at integer steps; default the middle of the
        detector +/- n_cols / 8.
    rows : int or list of int, optional
        Detector rows to use; default three rows at 25, 50 and 75 % of the height (all
        rows when there are at most 3). The result is the median over rows.
    step : float
        Fine-search step in pixels (default 0.25); the minimum is refined by a parabola.
    radius : float
        Half-width in pixels of the fine search around the coarse result (default 4).
    ratio : float
        Object width / detector width used to shape the double wedge, 0 < ratio <= 1
        (default 0.5; Vo's method is insensitive to it).
    refine : bool
        Run the ``step`` pass (default). Without it each row's centre is the unit-step
        minimum refined by a parabola, which is faster.

    Returns
    -------
    CenterResult
        ``details`` holds per-row centres and confidences and ``at_edge``: whether a
        search minimum fell on the edge of its range (then widen ``search_range``).

    Raises
    ------
    BadInputError
        Bad shapes, angles or options.
    """
    data, theta = check_center_inputs(projections, angles)
    n_cols = data.shape[2]
    if not (0.0 < ratio <= 1.0):
        raise BadInputError(f"ratio must be in (0, 1]; got {ratio!r}.")
    if not (step > 0 and radius > 0):
        raise BadInputError(f"step and radius must be > 0; got step={step!r}, radius={radius!r}.")
    search = check_search_range(search_range, n_cols)
    if search is None:
        middle = (n_cols - 1) / 2.0
        search = (max(middle - n_cols / 8.0, 0.0), min(middle + n_cols / 8.0, n_cols - 1.0))
    picked = pick_rows(data.shape[1], rows)
    centers, confidences, edges = [], [], []
    # Rows are independent and numpy/scipy release the GIL: search them side by side.
    with ThreadPoolExecutor(max_workers=len(picked)) as pool:
        results = pool.map(
            lambda row: _vo_row(
                data[:, row, :], theta, search[0], search[1], float(step), float(radius), float(ratio), refine
            ),
            picked,
        )
        for c, conf, info in results:
            centers.append(c)
            confidences.append(conf)
            edges.append(info["coarse_at_edge"] or info["fine_at_edge"])
    return CenterResult(
        center=float(np.median(centers)),
        method="vo",
        confidence=float(np.median(confidences)),
        details={
            "rows": picked,
            "centers": [float(c) for c in centers],
            "confidences": [float(c) for c in confidences],
            "search_range": [float(search[0]), float(search[1])],
            "at_edge": bool(any(edges)),
            "refined": bool(refine),
        },
    )
