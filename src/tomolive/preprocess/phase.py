"""Single-distance phase retrieval after Paganin et al. (2002).

For a homogeneous sample (fixed ratio delta/beta of the refractive index decrement to the
absorption index), a propagation-based phase-contrast image at sample-detector distance
``z`` is turned back into a smooth absorption-like image by the low-pass filter

    T_retrieved = IFFT2[ FFT2(T) / (1 + pi * wavelength * z * (delta/beta) * |f|^2) ]

where ``T`` is the flat/dark-corrected transmission and ``f`` the spatial frequency in
cycles per metre. ``-log(T_retrieved)`` is then the projected attenuation (``mu * t``)
that the reconstruction wants. The filter has gain 1 at zero frequency, so the mean of
each frame is kept.

Reference: D. Paganin, S. C. Mayo, T. E. Gureyev, P. R. Miller and S. W. Wilkins,
"Simultaneous phase and amplitude extraction from a single defocused image of a
homogeneous object", J. Microsc. 206, 33-40 (2002), https://doi.org/10.1046/j.1365-2818.2002.01010.x

Units: SI lengths (metres) and photon energy in keV. The pipeline applies it (off by
default) between flat/dark normalisation *without* ``-log`` and the logarithm.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from ..errors import BadInputError
from ..validation import as_float32

__all__ = ["paganin", "paganin_filter", "wavelength"]

_HC_KEV_M = 1.23984198e-9  # h * c in keV * m


def wavelength(energy: float) -> float:
    """X-ray wavelength in metres for a photon energy in keV.

    Examples
    --------
    >>> round(wavelength(12.398) * 1e10, 3)  # 12.398 keV is about 1 angstrom
    1.0
    """
    return _HC_KEV_M / _check_positive("energy", energy, "keV")


def _check_positive(name: str, value: float, unit: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as err:
        raise BadInputError(f"{name} must be a positive number in {unit}; got {value!r}.") from err
    if not np.isfinite(number) or number <= 0:
        raise BadInputError(f"{name} must be a positive number in {unit}; got {value!r}.")
    return number


def paganin_filter(
    shape: tuple[int, int],
    pixel_size: float,
    distance: float,
    energy: float,
    delta_beta: float,
) -> np.ndarray:
    """The Paganin low-pass filter on the ``rfft2`` grid of a (rows, cols) frame.

    Parameters
    ----------
    shape : (int, int)
        Frame shape (after any padding).
    pixel_size, distance, energy, delta_beta : float
        As in :func:`paganin`.

    Returns
    -------
    ndarray
        float32 (rows, cols // 2 + 1), 1 at zero frequency, decreasing outwards.
    """
    pixel_size = _check_positive("pixel_size", pixel_size, "metres")
    distance = _check_positive("distance", distance, "metres")
    delta_beta = _check_positive("delta_beta", delta_beta, "(dimensionless ratio)")
    lam = wavelength(energy)
    fy = sfft.fftfreq(shape[0], d=pixel_size)[:, None]
    fx = sfft.rfftfreq(shape[1], d=pixel_size)[None, :]
    alpha = np.pi * lam * distance * delta_beta
    return (1.0 / (1.0 + alpha * (fx**2 + fy**2))).astype(np.float32)


def paganin(
    projections: np.ndarray,
    pixel_size: float,
    distance: float,
    energy: float,
    delta_beta: float = 1000.0,
    *,
    pad: bool | int = True,
    workers: int | None = None,
) -> np.ndarray:
    """Paganin single-distance phase retrieval on transmission images.

    Parameters
    ----------
    projections : ndarray
        Flat/dark-corrected transmission (``(p - dark) / (flat - dark)``, about 1 in air,
        NOT ``-log``), one frame (rows, cols) or a stack (n, rows, cols); never modified.
    pixel_size : float
        Effective detector pixel size at the sample, in metres (e.g. ``6.5e-6 / 10`` for a
        6.5 um camera pixel behind a 10x objective).
    distance : float
        Sample-to-detector propagation distance, in metres (e.g. ``0.05``).
    energy : float
        Photon energy in keV (e.g. ``25.0``).
    delta_beta : float
        Ratio delta/beta of the sample's refractive index, > 0 (default 1000; light
        materials in hard X-rays are 100-3000; larger smooths more).
    pad : bool or int
        Pad each frame by edge replication before filtering to avoid wrap-around:
        ``True`` (default) pads by 8 filter lengths (at most the frame size), an int pads
        by that many pixels, ``False`` filters periodically.
    workers : int, optional
        Threads for ``scipy.fft`` (default: scipy's default, 1).

    Returns
    -------
    ndarray
        float32 filtered transmission, same shape; take ``-log`` of it to get the
        projected attenuation for reconstruction. The mean of each frame is kept exactly
        with ``pad=False`` and to within edge effects otherwise.

    Raises
    ------
    BadInputError
        Wrong shape, non-finite values, or non-positive physical parameters.

    Examples
    --------
    >>> import numpy as np
    >>> frame = np.ones((32, 32), dtype=np.float32)
    >>> frame[16, 16] = 0.5
    >>> out = paganin(frame, 1e-6, 0.1, 20.0, delta_beta=500, pad=False)
    >>> bool(out[16, 16] > 0.99), bool(abs(out.mean() - frame.mean()) < 1e-6)
    (True, True)
    """
    data = as_float32(projections, "projections", (2, 3), "(rows, cols) or (n, rows, cols)")
    stack = data if data.ndim == 3 else data[np.newaxis]
    rows, cols = stack.shape[1:]
    pixel_size = _check_positive("pixel_size", pixel_size, "metres")
    distance = _check_positive("distance", distance, "metres")
    delta_beta = _check_positive("delta_beta", delta_beta, "(dimensionless ratio)")
    lam = wavelength(energy)
    if isinstance(pad, (bool, np.bool_)):
        if pad:
            length = np.sqrt(np.pi * lam * distance * delta_beta) / (2 * np.pi) / pixel_size
            width = int(min(np.ceil(8 * length) + 2, max(rows, cols)))
        else:
            width = 0
    elif isinstance(pad, (int, np.integer)) and pad >= 0:
        width = int(pad)
    else:
        raise BadInputError(f"pad must be True, False or a number of pixels >= 0; got {pad!r}.")
    if width:
        shape = (
            sfft.next_fast_len(rows + 2 * width, real=True),
            sfft.next_fast_len(cols + 2 * width, real=True),
        )
        before = (width, width)
        after = (shape[0] - rows - width, shape[1] - cols - width)
    else:
        shape, before, after = (rows, cols), (0, 0), (0, 0)
    filt = paganin_filter(shape, pixel_size, distance, energy, delta_beta)
    out = np.empty_like(stack)
    for k, frame in enumerate(stack):
        if width:
            frame = np.pad(frame, ((before[0], after[0]), (before[1], after[1])), mode="edge")
        spectrum = sfft.rfft2(frame, workers=workers)
        spectrum *= filt
        result = sfft.irfft2(spectrum, s=shape, workers=workers)
        out[k] = result[before[0] : before[0] + rows, before[1] : before[1] + cols]
    return out if data.ndim == 3 else out[0]
