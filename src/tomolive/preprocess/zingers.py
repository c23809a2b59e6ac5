"""Zinger (outlier) removal and NaN/inf repair for projection stacks.

Zingers are single bright pixels from direct hits of scattered X-rays or cosmic rays on
the detector; they turn into short streaks after reconstruction. They are found by
comparing each frame with its median-filtered self and replacing pixels that differ by
more than a threshold. Non-finite pixels (NaN/inf from saturated or dead pixels after a
division) are replaced by the median of their finite neighbours.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.ndimage as ndi
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import BadInputError
from ..validation import as_float32, check_size

__all__ = ["remove_zingers", "replace_nonfinite"]

SIGNS = ("positive", "negative", "both")
NONFINITE_MODES = ("median", "value")


def remove_zingers(
    projections: np.ndarray,
    threshold: float,
    *,
    size: int = 3,
    relative: bool = False,
    sign: Literal["positive", "negative", "both"] = "positive",
) -> np.ndarray:
    """Replace outlier pixels by the median of their neighbourhood, frame by frame.

    A pixel is an outlier when ``value - median`` exceeds ``threshold`` (``sign="positive"``,
    bright zingers), ``median - value`` exceeds it (``"negative"``) or either does
    (``"both"``); the median is taken over a ``size x size`` window in the same frame.

    Parameters
    ----------
    projections : ndarray
        One frame (rows, cols) or a stack (n, rows, cols); raw counts or normalised
        values; never modified.
    threshold : float
        Minimum deviation from the local median that marks an outlier, > 0: in the
        units of ``projections`` when ``relative`` is False, else as a fraction of the
        local median's magnitude (e.g. ``0.2`` = 20 %).
    size : int
        Width of the median window in pixels, >= 3 (default 3).
    relative : bool
        Interpret ``threshold`` relative to ``|median|`` (useful on raw counts).
    sign : {"positive", "negative", "both"}
        Which deviations count as outliers; zingers are bright, hence the default.

    Returns
    -------
    ndarray
        float32 array of the same shape with outliers replaced.

    Raises
    ------
    BadInputError
        Wrong dimensionality, non-finite values, or invalid options.

    Examples
    --------
    >>> import numpy as np
    >>> frame = np.ones((5, 5), dtype=np.float32)
    >>> frame[2, 2] = 50.0
    >>> float(remove_zingers(frame, threshold=1.0)[2, 2])
    1.0
    """
    arr = as_float32(projections, "projections", (2, 3), "(rows, cols) or (n, rows, cols)")
    if not np.isfinite(threshold) or threshold <= 0:
        raise BadInputError(f"threshold must be a finite number > 0; got {threshold!r}.")
    size = check_size(size)
    if sign not in SIGNS:
        raise BadInputError(f"sign must be one of {SIGNS!r}; got {sign!r}.")
    window = (size, size) if arr.ndim == 2 else (1, size, size)
    median = ndi.median_filter(arr, size=window, mode="reflect")
    diff = arr - median
    limit = threshold * np.abs(median) if relative else np.float32(threshold)
    if sign == "positive":
        mask = diff > limit
    elif sign == "negative":
        mask = -diff > limit
    else:
        mask = np.abs(diff) > limit
    return np.where(mask, median, arr).astype(np.float32, copy=False)


def replace_nonfinite(
    projections: np.ndarray,
    *,
    mode: Literal["median", "value"] = "median",
    value: float = 0.0,
    size: int = 3,
) -> np.ndarray:
    """Replace NaN and +/-inf pixels, frame by frame.

    Parameters
    ----------
    projections : ndarray
        One frame (rows, cols) or a stack (n, rows, cols); never modified.
    mode : {"median", "value"}
        ``"median"`` (default): the median of the finite pixels in a ``size x size``
        window around each bad pixel in the same frame (``value`` where none is finite);
        ``"value"``: the constant ``value``.
    value : float
        Fill value for ``mode="value"`` and the fallback for ``"median"``.
    size : int
        Window width for ``mode="median"``, odd, >= 3.

    Returns
    -------
    ndarray
        float32 copy with every pixel finite.

    Raises
    ------
    BadInputError
        Wrong dimensionality, a non-finite ``value`` or an invalid mode.

    Examples
    --------
    >>> import numpy as np
    >>> frame = np.arange(9, dtype=np.float32).reshape(3, 3)
    >>> frame[1, 1] = np.nan
    >>> float(replace_nonfinite(frame)[1, 1])
    4.0
    """
    arr = as_float32(
        projections,
        "projections",
        (2, 3),
        "(rows, cols) or (n, rows, cols)",
        finite=False,
        copy=True,
    )
    if mode not in NONFINITE_MODES:
        raise BadInputError(f"mode must be one of {NONFINITE_MODES!r}; got {mode!r}.")
    if not np.isfinite(value):
        raise BadInputError(f"value must be finite; got {value!r}.")
    size = check_size(size, odd=True)
    bad = ~np.isfinite(arr)
    if not bad.any():
        return arr
    if mode == "value":
        arr[bad] = value
        return arr
    stack = arr if arr.ndim == 3 else arr[np.newaxis]
    bad3 = bad if arr.ndim == 3 else bad[np.newaxis]
    h = size // 2
    padded = np.pad(np.where(bad3, np.nan, stack), ((0, 0), (h, h), (h, h)), constant_values=np.nan)
    windows = sliding_window_view(padded, (size, size), axis=(1, 2))
    k, r, c = np.nonzero(bad3)
    neighbourhoods = windows[k, r, c].reshape(len(k), -1)
    finite_count = np.count_nonzero(np.isfinite(neighbourhoods), axis=1)
    fill = np.full(len(k), value, dtype=np.float32)
    ok = finite_count > 0
    if ok.any():
        fill[ok] = np.nanmedian(neighbourhoods[ok], axis=1)
    stack[k, r, c] = fill
    return arr
