"""Input checks shared by every kernel: they name the input, what was expected and what came.

Kernels call these up front (as tomopy's ``util/dtype.py`` does), so a bad array fails with
one clear :class:`~tomolive.errors.BadInputError` before any work is done.
"""

from __future__ import annotations

import numpy as np

from .errors import BadInputError

__all__ = ["as_float32", "check_finite", "check_size"]


def check_finite(frames: np.ndarray, name: str) -> None:
    """Raise :class:`BadInputError` if ``frames`` holds NaN or inf values."""
    if np.issubdtype(frames.dtype, np.integer):
        return
    bad = np.size(frames) - np.count_nonzero(np.isfinite(frames))
    if bad:
        raise BadInputError(
            f"{name} contains {bad} NaN/inf pixel(s) of {np.size(frames)}; expected finite "
            "detector counts. Check the detector (saturation, readout error) and re-acquire."
        )


def as_float32(
    array: object,
    name: str,
    ndims: tuple[int, ...],
    layout: str,
    *,
    finite: bool = True,
    copy: bool = False,
) -> np.ndarray:
    """Return ``array`` as float32 after checking its dimensionality, dtype and values.

    Parameters
    ----------
    array : array_like
        The input to check.
    name : str
        Its name in error messages.
    ndims : tuple of int
        Allowed numbers of dimensions.
    layout : str
        Words describing the expected layout, e.g. ``"(n_angles, n_cols)"``.
    finite : bool
        Reject NaN/inf values.
    copy : bool
        Always return a new array.
    """
    arr = np.asarray(array)
    if arr.ndim not in ndims:
        raise BadInputError(
            f"{name} must be a {' or '.join(f'{n}D' for n in ndims)} array {layout}; got "
            f"shape {arr.shape!r}. Pass a single frame/sinogram or a stack in that layout."
        )
    if arr.size == 0:
        raise BadInputError(f"{name} is empty (shape {arr.shape!r}); expected data {layout}.")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise BadInputError(
            f"{name} must hold real numbers (integer or float); got dtype {arr.dtype!r}. "
            "Convert it with np.asarray(x, dtype=np.float32)."
        )
    out = arr.astype(np.float32, copy=copy)
    if finite:
        bad = out.size - int(np.count_nonzero(np.isfinite(out)))
        if bad:
            raise BadInputError(
                f"{name} contains {bad} NaN/inf value(s) of {out.size}; expected finite "
                "values. Repair them first with tomolive.preprocess.replace_nonfinite."
            )
    return out


def check_size(size: int, name: str = "size", minimum: int = 3, *, odd: bool = False) -> int:
    """Return ``size`` as int after checking it is an integer >= ``minimum`` (and odd)."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < minimum or (odd and size % 2 == 0):
        kind = "an odd integer" if odd else "an integer"
        raise BadInputError(f"{name} must be {kind} >= {minimum}; got {size!r}.")
    return int(size)
