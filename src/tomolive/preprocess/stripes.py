"""Stripe (ring artefact) removal in sinograms, after Vo, Atwood and Drakopoulos (2018).

A detector pixel that responds differently from its neighbours adds a vertical stripe to
every sinogram row it belongs to, and a ring to the reconstructed slice. Implemented here:

- :func:`remove_stripe_sorting` -- algorithm 3 of the paper: sort each column of the
  sinogram along the angles, median-filter the sorted image across columns, and sort back.
  Removes partial and full stripes of small to medium width.
- :func:`remove_large_stripes` -- algorithm 5 (large stripes, detected by algorithm 4).
- :func:`remove_dead_stripes` -- algorithm 6 (unresponsive and fluctuating stripes, filled
  by linear interpolation across columns).
- :func:`remove_all_stripes` -- the combined method (6, then 5, then 3), the default at
  SPring-8 and Diamond.
- :func:`remove_stripe_mean` -- each column's offset (its mean over angles less the median
  of its neighbours' means) subtracted: full, narrow stripes only, at the cost of two passes
  over the data (~1 % of a reconstruction; the others cost 1.5-8 reconstructions,
  docs/measurements/rings.md), so it is tomolive's default.
- :func:`remove_stripes` -- the dispatcher the pipeline calls.
- :func:`ring_metric` -- a number that measures stripes, for tests and quality control.

Reference: N. T. Vo, R. C. Atwood and M. Drakopoulos, "Superior techniques for eliminating
ring artifacts in X-ray micro-tomography", Opt. Express 26, 28396 (2018),
https://doi.org/10.1364/OE.26.028396.

Why not call algotom (``algotom.prep.removal``, Apache-2.0, maintained by the method's
author)? The algorithms are reimplemented here, following algotom 1.7.0 line by line so
that results agree to float precision (checked in ``tests/test_preprocess.py``), because:

- speed: algotom sorts row by row in a Python loop (``util.sort_forward``) and uses
  ``scipy.ndimage.median_filter``; here the sort is one vectorised ``argsort`` and the
  median across columns uses ``np.partition`` on a sliding window in cache-sized chunks
  (timings against algotom: docs/measurements/kernels.md).
- dependencies: importing ``algotom.prep.removal`` pulls ``algotom.util.utility``, which
  imports numba (``numba.cuda``), PyWavelets, joblib and algotom's loaders; a preprocessing
  stage that runs on every Dask worker should need only numpy and scipy.
- robustness: algotom's stripe detector raises ``ValueError`` on noise-free data; here a
  noise floor is used so simulated scans pass through unchanged instead of failing.
- licence: the algorithms are published; algotom's Apache-2.0 licence permits reuse with
  attribution, which this docstring gives. Maintenance stays low: ~200 lines of numpy.

Layouts: every function takes one sinogram ``(n_angles, n_cols)`` or a block of
projections ``(n_angles, n_rows, n_cols)`` (each row ``[:, r, :]`` is a sinogram) and
returns float32 of the same shape. Inputs are never modified. Apply them to line
integrals (after flat/dark normalisation and ``-log``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import scipy.ndimage as ndi
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import BadInputError
from ..validation import as_float32, check_size

__all__ = [
    "STRIPE_METHODS",
    "remove_all_stripes",
    "remove_dead_stripes",
    "remove_large_stripes",
    "remove_stripe_mean",
    "remove_stripe_sorting",
    "remove_stripes",
    "ring_metric",
]

STRIPE_METHODS = ("none", "mean", "sort", "combined")
_LAYOUT = "(n_angles, n_cols) or (n_angles, n_rows, n_cols)"
_CHUNK_BYTES = 2 * 1024 * 1024  # working set of one median chunk; ~L2 cache
_NOISE_FLOOR = 1.0e-5  # algotom raises below this; we treat it as the noise level


# -- kernels on arrays whose last axis is the detector column ---------------------------


def _median_last_axis(x: np.ndarray, size: int) -> np.ndarray:
    """Median filter along the last axis with ``scipy.ndimage`` "reflect" edges.

    Equal to ``ndi.median_filter(x, size=(1, ..., 1, size))`` but faster for 1D windows
    (docs/measurements/kernels.md): a sliding-window view and ``np.partition`` on chunks
    that fit in cache.
    """
    n_cols = x.shape[-1]
    left = size // 2
    right = size - 1 - left
    if size > n_cols:  # reflect padding wider than the row: let scipy do it
        axes_size = (1,) * (x.ndim - 1) + (size,)
        return ndi.median_filter(x, size=axes_size, mode="reflect")
    lanes = np.ascontiguousarray(x).reshape(-1, n_cols)
    out = np.empty_like(lanes)
    chunk = max(1, _CHUNK_BYTES // (lanes.itemsize * size * n_cols))
    for start in range(0, lanes.shape[0], chunk):
        block = np.pad(lanes[start : start + chunk], ((0, 0), (left, right)), mode="symmetric")
        windows = sliding_window_view(block, size, axis=1)
        out[start : start + chunk] = np.partition(windows, left, axis=-1)[..., left]
    return out.reshape(x.shape)


def _sort_columns(sino: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each column of a 2D sinogram along the angles; return sorted and the index."""
    sino_t = np.ascontiguousarray(sino.T)
    index = np.argsort(sino_t, axis=1)
    return np.take_along_axis(sino_t, index, axis=1).T, index


def _unsort_columns(sorted_sino: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_sort_columns`: put sorted values back in angle order."""
    out_t = np.empty(index.shape, dtype=np.float32)
    np.put_along_axis(out_t, index, np.ascontiguousarray(sorted_sino.T), axis=1)
    return out_t.T


def _smooth_sorted(sorted_sino: np.ndarray, size: int, dim: int) -> np.ndarray:
    if dim == 2:
        return ndi.median_filter(sorted_sino, size=(size, size), mode="reflect")
    return _median_last_axis(sorted_sino, size)


def _detect_stripes(values: np.ndarray, snr: float) -> np.ndarray:
    """Algorithm 4 of Vo et al. 2018: boolean mask of outliers in a 1D profile.

    The sorted profile's middle half is fitted by a line; its rise over the profile is
    the noise level. Values beyond ``snr/2`` noise levels above the fitted end (or below
    its start) are stripes. Below a noise floor of 1e-5 the floor is used (algotom raises).
    """
    npoint = len(values)
    ordered = np.sort(values)
    xs = np.arange(npoint, dtype=np.float64)
    ndrop = int(0.25 * npoint)
    fit = slice(ndrop, npoint - ndrop - 1)
    if fit.stop - fit.start < 2:
        return np.zeros(npoint, dtype=bool)
    slope, intercept = np.polyfit(xs[fit], ordered[fit].astype(np.float64), 1)
    y_end = intercept + slope * xs[-1]
    noise = max(abs(y_end - intercept), _NOISE_FLOOR)
    mask = np.zeros(npoint, dtype=bool)
    if abs(ordered[-1] - y_end) / noise >= snr:
        mask |= values > y_end + noise * snr * 0.5
    if abs(intercept - ordered[0]) / noise >= snr:
        mask |= values <= intercept - noise * snr * 0.5
    return mask


def _sorting_2d(sino: np.ndarray, size: int, dim: int) -> np.ndarray:
    sorted_sino, index = _sort_columns(sino)
    return _unsort_columns(_smooth_sorted(sorted_sino, size, dim), index)


def _large_2d(sino: np.ndarray, snr: float, size: int, drop_ratio: float, norm: bool) -> np.ndarray:
    sino = sino.copy()
    nrow = sino.shape[0]
    ndrop = int(0.5 * float(np.clip(drop_ratio, 0.0, 0.8)) * nrow)
    sorted_sino, index = _sort_columns(sino)
    smooth = _median_last_axis(sorted_sino, size)
    list1 = np.mean(sorted_sino[ndrop : nrow - ndrop], axis=0, dtype=np.float64)
    list2 = np.mean(smooth[ndrop : nrow - ndrop], axis=0, dtype=np.float64)
    factor = np.divide(list1, list2, out=np.ones_like(list1), where=list2 != 0)
    mask = ndi.binary_dilation(_detect_stripes(factor, snr), iterations=1)
    if norm:
        sino /= factor.astype(np.float32)[np.newaxis, :]
    missing = np.flatnonzero(mask)
    if missing.size:
        corrected = _unsort_columns(smooth, index)
        sino[:, missing] = corrected[:, missing]
    return sino


def _dead_2d(sino: np.ndarray, snr: float, size: int, residual: bool, smooth_strength: int) -> np.ndarray:
    sino = sino.copy()
    ncol = sino.shape[1]
    smooth = ndi.uniform_filter1d(sino, smooth_strength, axis=0, mode="reflect")
    diff = np.sum(np.abs(sino - smooth), axis=0)
    background = ndi.median_filter(diff, size, mode="reflect")
    mean_bg = np.mean(np.abs(background))
    if mean_bg == 0.0:  # a constant sinogram has no stripes to find
        return sino
    background[background == 0.0] = mean_bg
    mask = ndi.binary_dilation(_detect_stripes(diff / background, snr), iterations=1)
    mask[:2] = False
    mask[-2:] = False
    missing = np.flatnonzero(mask)
    if 0 < missing.size < ncol // 3:
        good = np.flatnonzero(~mask)
        right = np.searchsorted(good, missing)
        x0, x1 = good[right - 1], good[right]
        weight = ((missing - x0) / (x1 - x0)).astype(np.float32)
        sino[:, missing] = sino[:, x0] * (1.0 - weight) + sino[:, x1] * weight
    if residual:
        sino = _large_2d(sino, snr, size, 0.1, True)
    return sino


def _per_sinogram(data: np.ndarray, kernel: Any, *args: Any) -> np.ndarray:
    """Apply a 2D kernel to one sinogram or to each row of an (angles, rows, cols) block."""
    if data.ndim == 2:
        return np.ascontiguousarray(kernel(data, *args), dtype=np.float32)
    out = np.empty_like(data)
    for row in range(data.shape[1]):
        out[:, row, :] = kernel(data[:, row, :], *args)
    return out


# -- validation --------------------------------------------------------------------------


def _check_snr(snr: float) -> float:
    if not np.isfinite(snr) or snr <= 1.0:
        raise BadInputError(f"snr must be a finite number > 1 (e.g. 3.0); got {snr!r}.")
    return float(snr)


def _check_dim(dim: int) -> int:
    if dim not in (1, 2):
        raise BadInputError(f"dim must be 1 or 2 (median window 1D or 2D); got {dim!r}.")
    return int(dim)


def _check_sinograms(sinograms: object, name: str = "sinogram") -> np.ndarray:
    data = as_float32(sinograms, name, (2, 3), _LAYOUT)
    if data.shape[0] < 3 or data.shape[-1] < 3:
        raise BadInputError(
            f"{name} needs at least 3 angles and 3 columns {_LAYOUT}; got shape "
            f"{data.shape!r}. Check the axis order (angles first)."
        )
    return data


# -- public functions --------------------------------------------------------------------


def remove_stripe_sorting(sinograms: np.ndarray, size: int = 21, *, dim: int = 1) -> np.ndarray:
    """Remove small-to-medium stripes by sorting (algorithm 3 of Vo et al. 2018).

    Parameters
    ----------
    sinograms : ndarray
        One sinogram (n_angles, n_cols) or a block (n_angles, n_rows, n_cols).
    size : int
        Width in pixels of the median window across columns, >= 3 (default 21); larger
        removes wider stripes and blurs more.
    dim : {1, 2}
        1 (default): window ``(1, size)``; 2: ``(size, size)`` (slower, stronger).

    Returns
    -------
    ndarray
        float32, same shape.

    Raises
    ------
    BadInputError
        Wrong shape, non-finite values or invalid options.

    Examples
    --------
    >>> import numpy as np
    >>> sino = np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (90, 1))
    >>> sino[:, 30] += 0.5
    >>> bool(abs(remove_stripe_sorting(sino, 11)[:, 30] - sino[:, 29]).max() < 0.05)
    True
    """
    data = _check_sinograms(sinograms)
    size = check_size(size)
    return _per_sinogram(data, _sorting_2d, size, _check_dim(dim))


def remove_stripe_mean(sinograms: np.ndarray, size: int = 21) -> np.ndarray:
    """Remove full, narrow stripes: subtract from each column its offset over all angles.

    A pixel whose gain the flat field does not correct (noise in the flats, a defect)
    adds the same offset to its column of line integrals at every angle. The offset is the
    column's mean over angles less the median of the means over ``size`` columns, the
    smooth trend the object explains; subtracting it
    removes the stripe. Stripes wider than about ``size / 2`` columns, or present at some
    angles only, are left (use ``"sort"`` or ``"combined"``); so is an object feature
    narrower than that sitting on the rotation axis, whose column is constant too.

    Parameters
    ----------
    sinograms : ndarray
        One sinogram (n_angles, n_cols) or a block (n_angles, n_rows, n_cols).
    size : int
        Median window across columns, >= 3 (default 21, as :func:`remove_stripe_sorting`'s).

    Returns
    -------
    ndarray
        float32, same shape.

    Examples
    --------
    >>> import numpy as np
    >>> sino = np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (90, 1))
    >>> sino[:, 30] += 0.5
    >>> bool(abs(remove_stripe_mean(sino)[:, 30] - 30 / 63).max() < 0.02)
    True
    """
    data = _check_sinograms(sinograms)
    size = check_size(size)
    means = data.mean(axis=0, dtype=np.float64).astype(np.float32)  # (n_cols,) or (n_rows, n_cols)
    offset = means - _median_last_axis(means, size)
    return np.subtract(data, offset[np.newaxis], dtype=np.float32)


def remove_large_stripes(
    sinograms: np.ndarray,
    snr: float = 3.0,
    size: int = 51,
    *,
    drop_ratio: float = 0.1,
    norm: bool = True,
) -> np.ndarray:
    """Remove large (wide) stripes (algorithm 5 of Vo et al. 2018).

    Parameters
    ----------
    sinograms : ndarray
        One sinogram (n_angles, n_cols) or a block (n_angles, n_rows, n_cols).
    snr : float
        Detection ratio, > 1 (default 3.0); larger detects fewer stripes.
    size : int
        Median window across columns, >= 3 (default 51).
    drop_ratio : float
        Fraction of the sorted values (half at each end) ignored when measuring a
        column's response, 0-0.8 (default 0.1).
    norm : bool
        Also rescale every column by its measured response (default True).

    Returns
    -------
    ndarray
        float32, same shape.

    Raises
    ------
    BadInputError
        Wrong shape, non-finite values or invalid options.
    """
    data = _check_sinograms(sinograms)
    return _per_sinogram(data, _large_2d, _check_snr(snr), check_size(size), float(drop_ratio), bool(norm))


def remove_dead_stripes(
    sinograms: np.ndarray,
    snr: float = 3.0,
    size: int = 51,
    *,
    residual: bool = True,
    smooth_strength: int = 10,
) -> np.ndarray:
    """Remove unresponsive and fluctuating stripes (algorithm 6 of Vo et al. 2018).

    Columns whose angular roughness stands out are replaced by linear interpolation
    between the nearest good columns (only when fewer than a third of the columns are
    flagged).

    Parameters
    ----------
    sinograms : ndarray
        One sinogram (n_angles, n_cols) or a block (n_angles, n_rows, n_cols).
    snr : float
        Detection ratio, > 1 (default 3.0).
    size : int
        Median window across columns, >= 3 (default 51).
    residual : bool
        Follow with :func:`remove_large_stripes` (default True).
    smooth_strength : int
        Length along the angles of the box filter used to measure roughness, >= 2
        (default 10).

    Returns
    -------
    ndarray
        float32, same shape.

    Raises
    ------
    BadInputError
        Wrong shape, non-finite values or invalid options.
    """
    data = _check_sinograms(sinograms)
    return _per_sinogram(
        data,
        _dead_2d,
        _check_snr(snr),
        check_size(size),
        bool(residual),
        check_size(smooth_strength, "smooth_strength", 2),
    )


def _all_2d(sino: np.ndarray, snr: float, la_size: int, sm_size: int, drop_ratio: float, dim: int) -> np.ndarray:
    sino = _dead_2d(sino, snr, la_size, False, 10)
    sino = _large_2d(sino, snr, la_size, drop_ratio, True)
    return _sorting_2d(sino, sm_size, dim)


def remove_all_stripes(
    sinograms: np.ndarray,
    snr: float = 3.0,
    la_size: int = 51,
    sm_size: int = 21,
    *,
    drop_ratio: float = 0.1,
    dim: int = 1,
) -> np.ndarray:
    """Remove all stripe types: the combined method (algorithms 6, 5, 3 of Vo et al. 2018).

    Same results as ``algotom.prep.removal.remove_all_stripe`` (float tolerance), faster.

    Parameters
    ----------
    sinograms : ndarray
        One sinogram (n_angles, n_cols) or a block (n_angles, n_rows, n_cols).
    snr : float
        Detection ratio for dead and large stripes, > 1 (default 3.0).
    la_size : int
        Median window for large stripes, >= 3 (default 51).
    sm_size : int
        Median window for the sorting step, >= 3 (default 21).
    drop_ratio : float
        See :func:`remove_large_stripes` (default 0.1).
    dim : {1, 2}
        Window dimension of the sorting step (default 1).

    Returns
    -------
    ndarray
        float32, same shape.

    Raises
    ------
    BadInputError
        Wrong shape, non-finite values or invalid options.
    """
    data = _check_sinograms(sinograms)
    return _per_sinogram(
        data,
        _all_2d,
        _check_snr(snr),
        check_size(la_size, "la_size"),
        check_size(sm_size, "sm_size"),
        float(drop_ratio),
        _check_dim(dim),
    )


_OPTIONS: dict[str, tuple[Callable[..., np.ndarray], tuple[str, ...]]] = {
    "mean": (remove_stripe_mean, ("size",)),
    "sort": (remove_stripe_sorting, ("size", "dim")),
    "combined": (remove_all_stripes, ("snr", "la_size", "sm_size", "drop_ratio", "dim")),
}


def remove_stripes(
    projections: np.ndarray,
    method: Literal["none", "mean", "sort", "combined"] = "sort",
    **options: Any,
) -> np.ndarray:
    """Remove stripe (ring) artefacts with the named method; the pipeline's entry point.

    Parameters
    ----------
    projections : ndarray
        Line integrals: one sinogram (n_angles, n_cols) or a block of projections
        (n_angles, n_rows, n_cols).
    method : {"sort", "mean", "combined", "none"}
        ``"sort"`` (default): :func:`remove_stripe_sorting`; ``"mean"``:
        :func:`remove_stripe_mean`; ``"combined"``: :func:`remove_all_stripes`; ``"none"``:
        return a float32 copy.
    **options
        Keyword options of the chosen function: ``size`` for ``"mean"``; ``size``, ``dim`` for ``"sort"``;
        ``snr``, ``la_size``, ``sm_size``, ``drop_ratio``, ``dim`` for ``"combined"``.

    Returns
    -------
    ndarray
        float32, same shape as ``projections``.

    Raises
    ------
    BadInputError
        Unknown method or option, wrong shape, non-finite values.

    Examples
    --------
    >>> import numpy as np
    >>> block = np.random.default_rng(0).random((60, 4, 32), dtype=np.float32)
    >>> remove_stripes(block, "combined", sm_size=11).shape
    (60, 4, 32)
    """
    if method not in STRIPE_METHODS:
        raise BadInputError(f"method must be one of {STRIPE_METHODS!r}; got {method!r}.")
    if method == "none":
        if options:
            raise BadInputError(f"method 'none' takes no options; got {sorted(options)!r}.")
        return _check_sinograms(projections, "projections").copy()
    function, allowed = _OPTIONS[method]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise BadInputError(f"unknown option(s) {unknown!r} for stripe method {method!r}; allowed: {allowed!r}.")
    return function(projections, **options)


def ring_metric(sinograms: np.ndarray, size: int = 11) -> float:
    """Measure stripes: RMS of the high-passed column means of each sinogram.

    For each sinogram the mean over angles of every column is computed; a median filter of
    ``size`` columns gives the smooth trend the object explains; the root-mean-square of
    the residual (in the units of the data) measures the stripes. Blocks return the mean
    over rows. Lower is better; compare values on the same data only.

    Parameters
    ----------
    sinograms : ndarray
        One sinogram (n_angles, n_cols) or a block (n_angles, n_rows, n_cols).
    size : int
        Median window of the trend, >= 3 (default 11); stripes wider than about
        ``size / 2`` count as trend.

    Returns
    -------
    float
        The metric, >= 0.

    Examples
    --------
    >>> import numpy as np
    >>> sino = np.zeros((10, 50), dtype=np.float32)
    >>> sino[:, 20] = 1.0
    >>> round(ring_metric(sino), 3)
    0.141
    """
    data = _check_sinograms(sinograms)
    size = check_size(size)
    means = data.mean(axis=0)  # (n_cols,) or (n_rows, n_cols)
    residual = means - _median_last_axis(means, size)
    return float(np.mean(np.sqrt(np.mean(residual.astype(np.float64) ** 2, axis=-1))))
