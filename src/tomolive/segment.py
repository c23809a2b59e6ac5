"""Classical phase segmentation and the numbers scientists read: no network, no torch.

Labels follow the house convention: 0 pore (and the air around the sample), 1 solid matrix,
2 dense inclusion (more phases: higher labels for denser material). Multi-Otsu thresholds
on lightly smoothed slices need no weights; the network method (:mod:`tomolive.ml.segmentation`)
reads volumes and scales intensities with the helpers here. Volumes are read a few slices at
a time, so Zarr and Tiled arrays work as well as numpy ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_multiotsu

from .errors import BadInputError
from .qc import circle_mask
from .validation import as_float32

PHASES = ("pore", "solid", "inclusion")
"""Names of labels 0, 1, 2."""
PERCENTILES = (0.5, 99.5)
"""Percentiles of :func:`intensity_range`, which :func:`normalize` maps to 0 and 1."""
RANGE_SIGMA = 2.0
"""Smoothing (pixels) of the slices :func:`intensity_range` takes percentiles of."""


def as_volume(volume: Any, name: str = "volume") -> tuple[Any, bool]:
    """``volume`` as a 3D array-like (a 2D slice gains an axis); whether it was 2D."""
    shape = getattr(volume, "shape", None)
    if shape is None:
        volume = np.asarray(volume)
        shape = volume.shape
    if len(shape) not in (2, 3) or min(shape) < 1 or shape[-2] < 8 or shape[-1] < 8:
        raise BadInputError(
            f"{name}: expected a 3D array (n_slices, ny, nx) with ny, nx >= 8, or one 2D slice; "
            f"got shape {tuple(shape)!r}"
        )
    if len(shape) == 2:
        return np.asarray(volume)[None], True
    return volume, False


def read_slab(volume: Any, start: int, stop: int) -> np.ndarray:
    """Slices ``[start, stop)`` as float32, checked finite (works on Zarr/Tiled arrays too)."""
    return as_float32(volume[start:stop], f"volume[{start}:{stop}]", (3,), "(n_slices, ny, nx)")


def _sampled_values(volume: Any, sigma: float, max_slices: int) -> np.ndarray:
    """Smoothed grey values inside the reconstruction circle of up to ``max_slices`` evenly spaced slices."""
    volume, _ = as_volume(volume)
    mask = circle_mask(volume.shape[1:], 1.0)
    n = volume.shape[0]
    slices = np.unique(np.linspace(0, n - 1, min(n, max_slices)).round().astype(int))
    return np.concatenate([smooth(read_slab(volume, z, z + 1), sigma)[0][mask] for z in slices])


def intensity_range(
    volume: Any,
    percentiles: tuple[float, float] = PERCENTILES,
    *,
    sigma: float = RANGE_SIGMA,
    max_slices: int = 32,
) -> tuple[float, float]:
    """Robust low/high grey values of a volume: percentiles inside the reconstruction circle.

    The percentiles are taken on slices smoothed in-plane by a Gaussian of ``sigma`` pixels,
    so they follow the phases' grey levels rather than the noise's tails (measured in
    ``docs/measurements/ml.md``). Reads at most ``max_slices`` evenly spaced slices
    (bounded memory on big volumes).

    Examples
    --------
    >>> vol = np.zeros((2, 64, 64), dtype=np.float32); vol[:, 16:48, 16:48] = 3.0
    >>> [round(v, 3) for v in intensity_range(vol)]
    [0.0, 3.0]
    """
    values = _sampled_values(volume, sigma, max_slices)
    lo, hi = np.percentile(values, percentiles)
    if not hi > lo:
        hi = lo + 1.0  # a flat volume: any scale will do
    return float(lo), float(hi)


def normalize(slab: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """Map ``value_range`` to [0, 1] linearly (float32; values outside are kept, not clipped)."""
    lo, hi = value_range
    return ((np.asarray(slab, dtype=np.float32) - np.float32(lo)) / np.float32(hi - lo)).astype(np.float32)


def stacks(slab: np.ndarray, context: int) -> np.ndarray:
    """2.5D network inputs ``(n, 2 * context + 1, H, W)`` from a padded slab ``(n + 2 * context, H, W)``."""
    n = slab.shape[0] - 2 * context
    return np.stack([slab[k : k + n] for k in range(2 * context + 1)], axis=1)


def padded_slab(volume: Any, start: int, stop: int, context: int) -> np.ndarray:
    """Slices ``[start - context, stop + context)``, edge slices repeated past the volume's ends."""
    n = volume.shape[0]
    lo, hi = max(0, start - context), min(n, stop + context)
    slab = read_slab(volume, lo, hi)
    return np.pad(slab, ((lo - (start - context), (stop + context) - hi), (0, 0), (0, 0)), mode="edge")


def otsu_thresholds(volume: Any, n_phases: int, *, sigma: float = 1.0, max_slices: int = 32) -> list[float]:
    """Multi-Otsu thresholds of ``n_phases`` classes from smoothed slices inside the circle."""
    values = _sampled_values(volume, sigma, max_slices)
    try:
        return [float(t) for t in threshold_multiotsu(values, classes=n_phases)]
    except ValueError as err:
        raise BadInputError(f"volume: cannot find {n_phases} grey-level classes ({err})") from err


def smooth(slab: np.ndarray, sigma: float) -> np.ndarray:
    """In-plane Gaussian smoothing of each slice (none for ``sigma == 0``)."""
    return ndimage.gaussian_filter(slab, (0, sigma, sigma)) if sigma > 0 else slab


def check_context(context: tuple[int, int], n: int) -> tuple[int, int]:
    """``(first, last)``: the slices of an ``n``-slice block that are labelled, not context only."""
    try:
        before, after = (int(c) for c in context)
    except (TypeError, ValueError) as err:
        raise BadInputError(f"context: expected two slice counts (before, after), got {context!r}") from err
    if before < 0 or after < 0 or before + after >= n:
        raise BadInputError(f"context: {context!r} leaves no slice to label in a volume of {n} slices")
    return before, n - after


def phase_names(n: int) -> tuple[str, ...]:
    """Names of labels ``0 .. n - 1``: :data:`PHASES`, then ``phase3``...."""
    return PHASES[:n] if n <= len(PHASES) else PHASES + tuple(f"phase{k}" for k in range(len(PHASES), n))


def slice_batches(first: int, last: int, size: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive batches of ``size`` slices in ``[first, last)``."""
    for start in range(first, last, size):
        yield start, min(last, start + size)


def segment_otsu(
    volume: Any, first: int, last: int, thresholds: list[float], sigma: float, batch_size: int
) -> np.ndarray:
    """Labels of slices ``[first, last)``: smoothed grey values binned by ``thresholds``."""
    out = np.empty((last - first, *volume.shape[1:]), dtype=np.uint8)
    for start, stop in slice_batches(first, last, batch_size):
        out[start - first : stop - first] = np.digitize(smooth(read_slab(volume, start, stop), sigma), thresholds)
    return out


def dice_scores(labels: np.ndarray, truth: np.ndarray, n_phases: int, mask: np.ndarray | None = None) -> list[float]:
    """Dice coefficient of each label 0..n_phases-1 (NaN where absent from both)."""
    labels, truth = np.asarray(labels), np.asarray(truth)
    if labels.shape != truth.shape:
        raise BadInputError(f"labels has shape {labels.shape!r} but truth has {truth.shape!r}; they must match")
    if mask is not None:
        labels, truth = labels[np.broadcast_to(mask, labels.shape)], truth[np.broadcast_to(mask, truth.shape)]
    scores = []
    for k in range(n_phases):
        a, b = labels == k, truth == k
        total = int(a.sum()) + int(b.sum())
        scores.append(2.0 * int((a & b).sum()) / total if total else float("nan"))
    return scores


def phase_statistics(
    labels: np.ndarray | Iterable[np.ndarray],
    n_phases: int = 3,
    *,
    min_pore_voxels: int = 8,
    phases: tuple[str, ...] | None = None,
    slices_per_block: int = 64,
) -> dict[str, Any]:
    """Phase volume fractions, porosity and connected-pore count of a label volume (JSON-able).

    The sample is, slice by slice, everything inside the outline of the non-pore labels
    (holes filled), so the air around it is not counted as porosity. Pores are 6-connected
    3D components of label 0 inside the sample; those under ``min_pore_voxels`` are noise.
    Works block by block (an array is cut into ``slices_per_block`` slabs; or pass an
    iterable of consecutive slabs, e.g. read from Tiled) with bounded memory.

    Returns
    -------
    dict
        ``phases``, ``sample_voxels``, ``volume_fractions`` (phase name -> fraction of the
        sample), ``porosity``, ``pore_count``, ``largest_pore_fraction`` (largest pore's
        share of the pore volume: 1 when all pores connect), ``min_pore_voxels``.

    Examples
    --------
    >>> lab = np.ones((4, 16, 16), np.uint8); lab[1:3, 4:6, 4:6] = 0; lab[1:3, 9:12, 9:12] = 0
    >>> stats = phase_statistics(lab, 2, min_pore_voxels=1)
    >>> stats["pore_count"], round(stats["porosity"], 4)
    (2, 0.0254)
    """
    names = tuple(phases or phase_names(n_phases))
    counts = np.zeros(n_phases, dtype=np.int64)
    pores = _PoreCounter()
    for block in _label_blocks(labels, slices_per_block):
        if block.size and int(block.max()) >= n_phases:
            raise BadInputError(f"labels: expected values 0..{n_phases - 1}, found {int(block.max())}")
        sample = np.stack([ndimage.binary_fill_holes(s > 0) for s in block]) if block.size else block.astype(bool)
        counts += np.bincount(block[sample], minlength=n_phases)[:n_phases]
        pores.add((block == 0) & sample)
    total = int(counts.sum())
    fractions = counts / total if total else np.zeros(n_phases)
    sizes = pores.sizes(min_pore_voxels)
    return {
        "phases": list(names),
        "sample_voxels": total,
        "volume_fractions": {name: round(float(f), 6) for name, f in zip(names, fractions)},
        "porosity": round(float(fractions[0]), 6),
        "pore_count": int(sizes.size),
        "largest_pore_fraction": round(float(sizes.max() / sizes.sum()), 6) if sizes.size else 0.0,
        "min_pore_voxels": int(min_pore_voxels),
    }


def _label_blocks(labels: np.ndarray | Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    if hasattr(labels, "shape") and hasattr(labels, "__getitem__"):
        if len(labels.shape) != 3:
            raise BadInputError(f"labels: expected a 3D label volume, got shape {tuple(labels.shape)!r}")
        for start in range(0, labels.shape[0], size):
            yield np.asarray(labels[start : start + size])
        return
    for block in labels:
        block = np.asarray(block)
        if block.ndim != 3:
            raise BadInputError(f"labels: expected 3D blocks (slices, ny, nx), got shape {block.shape!r}")
        yield block


class _PoreCounter:
    """Connected components across consecutive slabs: label each, join at shared faces."""

    def __init__(self) -> None:
        self._parent = np.zeros(0, dtype=np.int64)
        self._size = np.zeros(0, dtype=np.int64)
        self._last: np.ndarray | None = None

    def add(self, pore: np.ndarray) -> None:
        if not pore.size:
            return
        local, n = ndimage.label(pore)
        offset = self._parent.size
        self._parent = np.concatenate([self._parent, np.arange(offset, offset + n)])
        self._size = np.concatenate([self._size, np.bincount(local.ravel(), minlength=n + 1)[1:]])
        ids = np.where(local > 0, local - 1 + offset, -1)
        if self._last is not None and self._last.shape == ids.shape[1:]:
            touching = (self._last >= 0) & (ids[0] >= 0)
            for a, b in np.unique(np.stack([self._last[touching], ids[0][touching]], axis=1), axis=0):
                self._union(int(a), int(b))
        self._last = ids[-1]

    def _find(self, i: int) -> int:
        while self._parent[i] != i:
            self._parent[i] = self._parent[self._parent[i]]
            i = int(self._parent[i])
        return i

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self._parent[rb] = ra

    def sizes(self, min_voxels: int) -> np.ndarray:
        """Voxel counts of the joined pores of at least ``min_voxels``."""
        roots = np.array([self._find(i) for i in range(self._parent.size)], dtype=np.int64)
        sizes = np.bincount(roots, weights=self._size, minlength=self._parent.size).astype(np.int64)
        return sizes[sizes >= max(1, min_voxels)]
