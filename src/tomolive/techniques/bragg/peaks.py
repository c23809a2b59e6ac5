"""Peak finding on one detector frame and the patches around each peak.

:func:`find_peaks` thresholds the frame above its background (the median) and keeps the
connected components of at least ``min_pixels`` pixels; each peak's integer centre is its
brightest pixel. :func:`extract_patches` cuts a ``size`` x ``size`` patch around each centre.
A peak whose patch would cross the detector edge is SKIPPED and counted, never padded: a
padded patch has no counts where the peak's tail should be, which biases both the fit and
the network. :func:`split_edge` says which centres are at the edge.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ...errors import BadInputError

PATCH_SIZE = 11


def check_frame(frame: np.ndarray, name: str = "frame") -> np.ndarray:
    """``frame`` as float64 after checking it is a finite 2-D image.

    Raises
    ------
    BadInputError
        Not 2-D, or holding NaN or infinite values.
    """
    frame = np.asarray(frame)
    if frame.ndim != 2 or min(frame.shape) < 1:
        raise BadInputError(f"{name} has shape {frame.shape!r}; expected a 2-D detector image (rows, columns).")
    frame = frame.astype(np.float64, copy=False)
    if not np.isfinite(frame).all():
        bad = int(np.size(frame) - np.isfinite(frame).sum())
        raise BadInputError(f"{name} holds {bad} NaN or infinite pixels; expected finite counts.")
    return frame


def find_peaks(frame: np.ndarray, threshold: float, min_pixels: int = 4) -> np.ndarray:
    """Integer ``(row, col)`` centres of the peaks in ``frame``, shape (P, 2), brightest first.

    Parameters
    ----------
    frame : 2-D array
        Detector counts.
    threshold : float
        Counts above the frame's median (its background) a pixel needs to belong to a peak.
    min_pixels : int
        Smallest connected component (8-connected) kept as a peak; smaller ones are noise.

    Raises
    ------
    BadInputError
        A frame that is not a finite 2-D image, or a threshold/min_pixels out of range.
    """
    frame = check_frame(frame)
    if not np.isfinite(threshold) or threshold <= 0:
        raise BadInputError(f"threshold must be a positive number of counts; got {threshold!r}.")
    if min_pixels < 1:
        raise BadInputError(f"min_pixels must be >= 1; got {min_pixels!r}.")
    mask = frame > np.median(frame) + threshold
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return np.zeros((0, 2), dtype=np.int64)
    index = np.arange(1, n + 1)
    sizes = ndimage.sum_labels(mask, labels, index)
    keep = index[sizes >= min_pixels]
    if len(keep) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    centres = np.array(ndimage.maximum_position(frame, labels, keep), dtype=np.int64).reshape(-1, 2)
    order = np.argsort(-frame[centres[:, 0], centres[:, 1]], kind="stable")
    return centres[order]


def split_edge(centres: np.ndarray, frame_shape: tuple[int, ...], size: int = PATCH_SIZE) -> np.ndarray:
    """A boolean mask: True where a ``size`` patch around the centre lies inside the frame."""
    centres = np.asarray(centres, dtype=np.int64).reshape(-1, 2)
    half = size // 2
    rows, cols = frame_shape[0], frame_shape[1]
    return (
        (centres[:, 0] >= half)
        & (centres[:, 1] >= half)
        & (centres[:, 0] < rows - half)
        & (centres[:, 1] < cols - half)
    )


def extract_patches(frame: np.ndarray, centres: np.ndarray, size: int = PATCH_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Patches of ``size`` x ``size`` pixels centred on ``centres`` (all inside the frame).

    Returns ``(patches (P, size, size) float32, origins (P, 2) int64)``: a peak at patch
    coordinates ``(r, c)`` is at ``origin + (r, c)`` on the detector.

    Raises
    ------
    BadInputError
        An even ``size``, or a centre whose patch crosses the edge (drop those with
        :func:`split_edge` first; the technique counts them).
    """
    if size < 3 or size % 2 == 0:
        raise BadInputError(f"patch size must be odd and >= 3; got {size!r}.")
    frame = np.asarray(frame)
    centres = np.asarray(centres, dtype=np.int64).reshape(-1, 2)
    inside = split_edge(centres, frame.shape, size)
    if not inside.all():
        raise BadInputError(
            f"{int((~inside).sum())} centres (first {centres[~inside][0].tolist()!r}) are within {size // 2} px of "
            f"the edge of a {frame.shape!r} frame; their {size}x{size} patches would cross it."
        )
    origins = centres - size // 2
    index = np.arange(size)
    rows = (origins[:, 0, None] + index)[:, :, None]
    cols = (origins[:, 1, None] + index)[:, None, :]
    return np.ascontiguousarray(frame[rows, cols], dtype=np.float32), origins
