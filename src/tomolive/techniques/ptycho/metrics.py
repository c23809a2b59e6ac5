"""Ptychography quality numbers: phase error after offset/ramp removal, scanned area, probe overlap.

A ptychographic object is known only up to a constant phase and a linear phase ramp (and
an amplitude scale), so errors are measured after removing those, inside the scanned area.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from tomolive.errors import BadInputError


def _check_mask(mask: np.ndarray, shape: tuple[int, ...], name: str = "mask") -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != shape:
        raise BadInputError(f"{name} must have the image's shape {shape!r}, got {mask.shape!r}")
    if mask.sum() < 3:
        raise BadInputError(f"{name} selects {int(mask.sum())} pixels; need >= 3 to fit an offset and a ramp")
    return mask


def _grid(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates (float64) of a 2D image."""
    grid = np.indices(shape[:2]).astype(np.float64)
    return grid[0], grid[1]


def fit_phase_ramp(phase: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Least-squares plane ``a + b*row + c*col`` fitted to ``phase`` inside ``mask``, evaluated everywhere."""
    phase = np.asarray(phase, dtype=np.float64)
    mask = _check_mask(mask, phase.shape)
    rr, cc = _grid(phase.shape)
    design = np.stack([np.ones(int(mask.sum())), rr[mask], cc[mask]], axis=1)
    coef, *_ = np.linalg.lstsq(design, phase[mask], rcond=None)
    a, b, c = (float(v) for v in coef)
    return a + b * rr + c * cc


def remove_phase_ramp(phase: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``phase`` less its least-squares offset and linear ramp fitted inside ``mask`` (float64, whole image)."""
    phase = np.asarray(phase, dtype=np.float64)
    return phase - fit_phase_ramp(phase, mask)


def mean_phase_slope(z: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Mean phase gradient of complex ``z`` inside ``mask`` (rad/px along rows, cols), from
    neighbour phase differences, so wrapping does not bias it however steep the ramp."""
    unit = z / np.maximum(np.abs(z), 1e-30)
    both_r = mask[1:, :] & mask[:-1, :]
    both_c = mask[:, 1:] & mask[:, :-1]
    slope_r = float(np.angle(np.sum((unit[1:, :] * np.conj(unit[:-1, :]))[both_r]))) if both_r.any() else 0.0
    slope_c = float(np.angle(np.sum((unit[:, 1:] * np.conj(unit[:, :-1]))[both_c]))) if both_c.any() else 0.0
    return slope_r, slope_c


def _unwrapped_difference(recon: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Phase of ``recon * conj(truth)`` with its mean gradient and offset taken out before wrapping.

    The ramp is estimated from neighbour phase differences (immune to wrapping), so large
    ramps or offsets near pi do not wrap the residual.
    """
    d = recon.astype(np.complex128) * np.conj(truth.astype(np.complex128))
    slope_r, slope_c = mean_phase_slope(d, mask)
    rr, cc = _grid(d.shape)
    d = d / np.maximum(np.abs(d), 1e-30) * np.exp(-1j * (slope_r * rr + slope_c * cc))
    d = d * np.exp(-1j * np.angle(np.sum(d[mask])))
    return np.angle(d)


def phase_nrmse(recon_obj: np.ndarray, true_obj: np.ndarray, mask: np.ndarray) -> float:
    """RMS phase error inside ``mask`` after offset and linear-ramp removal, over the true phase range there.

    The true phase range is ``max - min`` of the true object's phase (ramp-free) inside the mask.
    """
    recon_obj = np.asarray(recon_obj)
    true_obj = np.asarray(true_obj)
    if recon_obj.shape != true_obj.shape or recon_obj.ndim != 2:
        raise BadInputError(
            f"recon_obj and true_obj must be 2D of one shape, got {recon_obj.shape!r} and {true_obj.shape!r}"
        )
    mask = _check_mask(mask, true_obj.shape)
    if not np.all(np.isfinite(recon_obj[mask])):
        raise BadInputError("recon_obj has NaN or inf inside the mask")
    residual = remove_phase_ramp(_unwrapped_difference(recon_obj, true_obj, mask), mask)
    true_phase = np.angle(true_obj.astype(np.complex128) * np.exp(-1j * np.angle(np.sum(true_obj[mask]))))
    span = float(np.ptp(true_phase[mask]))
    if span <= 0:
        raise BadInputError("true_obj has a flat phase inside the mask; its phase range is zero")
    return float(np.sqrt(np.mean(residual[mask] ** 2)) / span)


def scanned_mask(
    object_shape: tuple[int, int], positions: np.ndarray, probe_n: int, *, radius_px: float | None = None
) -> np.ndarray:
    """Pixels within ``radius_px`` of a scan position: the area the probe has illuminated.

    Pass ``radius_px = probe_diameter(probe) / 2``: pixels farther than the probe's radius
    from every position are never illuminated, their phase is unconstrained by the data and
    stays at the start guess, so scoring them measures the truth, not the solver (a 22 px
    probe in a 64 px window: phase NRMSE 0.083 within 16 px, 0.012 within 11 px, the same
    reconstruction). Without ``radius_px``, ``probe_n / 4``: right only for a probe whose
    aperture spans half its window.
    """
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2 or len(pos) == 0:
        raise BadInputError(f"positions must be (N, 2) with N >= 1, got shape {pos.shape!r}")
    radius = probe_n / 4.0 if radius_px is None else float(radius_px)
    if not radius > 0:
        raise BadInputError(f"radius_px must be > 0, got {radius_px!r}")
    rr, cc = _grid(tuple(object_shape[:2]))
    dist, _ = cKDTree(pos).query(np.stack([rr.ravel(), cc.ravel()], axis=1), k=1)
    return (dist <= radius).reshape(object_shape[:2])


def illuminated_mask(object_shape: tuple[int, int], positions: np.ndarray, probe: np.ndarray) -> np.ndarray:
    """:func:`scanned_mask` with the radius of ``probe`` (n, n) or (modes, n, n): its :func:`probe_diameter` / 2."""
    n = int(np.asarray(probe).shape[-1])
    return scanned_mask(object_shape, positions, n, radius_px=probe_diameter(probe) / 2.0)


def probe_diameter(probe: np.ndarray) -> float:
    """Diameter of the uniform disc with the probe intensity's second moment, ``2 * sqrt(2 <r^2>)``, px."""
    p = np.asarray(probe)
    inten = np.sum(np.abs(p.reshape(-1, *p.shape[-2:])) ** 2, axis=0).astype(np.float64)
    total = inten.sum()
    if total <= 0:
        raise BadInputError("probe is zero everywhere")
    rr, cc = _grid(inten.shape)
    r0, c0 = (inten * rr).sum() / total, (inten * cc).sum() / total
    second = (inten * ((rr - r0) ** 2 + (cc - c0) ** 2)).sum() / total
    return float(2.0 * np.sqrt(2.0 * second))


def probe_overlap(positions: np.ndarray, probe: np.ndarray) -> float:
    """Linear overlap ``1 - d / D``: d the median nearest-neighbour step, D :func:`probe_diameter`.

    1 means every position repeats its neighbour, 0 means discs just touch, < 0 means gaps.
    """
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2 or len(pos) < 2:
        raise BadInputError(f"positions must be (N, 2) with N >= 2, got shape {pos.shape!r}")
    dist, _ = cKDTree(pos).query(pos, k=2)
    return float(1.0 - np.median(dist[:, 1]) / probe_diameter(probe))
