"""Quality numbers and alerts: PSNR, SNR/CNR, ring severity, edge sharpness, thresholds.

Every metric reads a bounded number of slices, so it costs the same on any volume size;
:func:`qc_metrics` gathers them (JSON-able, for the scan's metadata) and :func:`qc_alerts`
turns those beyond :class:`QCThresholds` into sentences a scientist can act on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage, sparse
from skimage.filters import threshold_multiotsu

from .errors import BadInputError
from .validation import check_finite


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
        raise BadInputError(f"image has shape {image.shape!r} but reference has {reference.shape!r}; they must match.")
    if mask is not None:
        image, reference = image[mask], reference[mask]
    if fit:
        design = np.stack([image.ravel(), np.ones(image.size)], axis=1)
        coef, *_ = np.linalg.lstsq(design, reference.ravel(), rcond=None)
        image = coef[0] * image + coef[1]
    mse = np.mean((image - reference) ** 2)
    peak = np.ptp(reference)
    return float(10.0 * np.log10(peak**2 / mse)) if mse > 0 else float("inf")


@dataclass(frozen=True)
class QCThresholds:
    """Limits beyond which :func:`qc_alerts` raises an alert; override any in config.

    Attributes
    ----------
    min_snr : float
        Mean over noise of the solid matrix (label 1).
    min_cnr : float
        Pore/solid contrast over their pooled noise; below ~3 phases overlap.
    max_ring_severity : float
        Ring amplitude (RMS) as a fraction of the grey range.
    max_edge_width : float
        10-90% width of pore/solid edges, pixels.
    min_center_confidence : float
        Confidence (0..1) of the rotation-centre search.
    """

    min_snr: float = 5.0
    min_cnr: float = 3.0
    max_ring_severity: float = 0.005
    max_edge_width: float = 3.0
    min_center_confidence: float = 0.5

    @classmethod
    def from_mapping(cls, values: Mapping[str, float]) -> QCThresholds:
        """Defaults overridden by ``values`` (e.g. a config section); unknown keys are an error."""
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise BadInputError(f"QC thresholds: unknown keys {unknown!r}; known: {[f.name for f in fields(cls)]!r}")
        return cls(**{k: float(v) for k, v in values.items()})


def _check_volume(volume: Any) -> Any:
    shape = getattr(volume, "shape", None)
    if shape is None or len(shape) != 3 or shape[1] < 16 or shape[2] < 16:
        raise BadInputError(f"volume: expected a 3D array (n_slices, ny, nx) with ny, nx >= 16, got shape {shape!r}")
    return volume


def sampled_slices(n_slices: int, max_slices: int = 8) -> list[int]:
    """The slices QC reads from a volume of ``n_slices``: up to ``max_slices``, evenly spaced."""
    return [int(z) for z in np.unique(np.linspace(0, n_slices - 1, min(n_slices, max_slices)).round().astype(int))]


def _sampled(volume: Any, labels: Any, max_slices: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Up to ``max_slices`` evenly spaced slices (float32, as reconstructions are) and their labels."""
    index = sampled_slices(volume.shape[0], max_slices)
    images = np.stack([np.asarray(volume[z], dtype=np.float32) for z in index])
    check_finite(images, "volume")
    if labels is None:
        return images, None
    if tuple(labels.shape) != tuple(volume.shape):
        raise BadInputError(f"labels has shape {tuple(labels.shape)!r} but volume has {tuple(volume.shape)!r}")
    return images, np.stack([np.asarray(labels[z]) for z in index])


def _otsu_labels(images: np.ndarray, n_phases: int) -> np.ndarray:
    """Phase labels by multi-Otsu thresholds of smoothed slices, for unlabelled volumes."""
    smooth = ndimage.gaussian_filter(images, (0, 1.5, 1.5))
    inside = circle_mask(images.shape[1:], 1.0)
    return np.digitize(smooth, threshold_multiotsu(smooth[:, inside], classes=n_phases)).astype(np.uint8)


class PhaseStats(NamedTuple):
    """Grey-value mean and standard deviation of one phase's voxels, and how many there are."""

    mean: float
    std: float
    voxels: int


def _phase_stats(images: np.ndarray, labels: np.ndarray, erode: int = 2) -> dict[int, PhaseStats]:
    """Mean, std and count of each label's voxels away from edges (in-plane erosion)."""
    inside = circle_mask(images.shape[1:], 0.95)
    structure = np.zeros((1, 3, 3), dtype=bool)
    structure[0] = ndimage.generate_binary_structure(2, 1)
    stats: dict[int, PhaseStats] = {}
    for k in np.flatnonzero(np.bincount(labels.ravel())):
        core = ndimage.binary_erosion(labels == k, structure, iterations=erode) & inside
        if core.sum() >= 50:
            values = images[core]
            stats[int(k)] = PhaseStats(
                float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64)), int(core.sum())
            )
    return stats


def snr_cnr(volume: Any, labels: Any = None, *, n_phases: int = 3, max_slices: int = 8) -> dict[str, Any]:
    """Signal- and contrast-to-noise ratios of a reconstructed volume.

    Each phase's mean and standard deviation are taken over its voxels at least 2 pixels
    from any other phase, inside the reconstruction circle. ``snr`` is the solid's (label
    1) mean over its standard deviation (grey values where empty space is ~0, as
    reconstructions give); ``cnr`` is the pore/solid difference over their pooled standard
    deviation; ``cnr_pairs`` has every pair of consecutive phases. Without ``labels`` the
    phases are ``n_phases`` multi-Otsu classes of the smoothed slices (an estimate).

    Returns
    -------
    dict
        ``snr``, ``cnr``, ``cnr_pairs``, ``noise_sigma`` (the solid's), ``phase_means``,
        ``phases_from`` (``"labels"`` or ``"otsu"``); NaN where a phase is missing.
    """
    volume = _check_volume(volume)
    images, labs = _sampled(volume, labels, max_slices)
    source = "labels" if labs is not None else "otsu"
    return _snr_cnr(_phase_stats(images, labs if labs is not None else _otsu_labels(images, n_phases)), source)


def _snr_cnr(stats: dict[int, PhaseStats], source: str) -> dict[str, Any]:
    """:func:`snr_cnr`'s numbers from :func:`_phase_stats`."""
    nan = float("nan")
    mean = {k: s.mean for k, s in stats.items()}
    std = {k: s.std for k, s in stats.items()}
    pairs = {f"{a}/{b}": _cnr(mean[a], mean[b], std[a], std[b]) for a, b in zip(sorted(stats), sorted(stats)[1:])}
    return {
        "snr": abs(mean[1]) / std[1] if 1 in stats and std[1] > 0 else nan,
        "cnr": pairs.get("0/1", nan),
        "cnr_pairs": pairs,
        "noise_sigma": std.get(1, nan),
        "phase_means": {str(k): v for k, v in mean.items()},
        "phases_from": source,
    }


def _cnr(mean_a: float, mean_b: float, std_a: float, std_b: float) -> float:
    pooled = np.sqrt((std_a**2 + std_b**2) / 2.0)
    return float(abs(mean_b - mean_a) / pooled) if pooled > 0 else float("inf")


def ring_severity(volume: Any, *, max_slices: int = 8, sectors: int = 8, width: int = 5) -> float:
    """Ring-artefact amplitude as a fraction of the grey range (~0.001 for none).

    Each slice is resampled on polar coordinates about its centre (the rotation axis in
    tomolive's reconstructions) and averaged over each of ``sectors`` angular sectors; each
    sector's radial profile less its running median over ``width`` radii keeps narrow
    radial features. A ring is the same in every sector, structure and noise are not, so
    the mean product of different sectors' residuals estimates the squared ring amplitude
    without their bias. Radii where the profile has a steep trend (e.g. the edge of a
    cylindrical sample centred on the axis) are skipped. The root of the mean over radii
    and slices is divided by the grey range (0.5-99.5 percentiles inside the circle).
    """
    images, _ = _sampled(_check_volume(volume), None, max_slices)
    lo, hi = np.percentile(images[:, circle_mask(images.shape[1:], 1.0)], [0.5, 99.5])
    if not hi > lo:
        return 0.0
    power = []
    for profiles in _sector_profiles(images, sectors):
        residual = profiles - ndimage.median_filter(profiles, size=(width, 1), mode="nearest")
        cross = (residual.sum(axis=1) ** 2 - (residual**2).sum(axis=1)) / (sectors * (sectors - 1))
        trend = ndimage.median_filter(profiles.mean(axis=1), size=width, mode="nearest")
        steep = ndimage.binary_dilation(np.abs(np.gradient(trend)) > 0.03 * (hi - lo), iterations=2)
        if not steep.all():
            power.append(np.mean(cross[~steep]))
    return float(np.sqrt(max(np.mean(power), 0.0)) / (hi - lo)) if power else 0.0


def _sector_profiles(images: np.ndarray, sectors: int) -> np.ndarray:
    """``(n_images, n_radii, sectors)``: each image's mean over each angular sector at radii
    ``4, 5, ...`` pixels about its centre, bilinearly interpolated.

    The same numbers as ``scipy.ndimage.map_coordinates(order=1)`` on the polar grid then
    the sector means (to float32 rounding), as sparse matrices of 4 corner weights per
    sample point applied to every image at once, which is faster (docs/measurements/kernels.md).
    The matrices are built for ~1M sample points at a time (~30 MB), beside one transposed
    copy of the images.
    """
    n_images, ny, nx = images.shape
    radii = np.arange(4, min(ny, nx) // 2 - 2, dtype=float)
    per_sector = max(8, int(2 * np.pi * radii[-1]) // sectors)
    theta = np.linspace(0, 2 * np.pi, sectors * per_sector, endpoint=False)
    pixels = np.ascontiguousarray(images.reshape(n_images, -1).T)
    out = np.empty((n_images, len(radii), sectors), dtype=np.float32)
    step = max(1, 2**20 // len(theta))
    for first in range(0, len(radii), step):
        chunk = radii[first : first + step]
        y = (ny - 1) / 2.0 + chunk[:, None] * np.sin(theta)
        x = (nx - 1) / 2.0 + chunk[:, None] * np.cos(theta)
        y0, x0 = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
        wy, wx = (y - y0).astype(np.float32), (x - x0).astype(np.float32)
        columns, weights = [], []
        for dy in (0, 1):
            for dx in (0, 1):
                yy, xx = y0 + dy, x0 + dx
                inside = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)  # outside reads 0, as in map_coordinates
                columns.append((np.clip(yy, 0, ny - 1) * nx + np.clip(xx, 0, nx - 1)).astype(np.int32))
                weights.append((wy if dy else 1 - wy) * (wx if dx else 1 - wx) * inside / np.float32(per_sector))
        # row r * sectors + s holds 4 weights for each of its sector's angles: a contiguous run
        operator = sparse.csr_matrix(
            (
                np.stack(weights, axis=-1).ravel(),
                np.stack(columns, axis=-1).ravel(),
                np.arange(0, 4 * y.size + 1, 4 * per_sector),
            ),
            shape=(len(chunk) * sectors, ny * nx),
        )
        out[:, first : first + len(chunk)] = (operator @ pixels).T.reshape(n_images, len(chunk), sectors)
    return out


def edge_width(volume: Any, labels: Any = None, *, n_phases: int = 3, max_slices: int = 8, sigma: float = 1.0) -> float:
    """10-90% width (pixels) of pore/solid edges, from their steepest grey-value gradient.

    For a step of height ``d`` blurred by a Gaussian of width ``s``, the gradient (taken
    with a Gaussian derivative of ``sigma``) peaks at ``d / sqrt(2 pi (s^2 + sigma^2))``
    and the 10-90% width is ``2.563 s``. ``d`` is the pore/solid mean difference, the
    peak is the median over edge pixels of the local maximum of the gradient. Without
    ``labels`` the phases are ``n_phases`` multi-Otsu classes (an estimate). NaN without
    both phases. Noise steepens gradients, so very noisy volumes read sharper than they are.
    """
    volume = _check_volume(volume)
    images, labs = _sampled(volume, labels, max_slices)
    labs = labs if labs is not None else _otsu_labels(images, n_phases)
    return _edge_width(images, labs, _phase_stats(images, labs), sigma)


def _edge_width(images: np.ndarray, labs: np.ndarray, stats: dict[int, PhaseStats], sigma: float) -> float:
    """:func:`edge_width` of sampled slices, their labels and :func:`_phase_stats`."""
    if 0 not in stats or 1 not in stats:
        return float("nan")
    step = abs(stats[1].mean - stats[0].mean)
    gradient = np.stack([ndimage.gaussian_gradient_magnitude(image, sigma) for image in images])
    peaks = ndimage.maximum_filter(gradient, size=(1, 3, 3))
    pore, solid = labs == 0, labs == 1
    structure = np.zeros((1, 3, 3), dtype=bool)
    structure[0] = ndimage.generate_binary_structure(2, 1)
    edges = solid & ndimage.binary_dilation(pore, structure) & circle_mask(images.shape[1:], 0.95)
    if not edges.any():
        return float("nan")
    total = step / (np.sqrt(2 * np.pi) * float(np.median(peaks[edges])))
    return float(2.563 * np.sqrt(max(total**2 - sigma**2, 0.0)))


def qc_metrics(
    volume: Any,
    labels: Any = None,
    *,
    n_phases: int = 3,
    center_confidence: float | None = None,
    max_slices: int = 8,
) -> dict[str, Any]:
    """Every QC number of a reconstructed (or denoised) volume, JSON-able.

    Parameters
    ----------
    volume : array-like
        ``(n_slices, ny, nx)`` grey values (numpy, Zarr or Tiled array); ``max_slices``
        evenly spaced slices are read.
    labels : array-like, optional
        Its segmentation (same shape); without it, ``n_phases`` phases are estimated by
        multi-Otsu.
    center_confidence : float, optional
        ``CenterResult.confidence`` of the rotation-centre search, passed through.

    Returns
    -------
    dict
        ``snr``, ``cnr``, ``cnr_pairs``, ``noise_sigma``, ``phase_means``, ``phases_from``
        (:func:`snr_cnr`), ``ring_severity``, ``edge_width_px``, ``center_confidence``,
        ``slices_used``; 5 significant digits, None where a number is undefined.
    """
    # Read the sampled slices, estimate their phases and measure each phase once: each read
    # of a stored volume decompresses a whole chunk of rows, and each phase's erosion is a
    # pass over every sampled voxel.
    images, labs = _sampled(_check_volume(volume), labels, max_slices)
    source = "labels" if labs is not None else "otsu"
    labs = labs if labs is not None else _otsu_labels(images, n_phases)
    n = len(images)
    stats = _phase_stats(images, labs)
    metrics = _snr_cnr(stats, source)
    metrics["ring_severity"] = ring_severity(images, max_slices=n)
    metrics["edge_width_px"] = _edge_width(images, labs, stats, sigma=1.0)
    metrics["center_confidence"] = None if center_confidence is None else float(center_confidence)
    metrics["slices_used"] = n
    return {k: _rounded(v) for k, v in metrics.items()}


def _rounded(value: Any) -> Any:
    """5 significant digits; NaN/inf become None (valid JSON for Tiled metadata)."""
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, float):
        return float(f"{value:.5g}") if np.isfinite(value) else None
    return value


def qc_alerts(metrics: Mapping[str, Any], thresholds: QCThresholds | None = None) -> list[str]:
    """Human-readable alerts for the metrics beyond ``thresholds`` (missing or NaN ones are skipped).

    Examples
    --------
    >>> qc_alerts({"snr": 2.0, "ring_severity": 0.001})
    ['low signal-to-noise ratio: SNR 2 < 5 (min_snr); raise the dose or exposure, or denoise']
    """
    t = thresholds or QCThresholds()
    checks = [
        (
            "snr",
            "min_snr",
            lambda v, lim: v < lim,
            "low signal-to-noise ratio: SNR {v:.3g} < {lim:g} (min_snr); raise the dose or exposure, or denoise",
        ),
        (
            "cnr",
            "min_cnr",
            lambda v, lim: v < lim,
            "low pore/solid contrast-to-noise ratio: CNR {v:.3g} < {lim:g} (min_cnr); phases will be hard to separate",
        ),
        (
            "ring_severity",
            "max_ring_severity",
            lambda v, lim: v > lim,
            "ring artefacts: severity {v:.2g} > {lim:g} (max_ring_severity); use a stronger stripe removal "
            "(stripe_method='sort' or 'combined'; the default 'mean' takes out only full-height stripes)",
        ),
        (
            "edge_width_px",
            "max_edge_width",
            lambda v, lim: v > lim,
            "blurred edges: 10-90% width {v:.1f} px > {lim:g} px (max_edge_width); check the rotation centre, "
            "sample motion or focus",
        ),
        (
            "center_confidence",
            "min_center_confidence",
            lambda v, lim: v < lim,
            "uncertain rotation centre: confidence {v:.2f} < {lim:g} (min_center_confidence); check it or give "
            "the centre explicitly",
        ),
    ]
    alerts = []
    for key, limit_name, beyond, message in checks:
        value, limit = metrics.get(key), getattr(t, limit_name)
        if isinstance(value, (int, float)) and np.isfinite(value) and beyond(float(value), limit):
            alerts.append(message.format(v=float(value), lim=limit))
    return alerts
