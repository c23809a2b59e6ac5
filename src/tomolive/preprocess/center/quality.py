"""Rotation centre by image quality: the histogram entropy of trial reconstructions.

A wrong centre smears every feature into arcs (180-degree scans) or doubled rings (360),
which spreads the grey-level histogram; the right one concentrates it (the criterion of
tomopy's ``find_center``). Reconstructions of one or two rows are made with
:func:`tomolive.recon.reconstruct` (gridrec on CPUs: a fraction of a second per trial at
640 px) over a few candidate centres, the entropy measured inside the inscribed disc on one
histogram range for all of them, and the minimum refined by a parabola. The trials use the
Hann filter: with the plain ramp, noise spreads the histogram as much as a wrong centre. Detectors wider
than 640 px are binned and scans with more than 720 angles decimated first.

It needs no 180-degree partner and is not misled by a sample wider than the field of view
in the way partner registration is when the partner must be extrapolated; but stripe
(ring) artefacts, noise and strong truncation flatten its optimum, hence ``sharpness``:
docs/measurements/kernels.md has the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.fft as sfft

from ...errors import BadInputError

__all__ = ["QualityScan", "quality_scan"]

_MAX_COLS = 640  # wider detectors are binned to at most this many columns
_MAX_ANGLES = 720  # longer scans are decimated to at most this many angles
_BINS = 256
_ROW_SPREAD_PX = 0.5  # rows whose minima lie this far apart halve the sharpness
_NOISE_DEPTH = 3e-3  # relative entropy rise 2 px off the minimum that pure noise reaches
_FILTER = "hann"  # noise would dominate the histogram with the plain ramp (real data)


@dataclass(frozen=True)
class QualityScan:
    """The entropy curve over trial centres and its refined minimum.

    Attributes
    ----------
    center : float
        Column of the smallest entropy (parabola-refined), full-resolution pixels.
    sharpness : float
        0..1: how steadily and how deeply the curve rises about its minimum (see
        ``_fit_minimum``), divided by ``1 + (spread / 0.5 px)^2`` where rows' minima spread;
        0 when the minimum lies on the edge of the range.
    centers, entropy : ndarray
        The trial centres and the entropy summed over rows at each.
    row_centers : list of float
        Each row's own refined minimum.
    at_edge : bool
        Whether the minimum fell on the first or last trial centre (widen the range).
    """

    center: float
    sharpness: float
    centers: np.ndarray
    entropy: np.ndarray
    row_centers: list[float]
    at_edge: bool

    def as_dict(self) -> dict[str, Any]:
        """Plain-dict form for provenance records."""
        return {
            "center": self.center,
            "sharpness": self.sharpness,
            "centers": [float(c) for c in self.centers],
            "entropy": [float(e) for e in self.entropy],
            "row_centers": list(self.row_centers),
            "at_edge": self.at_edge,
        }


def _reduce(data: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Bin columns to <= _MAX_COLS and keep every k-th angle to <= _MAX_ANGLES."""
    n_angles, n_rows, n_cols = data.shape
    stride = int(np.ceil(n_angles / _MAX_ANGLES))
    data, theta = data[::stride], theta[::stride]
    b = int(np.ceil(n_cols / _MAX_COLS))
    if b > 1:
        w = n_cols // b
        data = data[..., : w * b].reshape(data.shape[0], n_rows, w, b).mean(axis=-1)
    return np.ascontiguousarray(data, dtype=np.float32), theta, b


def _shifted(rows: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """(n_angles, n_trials, n_rows, n_cols): ``rows`` read ``shift`` columns further on, per trial.

    Band-limited (Fourier) shifts of the edge-padded rows, so every trial is interpolated
    alike and the entropy does not favour whole-pixel centres.
    """
    n = rows.shape[-1]
    width = int(sfft.next_fast_len(2 * n, real=True))
    padded = np.empty(rows.shape[:-1] + (width,), dtype=np.float32)
    padded[..., :n] = rows
    half = n + (width - n) // 2
    padded[..., n:half] = rows[..., -1:]
    padded[..., half:] = rows[..., :1]
    spectrum = sfft.rfft(padded, axis=-1)
    k = np.arange(spectrum.shape[-1])
    phase = np.exp(2j * np.pi * np.outer(shifts, k) / width).astype(np.complex64)
    moved = sfft.irfft(spectrum[:, None] * phase[None, :, None, :], n=width, axis=-1)
    return np.ascontiguousarray(moved[..., :n], dtype=np.float32)


def _entropies(images: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    """Histogram entropy of each image (trials, rows, n, n) inside the inscribed disc."""
    n = images.shape[-1]
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2.0
    disc = xx**2 + yy**2 <= (0.45 * n) ** 2
    out = np.empty(images.shape[:2])
    for idx in np.ndindex(*images.shape[:2]):
        counts, _ = np.histogram(images[idx][disc], bins=_BINS, range=bounds)
        p = counts[counts > 0] / max(counts.sum(), 1)
        out[idx] = -np.sum(p * np.log(p))
    return out


def _fit_minimum(centers: np.ndarray, curve: np.ndarray) -> tuple[float, float]:
    """Vertex of a least-squares parabola through the minimum and two points each side, and
    the sharpness ``z / (1 + z) * d / (d + d0)`` (0 when the minimum is on the edge): z is the
    parabola's rise 1 px from its vertex over the fit's rms residual (a steady curve), d its
    relative rise 2 px away (a deep one; d0 = :data:`_NOISE_DEPTH`).

    The entropy curve is V-shaped with a flat, slightly noisy bottom on real data: five
    points place its vertex more steadily than three (measured on tooth.h5 crops).
    """
    k = int(np.argmin(curve))
    if k in (0, len(curve) - 1) or len(curve) < 4:
        return float(centers[k]), 0.0
    lo, hi = max(0, k - 2), min(len(curve), k + 3)
    x, y = centers[lo:hi], curve[lo:hi]
    mid = float(x.mean())
    a, b, c = np.polyfit(x - mid, y, 2)
    if a <= 0:
        return float(centers[k]), 0.0
    vertex = float(np.clip(mid - b / (2.0 * a), x[0], x[-1]))
    residual = y - np.polyval([a, b, c], x - mid)
    noise = float(np.sqrt(np.mean(residual**2))) + 1e-3 * float(np.ptp(curve)) + 1e-12
    z = float(a) / noise
    depth = 4.0 * float(a) / max(float(curve.min()), 1e-12)  # relative rise 2 px away
    return vertex, z / (1.0 + z) * depth / (depth + _NOISE_DEPTH)


def quality_scan(
    data: np.ndarray,
    theta: np.ndarray,
    centers: np.ndarray,
    rows: list[int],
) -> QualityScan:
    """Entropy of trial reconstructions of ``rows`` at each of ``centers``.

    Parameters
    ----------
    data : ndarray
        Checked line integrals (n_angles, n_rows, n_cols), float32.
    theta : ndarray
        (n_angles,) radians.
    centers : ndarray
        Trial centres (full-resolution columns), increasing, evenly spaced, at least 3.
    rows : list of int
        Detector rows to reconstruct (one or two keep it cheap; gridrec pairs rows).

    Returns
    -------
    QualityScan

    Raises
    ------
    BadInputError
        The angles cannot be reconstructed (a gap beyond what :func:`reconstruct` accepts)
        or fewer than 3 trial centres.
    """
    from ...recon import available_methods, reconstruct

    grid = np.asarray(centers, dtype=np.float64)
    if grid.ndim != 1 or grid.size < 3:
        raise BadInputError(f"centers: expected at least 3 trial centres, got {grid.size}.")
    small, angles, b = _reduce(data[:, rows, :], theta)
    n = small.shape[-1]
    binned = np.clip((grid - 0.5 * (b - 1)) / b, 0.0, n - 1.0)
    # every trial is a shifted copy of the rows reconstructed about one common centre:
    # one call (gridrec pairs its rows) instead of one per trial
    common = float(np.clip(np.round(np.median(binned)), 0, n - 1))
    trials = _shifted(small, binned - common)
    stack = trials.reshape(trials.shape[0], -1, n)
    if "gridrec" in available_methods():  # FFTW "measure" planning would cost more than the scan
        flat = reconstruct(stack, angles, common, "gridrec", fft_plan="estimate", filter=_FILTER)
    else:
        flat = reconstruct(stack, angles, common, filter=_FILTER)
    images = flat.reshape(len(grid), len(rows), n, n)
    middle = images[len(grid) // 2]
    bounds = (float(np.percentile(middle, 0.5)), float(np.percentile(middle, 99.5)))
    if not bounds[1] > bounds[0]:
        bounds = (bounds[0], bounds[0] + 1.0)
    per_row = _entropies(images, bounds)
    curve = per_row.sum(axis=1)
    k = int(np.argmin(curve))
    center, sharpness = _fit_minimum(grid, curve)
    row_centers = [_fit_minimum(grid, per_row[:, r])[0] for r in range(per_row.shape[1])]
    spread = float(np.ptp(row_centers)) / _ROW_SPREAD_PX
    return QualityScan(
        center=center,
        sharpness=sharpness / (1.0 + spread**2),
        centers=grid,
        entropy=curve,
        row_centers=row_centers,
        at_edge=k in (0, len(grid) - 1),
    )
