"""Reconstruction filters, angle weights and detector padding shared by the backends.

Conventions (every backend follows them):

* Frequencies are in cycles per detector pixel, Nyquist = 0.5.
* The ramp is the band-limited Ram-Lak kernel built in real space (Kak & Slaney, eq. 61),
  so its zero-frequency term is right for a padded, finite detector; windows multiply it.
* Every backend pads the detector the same way before filtering (:func:`padded_width`,
  :func:`fill_pad`), so a sample wider than the field of view reconstructs alike in each.
* Angle weights sum to pi: each projection gets half the gap to each neighbour, angles taken
  modulo pi, so 0-360 degree and non-uniform scans are weighted correctly.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.fft

from ..errors import BadInputError

#: Filter names accepted by every backend (``filter=``).
FILTERS = ("ramp", "shepp-logan", "cosine", "hamming", "hann", "parzen")

#: Padding modes accepted by every backend (``padding=``).
PADDINGS = ("edge", "zero")


def padded_width(n_cols: int, center: float | None = None) -> int:
    """Padded detector width every backend filters on: a fast FFT length >= 2 n_cols + 2 |offset|.

    ``offset`` is the axis's distance from the detector middle, so the detector sits
    within the padded one with at least n_cols / 2 of pad on either side of the axis's
    mirror image; see :func:`fill_pad` for what the pad holds.

    Parameters
    ----------
    n_cols : int
        Detector width in pixels.
    center : float, optional
        Rotation-axis column (pixel j's centre at j); default the detector middle.

    Returns
    -------
    int
        A 2, 3, 5-smooth length.

    Examples
    --------
    >>> padded_width(1024)
    2048
    >>> padded_width(1000, center=519.5)
    2048
    """
    offset = 0.0 if center is None else abs(float(center) - (int(n_cols) - 1) / 2.0)
    return int(scipy.fft.next_fast_len(int(np.ceil(2 * int(n_cols) + 2.0 * offset)), real=True))


def fill_pad(buf: np.ndarray, n_cols: int, mode: str) -> None:
    """Fill ``buf[..., n_cols:]`` (in place) from the detector in ``buf[..., :n_cols]``.

    The padded row is read circularly: its first half continues the detector's right edge,
    its second half leads into the left edge. ``"edge"`` starts each half at that edge's
    value and brings it to zero by a half-cosine over the half's length (the same shape for
    every backend, and no jump where the two halves meet); ``"zero"`` writes zeros. For a
    sample within the field of view (edges ~0) both give the same; for one wider than it,
    the taper stands in for the unseen part of the sample -- its length (half the pad,
    >= n_cols / 2) is a guess, and what the mean value inside the field of view depends on
    (docs/measurements/kernels.md).

    Parameters
    ----------
    buf : numpy.ndarray
        (..., width) float or complex, width >= n_cols.
    n_cols : int
        Detector width.
    mode : {"edge", "zero"}
    """
    if mode not in PADDINGS:
        raise BadInputError(f"padding: expected one of {PADDINGS}, got {mode!r}")
    n, width = int(n_cols), buf.shape[-1]
    if width <= n:
        return
    half = n + (width - n) // 2
    if mode == "zero":
        buf[..., n:] = 0
        return
    right, left = half - n, width - half
    # weight 1 at the detector edge, falling to 0 one step past the pad's middle
    fall = 0.5 * (1.0 + np.cos(np.pi * np.arange(1, right + 1) / (right + 1)))
    rise = 0.5 * (1.0 + np.cos(np.pi * np.arange(left, 0, -1) / (left + 1)))
    buf[..., n:half] = buf[..., n - 1 : n] * fall.astype(np.float32)
    buf[..., half:] = buf[..., 0:1] * rise.astype(np.float32)


def filter_response(name: str, width: int, cutoff: float = 1.0) -> np.ndarray:
    """Frequency response of a reconstruction filter, in FFT order (float64, length ``width``).

    Parameters
    ----------
    name : {"ramp", "shepp-logan", "cosine", "hamming", "hann", "parzen"}
        The window applied to the ramp.
    width : int
        Padded detector width (number of frequency samples).
    cutoff : float, optional
        Fraction of the Nyquist frequency (0 < cutoff <= 1) above which the response is zero;
        windows are stretched to end at it.

    Returns
    -------
    numpy.ndarray
        ``H[k]`` ~ ``|nu_k| * window(nu_k)`` for ``nu_k = scipy.fft.fftfreq(width)``.

    Raises
    ------
    BadInputError
        Unknown filter name or cutoff outside (0, 1].

    Examples
    --------
    >>> h = filter_response("ramp", 256)
    >>> bool(abs(h[128] - 0.5) < 0.001), bool(abs(h[64] - 0.25) < 0.001)
    (True, True)
    """
    if name not in FILTERS:
        raise BadInputError(f"filter: expected one of {FILTERS}, got {name!r}")
    if not 0.0 < float(cutoff) <= 1.0:
        raise BadInputError(f"filter_cutoff: expected a number in (0, 1], got {cutoff!r}")
    width = int(width)
    # Ram-Lak kernel in real space, on a circular grid of `width` samples.
    m = np.arange(width)
    m = np.minimum(m, width - m)
    h = np.zeros(width)
    h[0] = 0.25
    odd = m % 2 == 1
    h[odd] = -1.0 / (np.pi * m[odd]) ** 2
    ramp = np.real(scipy.fft.fft(h))
    nu = np.abs(scipy.fft.fftfreq(width))
    r = nu / (0.5 * float(cutoff))  # 0 at DC, 1 at the cutoff
    if name == "ramp":
        win = np.ones(width)
    elif name == "shepp-logan":
        win = np.sinc(r / 2.0)
    elif name == "cosine":
        win = np.cos(0.5 * np.pi * r)
    elif name == "hamming":
        win = 0.54 + 0.46 * np.cos(np.pi * r)
    elif name == "hann":
        win = 0.5 + 0.5 * np.cos(np.pi * r)
    else:  # parzen
        win = np.where(r <= 0.5, 1.0 - 6.0 * r**2 + 6.0 * r**3, 2.0 * (1.0 - r) ** 3)
    win = np.where(r <= 1.0, win, 0.0)
    return ramp * win


def angle_weights(angles: np.ndarray) -> np.ndarray:
    """Quadrature weights for the back-projection integral over angles (sum = pi).

    Angles are folded modulo pi (a parallel-beam view at theta + pi is the mirror of the one
    at theta); each view gets half the gap to each neighbour, so uniform scans over 180 or
    360 degrees get ``pi / n_unique`` and non-uniform scans are weighted by the arc they stand
    for.

    Parameters
    ----------
    angles : numpy.ndarray
        Projection angles in radians, any order.

    Returns
    -------
    numpy.ndarray
        float64 weights, same length as ``angles``, summing to pi.

    Examples
    --------
    >>> w = angle_weights(np.linspace(0, 2 * np.pi, 8, endpoint=False))
    >>> bool(np.allclose(w, np.pi / 8))
    True
    """
    a = np.mod(np.asarray(angles, dtype=np.float64), np.pi)
    order = np.argsort(a, kind="stable")
    s = a[order]
    gap_next = np.diff(np.concatenate([s, [s[0] + np.pi]]))
    gap_prev = np.roll(gap_next, 1)
    w = np.empty_like(s)
    w[order] = 0.5 * (gap_next + gap_prev)
    return w


class AngularGap(NamedTuple):
    """The largest gap between views modulo pi, the median gap, and where the largest starts (radians)."""

    largest: float
    median: float
    start: float


def largest_gap(angles: np.ndarray) -> AngularGap:
    """Largest and median gap between views modulo pi, and where the largest one starts.

    Parameters
    ----------
    angles : numpy.ndarray
        Projection angles in radians.

    Returns
    -------
    AngularGap
        ``largest``, ``median`` and ``start``, in radians.
    """
    s = np.sort(np.mod(np.asarray(angles, dtype=np.float64), np.pi))
    gaps = np.diff(np.concatenate([s, [s[0] + np.pi]]))
    i = int(np.argmax(gaps))
    return AngularGap(float(gaps[i]), float(np.median(gaps)), float(s[i]))


def pad_projections(sino: np.ndarray, width: int, mode: str) -> np.ndarray:
    """``sino`` (..., n_cols) padded to (..., width) float32 by :func:`fill_pad`.

    The detector stays at indices ``0 .. n_cols - 1``; the pad fills ``n_cols .. width - 1``
    (seen circularly: the right edge's continuation, then the left edge's).

    Parameters
    ----------
    sino : numpy.ndarray
        (..., n_cols) float32.
    width : int
        Padded width, >= n_cols (every backend uses :func:`padded_width`).
    mode : {"edge", "zero"}
        See :func:`fill_pad`.

    Returns
    -------
    numpy.ndarray
        (..., width) float32.
    """
    n = sino.shape[-1]
    out = np.empty(sino.shape[:-1] + (width,), dtype=np.float32)
    out[..., :n] = sino
    fill_pad(out, n, mode)
    return out


def pad_centered(sino: np.ndarray, width: int, mode: str) -> tuple[np.ndarray, int]:
    """:func:`pad_projections` laid out flat, for libraries that pad or filter themselves.

    Returns the (..., width) float32 row with the detector at ``left .. left + n_cols - 1``
    (the left edge's lead-in before it, the right edge's continuation after it) and ``left``.
    """
    padded = pad_projections(sino, width, mode)
    n = sino.shape[-1]
    left = width - (n + (width - n) // 2)  # length of the lead-in, the pad's second half
    return np.roll(padded, left, axis=-1), left
