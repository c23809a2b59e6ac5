"""Automatic, sub-pixel rotation-centre finding for parallel-beam scans.

Convention (shared with :mod:`tomolive.recon`)
-----------------------------------------------
Detector column ``j`` has its centre at coordinate ``j`` (so a 1024-wide detector spans
-0.5 .. 1023.5 and its middle is 511.5). The *centre* is the column coordinate of the
rotation axis. An object point at ``(x, y)`` (pixels, relative to the axis, in the frame
that rotates with the sample) is seen at angle ``theta`` (radians) at column

    u = center + x * cos(theta) + y * sin(theta).

Hence ``p(theta + pi, u) = p(theta, 2 * center - u)``: the projection half a turn later is
the mirror image about the centre. Both methods use that symmetry:

- ``"registration"`` -- mirror the projection 180 degrees away from a reference and find
  the column shift that registers the two (FFT cross-correlation, evaluated on a 0.01 px
  grid around the peak). When no projection lies exactly 180 degrees away (e.g. a
  180-degree scan taken with ``endpoint=False``), the partner is linearly interpolated or
  extrapolated in angle from its two nearest neighbours, which removes the bias the
  residual angle would cause. Uses every detector row. Fast.
- ``"vo"`` -- Vo, Drakopoulos, Atwood and Rau (2014), https://doi.org/10.1364/OE.22.019078:
  the 0-180 degree sinogram and its mirrored copy are stacked into a 360-degree sinogram;
  for the right centre its 2D Fourier transform has the least energy outside the double
  wedge that a real object allows. Coarse search on integer centres, then a fine search
  on a 0.25 px grid refined by a parabola through the minimum. Per sinogram row; the
  result of several rows is their median.
- ``"auto"`` -- both. Registration runs first (when a partner within ``max_residual`` of
  180 degrees exists); when its correlation is >= 0.5 it narrows Vo's search to
  +/- max(n_cols/32, 8) px around it (widened again if Vo's minimum lands on that edge).
  Vo then stops at its unit-step estimate, parabola-refined (``refined`` false in its
  details; as accurate as the 0.25 px pass on noisy phantoms, 0.06 px, in half the
  time), on the middle one of its rows only, unless that lies within 0.5 px of the
  agreement limit or beyond: then Vo runs again, refined, on all of its rows. When the
  two agree to ``agree_px`` (default 2) the registration result is returned; otherwise
  Vo's, with its confidence halved. Both results go in ``details``.

Measured on noisy ellipse phantoms (128-1024 px, 180-1500 angles, 180- and 360-degree
scans, centres -7.5 .. +11.25 px off the middle): both methods within 0.2 px (Vo shows a
~-0.05 px bias). On tooth.h5 (APS, 181 x 640) registration gives 295.96 and Vo 295.08
(algotom's Vo: 295.0; published range 295-296.3); a ramp-filtered reconstruction of that
slice has the least negative mass and total variation at 295.75-296.0, hence registration
first in ``"auto"``.

All functions take line integrals (flat/dark-normalised, ``-log``), either one sinogram
``(n_angles, n_cols)`` or projections ``(n_angles, n_rows, n_cols)``, with ``angles`` in
radians, one per projection, in any order.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.fft as sfft
import scipy.ndimage as ndi

from ..errors import BadInputError
from ..validation import as_float32

__all__ = [
    "CENTER_METHODS",
    "CenterResult",
    "find_center",
    "find_center_registration",
    "find_center_vo",
]

CENTER_METHODS = ("auto", "registration", "vo")
_LAYOUT = "(n_angles, n_cols) or (n_angles, n_rows, n_cols)"
_TWO_PI = 2.0 * np.pi
_SEED_CONFIDENCE = 0.5  # registration NCC above which it narrows Vo's search in "auto"
_UNREFINED_PX = 0.5  # error allowed for Vo's unit-step estimate when it only cross-checks


@dataclass(frozen=True)
class CenterResult:
    """A rotation centre and how it was found.

    Attributes
    ----------
    center : float
        Column coordinate of the rotation axis in pixels (pixel ``j``'s centre is ``j``).
    method : str
        ``"registration"`` or ``"vo"``: the method whose number this is.
    confidence : float
        0..1; for registration the normalised cross-correlation of the registered pair,
        for Vo's method the relative depth of the metric's minimum (1 - min/median).
    details : dict
        Method-specific numbers (JSON-serialisable) for the provenance record.
    """

    center: float
    method: str
    confidence: float
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain-dict form for provenance records."""
        return {
            "center": self.center,
            "method": self.method,
            "confidence": self.confidence,
            "details": dict(self.details),
        }


# -- input checks ------------------------------------------------------------------------


def _check_inputs(data: object, angles: object) -> tuple[np.ndarray, np.ndarray]:
    """Return projections as float32 (n_angles, n_rows, n_cols) and angles as float64."""
    arr = as_float32(data, "projections", (2, 3), _LAYOUT)
    if arr.ndim == 2:
        arr = arr[:, np.newaxis, :]
    theta = np.asarray(angles, dtype=np.float64)
    if theta.ndim != 1 or theta.shape[0] != arr.shape[0]:
        raise BadInputError(
            f"angles must be 1D with one value per projection ({arr.shape[0]}); got shape "
            f"{theta.shape!r}. Pass the rotation angle of each projection, in radians."
        )
    if not np.all(np.isfinite(theta)):
        raise BadInputError("angles contain NaN/inf; expected finite angles in radians.")
    if arr.shape[0] < 4 or arr.shape[2] < 8:
        raise BadInputError(
            f"projections need at least 4 angles and 8 columns {_LAYOUT}; got shape {np.shape(data)!r}."
        )
    span = float(np.ptp(theta))
    if span > 4.0 * np.pi:
        raise BadInputError(
            f"angles span {span:.1f}, more than two turns; they look like degrees. Pass radians (np.deg2rad(angles))."
        )
    step = _median_step(theta)
    if span + 1.5 * step < np.pi - 1e-6:
        raise BadInputError(
            f"angles cover {np.degrees(span):.2f} degrees (+ one step of "
            f"{np.degrees(step):.3f}); centre finding needs a scan over at least 180 degrees."
        )
    return arr, theta


def _median_step(theta: np.ndarray) -> float:
    diffs = np.diff(np.sort(theta))
    diffs = diffs[diffs > 1e-9]
    return float(np.median(diffs)) if diffs.size else 0.0


def _check_search(search: tuple[float, float] | None, n_cols: int) -> tuple[float, float] | None:
    if search is None:
        return None
    try:
        lo, hi = (float(v) for v in search)
    except (TypeError, ValueError) as err:
        raise BadInputError(f"search_range must be a pair (start, stop) of column positions; got {search!r}.") from err
    if not (0.0 <= lo < hi <= n_cols - 1):
        raise BadInputError(
            f"search_range must satisfy 0 <= start < stop <= n_cols - 1 = {n_cols - 1}; got {search!r}."
        )
    return lo, hi


# -- registration of 0 / 180 degree pairs ------------------------------------------------


def _partner(theta: np.ndarray, ref: int, max_residual: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Indices and weights that estimate the projection at ``theta[ref] + pi``.

    Returns ``(indices, weights)`` for a linear combination of at most two projections
    (interpolation when they bracket the target, extrapolation otherwise), or None when
    the nearest projection is more than ``max_residual`` radians from the target.
    """
    target = theta[ref] + np.pi
    offset = (theta - target + np.pi) % _TWO_PI - np.pi  # signed distance in (-pi, pi]
    offset[ref] = np.inf
    order = np.argsort(np.abs(offset))
    nearest = int(order[0])
    if abs(offset[nearest]) > max_residual:
        return None
    if abs(offset[nearest]) < 1e-9:
        return np.array([nearest]), np.array([1.0])
    # a second projection on the other side if any is close, else the next on the same side
    other_side = [int(k) for k in order[1:6] if np.sign(offset[k]) != np.sign(offset[nearest])]
    same_side = [
        int(k)
        for k in order[1:6]
        if np.sign(offset[k]) == np.sign(offset[nearest]) and abs(offset[k] - offset[nearest]) > 1e-9
    ]
    candidates = [k for k in other_side if abs(offset[k]) <= 2.0 * max_residual] or same_side
    if not candidates:
        return np.array([nearest]), np.array([1.0])
    second = candidates[0]
    t1, t2 = offset[nearest], offset[second]
    w2 = (0.0 - t1) / (t2 - t1)
    return np.array([nearest, second]), np.array([1.0 - w2, w2])


def _pick_references(theta: np.ndarray, max_residual: float, n_pairs: int) -> list[int]:
    """Up to ``n_pairs`` projections whose 180-degree partner is closest (circular search)."""
    wrapped = theta % _TWO_PI
    order = np.argsort(wrapped)
    ordered = wrapped[order]
    targets = (wrapped + np.pi) % _TWO_PI
    pos = np.searchsorted(ordered, targets)
    before = ordered[(pos - 1) % len(ordered)]
    after = ordered[pos % len(ordered)]
    dist = np.minimum(
        np.abs((targets - before + np.pi) % _TWO_PI - np.pi),
        np.abs((targets - after + np.pi) % _TWO_PI - np.pi),
    )
    candidates = np.flatnonzero(dist <= max_residual)
    if candidates.size == 0:
        return []
    # smallest residual first; among equals keep acquisition order, spread over the scan
    ranked = candidates[np.lexsort((candidates, np.round(dist[candidates], 9)))]
    if ranked.size > n_pairs:
        best = np.round(dist[ranked[0]], 9)
        ties = ranked[np.round(dist[ranked], 9) == best]
        if ties.size >= n_pairs:
            ranked = ties[np.linspace(0, ties.size - 1, n_pairs).astype(int)]
    return [int(k) for k in ranked[:n_pairs]]


def _register_mirror(
    ref: np.ndarray, partner: np.ndarray, sigma: float = 1.5, fine: float = 0.01
) -> tuple[float, float]:
    """Column shift ``s`` with ``mirror(partner)[j] ~ ref[j + s]``; and the correlation."""
    # smoothed column gradients: insensitive to offsets and to the detector edges (a
    # mean-removed image would correlate its own rectangular support and bias the shift
    # towards 0); the Gaussian (sigma px) keeps noise from dominating the derivative
    r = ndi.gaussian_filter1d(ref, sigma, axis=-1, order=1, mode="nearest")
    q = ndi.gaussian_filter1d(partner[..., ::-1], sigma, axis=-1, order=1, mode="nearest")
    n_cols = r.shape[-1]
    m = sfft.next_fast_len(2 * n_cols)
    spectrum = np.sum(sfft.rfft(r, m, axis=-1) * np.conj(sfft.rfft(q, m, axis=-1)), axis=0)
    corr = sfft.irfft(spectrum, m)
    shifts = np.arange(m)
    shifts[shifts > m // 2] -= m
    peak = float(shifts[int(np.argmax(corr))])
    # band-limited evaluation of the correlation around the integer peak
    grid = peak + np.arange(-1.0, 1.0 + fine / 2, fine)
    k = np.arange(spectrum.shape[0])
    weights = np.full(k.shape, 2.0)
    weights[0] = 1.0
    if m % 2 == 0:
        weights[-1] = 1.0
    phases = np.exp(2j * np.pi * np.outer(grid, k) / m)
    values = (phases @ (weights * spectrum)).real / m
    best = int(np.argmax(values))
    if 0 < best < len(grid) - 1:  # parabola through the three best grid points
        y0, y1, y2 = values[best - 1 : best + 2]
        denom = y0 - 2 * y1 + y2
        delta = 0.5 * (y0 - y2) / denom if denom < 0 else 0.0
    else:
        delta = 0.0
    shift = float(grid[best] + delta * fine)
    norm = float(np.sqrt(np.sum(r.astype(np.float64) ** 2) * np.sum(q.astype(np.float64) ** 2)))
    score = float(values[best] / norm) if norm > 0 else 0.0
    return shift, float(np.clip(score, 0.0, 1.0))


def find_center_registration(
    projections: np.ndarray,
    angles: np.ndarray,
    *,
    max_residual: float | None = None,
    n_pairs: int = 3,
) -> CenterResult:
    """Find the centre by registering projections with their mirrored 180-degree partners.

    Parameters
    ----------
    projections : ndarray
        Line integrals, a sinogram (n_angles, n_cols) or projections
        (n_angles, n_rows, n_cols).
    angles : ndarray
        (n_angles,) rotation angles in radians.
    max_residual : float, optional
        Largest allowed distance in radians between ``theta_ref + pi`` and the nearest
        projection; default 1.5 median angular steps, so that a partner is at most
        extrapolated by one step (extrapolation amplifies noise).
    n_pairs : int
        Number of reference projections (those with the closest partners; among equally
        close ones, spread over the scan) whose centres are combined by their median,
        >= 1 (default 3).

    Returns
    -------
    CenterResult
        ``details`` holds the per-pair centres, the residual angles and the pair indices.

    Raises
    ------
    BadInputError
        Bad shapes or angles, or no projection within ``max_residual`` of 180 degrees
        from any reference.

    Examples
    --------
    >>> import numpy as np
    >>> theta = np.linspace(0, np.pi, 180, endpoint=False)
    >>> u = np.arange(100.0)
    >>> sino = np.exp(-0.5 * ((u - 47.3 - 20 * np.cos(theta)[:, None]) / 3) ** 2)
    >>> round(find_center_registration(sino, theta).center, 1)
    47.3
    """
    data, theta = _check_inputs(projections, angles)
    n_cols = data.shape[2]
    step = _median_step(theta)
    if max_residual is None:
        max_residual = 1.5 * step
    if isinstance(n_pairs, bool) or not isinstance(n_pairs, (int, np.integer)) or n_pairs < 1:
        raise BadInputError(f"n_pairs must be an integer >= 1; got {n_pairs!r}.")
    references = _pick_references(theta, max_residual, n_pairs)
    sigma = max(1.5, n_cols / 256.0)  # gradient smoothing, px: noise vs sharpness
    centers, scores, pairs = [], [], []
    for ref in references:
        partner = _partner(theta, ref, max_residual)
        if partner is None:
            continue
        idx, w = partner
        image = np.tensordot(w.astype(np.float32), data[idx], axes=(0, 0))
        shift, score = _register_mirror(data[ref], image, sigma=sigma)
        centers.append(0.5 * (shift + n_cols - 1))
        scores.append(score)
        residual = (theta[idx[0]] - theta[ref] - np.pi + np.pi) % _TWO_PI - np.pi
        pairs.append(
            {
                "reference": ref,
                "partners": [int(i) for i in idx],
                "weights": [float(v) for v in w],
                "residual_deg": float(np.degrees(residual)),
            }
        )
    if not centers:
        raise BadInputError(
            "no projection lies within "
            f"{np.degrees(max_residual):.3f} degrees of 180 degrees from the reference "
            "projections; use method='vo' or pass a larger max_residual."
        )
    center = float(np.median(centers))
    return CenterResult(
        center=center,
        method="registration",
        confidence=float(np.median(scores)),
        details={
            "centers": [float(c) for c in centers],
            "scores": [float(s) for s in scores],
            "pairs": pairs,
            "spread_px": float(np.ptp(centers)),
        },
    )


# -- Vo's Fourier-domain metric ----------------------------------------------------------


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
    n_full = max(round(np.pi / _median_step(t)), 4)
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


def _parabola_min(grid: np.ndarray, metric: np.ndarray) -> float:
    """Grid point of the minimum, refined by a parabola through it and its neighbours."""
    k = int(np.argmin(metric))
    value = float(grid[k])
    if 0 < k < len(grid) - 1:
        y0, y1, y2 = metric[k - 1 : k + 2]
        denom = y0 - 2 * y1 + y2
        if denom > 0:
            spacing = float(grid[k + 1] - grid[k])
            value += float(np.clip(0.5 * (y0 - y2) / denom, -0.5, 0.5)) * spacing
    return value


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
    center1 = _parabola_min(grid, metric)
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
    return _parabola_min(grid, metric), confidence, info


def _pick_rows(n_rows: int, rows: object) -> list[int]:
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
        minimum refined by a parabola, in about half the time.

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
    data, theta = _check_inputs(projections, angles)
    n_cols = data.shape[2]
    if not (0.0 < ratio <= 1.0):
        raise BadInputError(f"ratio must be in (0, 1]; got {ratio!r}.")
    if not (step > 0 and radius > 0):
        raise BadInputError(f"step and radius must be > 0; got step={step!r}, radius={radius!r}.")
    search = _check_search(search_range, n_cols)
    if search is None:
        middle = (n_cols - 1) / 2.0
        search = (max(middle - n_cols / 8.0, 0.0), min(middle + n_cols / 8.0, n_cols - 1.0))
    picked = _pick_rows(data.shape[1], rows)
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


def find_center(
    projections: np.ndarray,
    angles: np.ndarray,
    method: Literal["auto", "registration", "vo"] = "auto",
    *,
    search_range: tuple[float, float] | None = None,
    rows: int | list[int] | None = None,
    agree_px: float = 2.0,
    **options: Any,
) -> CenterResult:
    """Find the rotation centre of a parallel-beam scan, sub-pixel.

    Parameters
    ----------
    projections : ndarray
        Line integrals (normalised, ``-log``): a sinogram (n_angles, n_cols) or
        projections (n_angles, n_rows, n_cols). float32 is used internally.
    angles : ndarray
        (n_angles,) rotation angles in radians, covering at least 180 degrees.
    method : {"auto", "registration", "vo"}
        See the module docstring. ``"auto"`` (default) runs both and cross-checks.
    search_range : (float, float), optional
        Column range for Vo's coarse search; default the middle +/- n_cols / 8 (in
        ``"auto"``: around the registration result when that is confident).
    rows : int or list of int, optional
        Detector rows for Vo's method; default those of :func:`find_center_vo`, of which
        ``"auto"``'s cross-check of a usable registration takes only the middle one.
    agree_px : float
        In ``"auto"``: largest difference between the two methods counted as agreement
        (default 2.0); see the module docstring.
    **options
        Passed to :func:`find_center_registration` (``max_residual``, ``n_pairs``) or
        :func:`find_center_vo` (``step``, ``radius``, ``ratio``).

    Returns
    -------
    CenterResult
        The centre in the module's convention (pixel ``j``'s centre is ``j``;
        ``u = center + x cos(theta) + y sin(theta)``).

    Raises
    ------
    BadInputError
        Bad input or options, or a method that cannot run on these angles.

    Examples
    --------
    >>> import numpy as np
    >>> theta = np.linspace(0, np.pi, 180, endpoint=False)
    >>> u = np.arange(128.0)
    >>> blobs = [(20.0, 5.0, 1.0), (-10.0, 30.0, 0.5)]  # (x, y, weight)
    >>> sino = sum(a * np.exp(-0.5 * ((u - 60.6 - x * np.cos(theta)[:, None]
    ...            - y * np.sin(theta)[:, None]) / 2.5) ** 2) for x, y, a in blobs)
    >>> result = find_center(sino, theta)
    >>> abs(result.center - 60.6) < 0.2, result.method
    (True, 'registration')
    """
    if method not in CENTER_METHODS:
        raise BadInputError(f"method must be one of {CENTER_METHODS!r}; got {method!r}.")
    reg_keys = {"max_residual", "n_pairs"}
    vo_keys = {"step", "radius", "ratio"}
    unknown = sorted(set(options) - reg_keys - vo_keys)
    if unknown:
        raise BadInputError(f"unknown option(s) {unknown!r}; allowed: {sorted(reg_keys | vo_keys)!r}.")
    reg_opts = {k: v for k, v in options.items() if k in reg_keys}
    vo_opts = {k: v for k, v in options.items() if k in vo_keys}
    if method == "registration":
        return find_center_registration(projections, angles, **reg_opts)
    if method == "vo":
        return find_center_vo(projections, angles, search_range=search_range, rows=rows, **vo_opts)

    data, theta = _check_inputs(projections, angles)
    n_cols = data.shape[2]
    reg: CenterResult | None = None
    reg_error = None
    try:
        reg = find_center_registration(data, theta, **reg_opts)
    except BadInputError as err:
        reg_error = str(err)
    usable = reg is not None and reg.confidence >= _SEED_CONFIDENCE
    seeded = search_range is None and usable
    vo_range = search_range
    if seeded:
        half = max(n_cols / 32.0, 8.0)
        vo_range = (max(reg.center - half, 0.0), min(reg.center + half, n_cols - 1.0))
    # Vo only cross-checks a usable registration: its unit-step estimate on one row (the
    # middle of its default rows) is enough unless it comes near the agreement limit, where
    # Vo's own centre -- refined, on every row -- may be the one returned.
    check_rows = rows
    if usable and rows is None:
        defaults = _pick_rows(data.shape[1], None)
        check_rows = [defaults[len(defaults) // 2]]
    vo = find_center_vo(data, theta, search_range=vo_range, rows=check_rows, refine=not usable, **vo_opts)
    if seeded and vo.details["at_edge"]:  # registration misled the search: search widely
        seeded = False
        vo_range = search_range
        vo = find_center_vo(data, theta, search_range=vo_range, rows=check_rows, refine=False, **vo_opts)
    if usable and abs(vo.center - reg.center) > agree_px - _UNREFINED_PX:
        vo = find_center_vo(data, theta, search_range=vo_range, rows=rows, **vo_opts)
    details: dict[str, Any] = {
        "vo": vo.as_dict(),
        "registration": None if reg is None else reg.as_dict(),
        "registration_error": reg_error,
        "seeded_by_registration": seeded,
    }
    if not usable:
        return CenterResult(vo.center, "vo", vo.confidence, details)
    details["difference_px"] = vo.center - reg.center
    details["agree"] = bool(abs(vo.center - reg.center) <= agree_px)
    if details["agree"]:
        return CenterResult(reg.center, "registration", reg.confidence, details)
    return CenterResult(vo.center, "vo", 0.5 * vo.confidence, details)
