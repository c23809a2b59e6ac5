"""Flat/dark normalisation and the negative logarithm.

Transmission is ``(projection - dark) / (flat - dark)``; the line integral the
reconstruction wants is ``-log(transmission)``. Both are clipped at a small floor so dead
or saturated pixels give finite numbers instead of inf/NaN.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ..errors import BadInputError
from ..validation import check_finite

REDUCTIONS = ("median", "mean")


def reduce_frames(
    frames: np.ndarray, method: Literal["median", "mean"] = "median", *, name: str = "frames"
) -> np.ndarray:
    """Combine a stack of dark or flat frames (n, rows, cols) into one float32 image.

    The median (default) rejects zingers and beam flickers that hit single frames.
    """
    frames = np.asarray(frames)
    if frames.ndim == 2:
        frames = frames[np.newaxis]
    if frames.ndim != 3 or frames.shape[0] == 0:
        raise BadInputError(
            f"{name} must be a non-empty stack of 2D frames (n, rows, cols); got shape {frames.shape!r}."
        )
    if method not in REDUCTIONS:
        raise BadInputError(f"method must be one of {REDUCTIONS!r}; got {method!r}.")
    check_finite(frames, name)
    reduce = np.median if method == "median" else np.mean
    return reduce(frames.astype(np.float32, copy=False), axis=0).astype(np.float32)


def normalize(
    projections: np.ndarray,
    flat: np.ndarray,
    dark: np.ndarray,
    *,
    minus_log: bool = True,
    floor: float = 1e-6,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Flat/dark-correct one frame (rows, cols) or a stack (n, rows, cols).

    Parameters
    ----------
    projections : ndarray
        Raw detector counts, any real dtype; never modified.
    flat, dark : ndarray
        Reduced flat and dark images (rows, cols), e.g. from :func:`reduce_frames`.
    minus_log : bool
        Return ``-log(transmission)`` (line integrals, default) or the transmission.
    floor : float
        Lower clip for ``flat - dark`` and for the transmission.
    out : ndarray, optional
        float32 array to write into.

    Returns
    -------
    ndarray
        float32, same shape as ``projections``.

    Raises
    ------
    BadInputError
        Shapes differ or a frame holds NaN/inf.

    Examples
    --------
    >>> import numpy as np
    >>> flat, dark = np.full((2, 2), 110.0), np.full((2, 2), 10.0)
    >>> float(normalize(np.full((2, 2), 60.0), flat, dark, minus_log=False)[0, 0])
    0.5
    """
    projections = np.asarray(projections)
    frame_shape = projections.shape[-2:]
    for name, image in (("flat", flat), ("dark", dark)):
        if np.shape(image) != frame_shape:
            raise BadInputError(
                f"{name} has shape {np.shape(image)!r} but projections have frames of shape "
                f"{frame_shape!r}; acquire {name}s with the same detector ROI and binning."
            )
    check_finite(projections, "projection")
    flat = np.asarray(flat, dtype=np.float32)  # unsigned counts would wrap in flat - dark
    dark = np.asarray(dark, dtype=np.float32)
    check_finite(flat, "flat")
    check_finite(dark, "dark")
    denominator = np.maximum(flat - dark, floor)
    result = np.subtract(projections, dark, out=out, dtype=np.float32)
    result /= denominator
    np.maximum(result, floor, out=result)
    if minus_log:
        np.log(result, out=result)
        np.negative(result, out=result)
    return result
