"""Rotation centre by registering projections with their mirrored 180-degree partners.

The projection half a turn later is the mirror image about the centre, so the column
shift that registers a projection with its mirrored partner gives the centre (FFT
cross-correlation, evaluated on a 0.01 px grid around the peak). A partner missing from
the angle grid is linearly interpolated or extrapolated in angle from its two nearest
neighbours, which removes the bias a residual angle would cause. Uses every detector row.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft
import scipy.ndimage as ndi

from ...errors import BadInputError
from ...validation import check_size
from .common import CenterResult, check_center_inputs, median_step

__all__ = ["find_center_registration"]

_TWO_PI = 2.0 * np.pi


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
    data, theta = check_center_inputs(projections, angles)
    n_cols = data.shape[2]
    step = median_step(theta)
    if max_residual is None:
        max_residual = 1.5 * step
    references = _pick_references(theta, max_residual, check_size(n_pairs, "n_pairs", 1))
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
