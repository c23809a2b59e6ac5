"""Direct-Fourier ("gridrec"-class) reconstruction with finufft: FBP accuracy at gridding speed.

The filtered back-projection with band-limited (trigonometric) interpolation of each
filtered projection,

    f(x, y) = sum_theta w_theta q_theta(center + x cos(theta) + y sin(theta)),
    q_theta(u) = 1/L sum_k H_k P_theta,k exp(2 pi i k u / L),

is a sum of plane waves at the polar points 2 pi k / L (cos(theta), sin(theta)), i.e. one
2D type-1 non-uniform FFT onto the n x n image modes. Two real slices travel together as the
real and imaginary parts of one complex sinogram (each slice's spectrum is Hermitian, so
their images come back as the real and imaginary parts), the polar points are set once per
call and reused for every pair, and everything is float32/complex64.

Rows are paired (r0, r0 + 1), (r0 + 2, r0 + 3)... within one call; finufft's error
(eps = 1e-2: ~60 dB below the image range) mixes a little between the two rows of a pair,
so a row's result changes at that level with its partner: keep block boundaries on even
rows when results must match across different blockings.
"""

from __future__ import annotations

import concurrent.futures
import os

import numpy as np
import scipy.fft

from ..errors import BadInputError
from .filters import angle_weights, fill_pad, filter_response, padded_width
from .settings import ReconSettings


def _default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


#: Interpolation responses: "linear" tapers the spectrum by sinc^2, the transfer function of
#: linear interpolation, so gridrec matches FBP with linear interpolation (astra, skimage,
#: method="fbp"); "sinc" is the exact band-limited interpolation (sharper, more ringing).
INTERPOLATIONS = ("linear", "sinc")

_FFTW_MEASURE, _FFTW_ESTIMATE = 0, 64


def gridrec(
    projections: np.ndarray,
    angles: np.ndarray,
    center: float,
    settings: ReconSettings,
    *,
    interpolation: str = "linear",
    eps: float = 1e-2,
    upsampfac: float = 1.25,
    pairs_per_batch: int = 2,
    fft_plan: str = "auto",
    overlap: bool = True,
) -> np.ndarray:
    """Direct-Fourier reconstruction of validated inputs (see :func:`tomolive.recon.reconstruct`).

    Parameters
    ----------
    projections, angles, center
        Validated inputs as :class:`tomolive.recon.Backend` receives them.
    settings : ReconSettings
        Filter and padding (the detector is padded to
        :func:`~tomolive.recon.filters.padded_width` by
        :func:`~tomolive.recon.filters.fill_pad`, as in every backend); ``ncore`` sets finufft and FFT threads (default: the CPUs this
        process may use); ``device`` must be None or ``"cpu"`` (finufft runs on the CPU).
    interpolation : {"linear", "sinc"}, optional
        Detector interpolation the result matches (see :data:`INTERPOLATIONS`).
    eps : float, optional
        finufft tolerance; 1e-2 keeps its error > 50 dB below the image range.
    upsampfac : float, optional
        finufft oversampling; 1.25 (smaller FFT, wider kernel) measured fastest on CPUs
        (docs/measurements/kernels.md).
    pairs_per_batch : int, optional
        Slice pairs per finufft call (``n_trans``).
    fft_plan : {"auto", "measure", "estimate"}, optional
        FFTW planning: "measure" costs a few seconds once per process and size, then runs
        faster; "auto" measures when at least 16 rows are reconstructed.
    overlap : bool, optional
        Prepare the next block's spectrum in a helper thread while finufft runs, when
        ``ncore`` >= 2 (on one core the helper only adds work).

    Returns
    -------
    numpy.ndarray
        float32 (n_rows, n_cols, n_cols), indexed [row, y, x].
    """
    import finufft

    _check_options(settings, interpolation, fft_plan)
    nthreads = int(settings.ncore) if settings.ncore is not None else _default_threads()
    n_angles, n_rows, n = projections.shape
    width = padded_width(n, center)
    k = np.fft.fftfreq(width) * width  # signed integer frequencies, FFT order
    resp = _response(settings, width, interpolation)
    # The spectrum is packed as (n_angles, width) points, zeros included: no gather needed.
    omega = (2.0 * np.pi / width) * k
    wx = np.outer(np.cos(angles), omega).astype(np.float32)
    wy = np.outer(np.sin(angles), omega).astype(np.float32)
    gain = _spectral_gain(angles, center, n, resp)
    n_pairs = (n_rows + 1) // 2
    batch = max(1, min(int(pairs_per_batch), n_pairs))
    measure = fft_plan == "measure" or (fft_plan == "auto" and n_rows >= 16)
    plan = finufft.Plan(
        1,
        (n, n),
        n_trans=batch,
        eps=float(eps),
        isign=1,
        dtype="complex64",
        nthreads=nthreads,
        upsampfac=float(upsampfac),
        fftw=_FFTW_MEASURE if measure else _FFTW_ESTIMATE,
    )
    # finufft's first mode index follows its first coordinate: pass y first for [y, x] output.
    plan.setpts(wy.ravel(), wx.ravel())
    out = np.empty((n_rows, n, n), dtype=np.float32)
    img = np.empty((batch, n, n), dtype=np.complex64)
    buffers = [np.empty((batch, n_angles, width), dtype=np.complex64) for _ in range(2)]

    def spectrum(p0: int, z: np.ndarray) -> np.ndarray:
        """Pack rows 2 p0 ... as complex pairs, pad, FFT, apply the gain (in place in z)."""
        r0, r1 = 2 * p0, min(n_rows, 2 * (p0 + batch))
        n_re, n_im = (r1 - r0 + 1) // 2, (r1 - r0) // 2
        # Pair j holds row r0 + 2j as real part and row r0 + 2j + 1 as imaginary part.
        z[:, :, :n].real[:n_re] = projections[:, r0:r1:2, :].transpose(1, 0, 2)
        z[:, :, :n].imag[:n_im] = projections[:, r0 + 1 : r1 : 2, :].transpose(1, 0, 2)
        z[n_re:].real[..., :n] = 0
        z[n_im:].imag[..., :n] = 0
        fill_pad(z, n, settings.padding)
        spec = scipy.fft.fft(z, axis=-1, workers=fft_workers, overwrite_x=True)
        spec *= gain
        return spec.reshape(batch, -1)

    starts = list(range(0, n_pairs, batch))
    # The next block's spectrum is made in a helper thread while finufft (which releases the
    # GIL) transforms the current one.
    use_helper = overlap and nthreads > 1 and len(starts) > 1
    fft_workers = 1 if use_helper else nthreads
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(spectrum, starts[0], buffers[0]) if use_helper else None
        for i, p0 in enumerate(starts):
            if pending is not None:
                spec = pending.result()
                last = i + 1 == len(starts)
                pending = None if last else pool.submit(spectrum, starts[i + 1], buffers[(i + 1) % 2])
            else:
                spec = spectrum(p0, buffers[0])
            plan.execute(spec, out=img)
            r0, r1 = 2 * p0, min(n_rows, 2 * (p0 + batch))
            for j in range(r1 - r0):
                out[r0 + j] = img[j // 2].real if j % 2 == 0 else img[j // 2].imag
    return out


def _spectral_gain(angles: np.ndarray, center: float, n: int, resp: np.ndarray) -> np.ndarray:
    """Per-angle filter, quadrature weight and phase applied to each projection's spectrum.

    Output grid x = mode + delta (finufft's modes run from -(n // 2)). The phase
    exp(i k phi_theta) moves the detector origin to the rotation axis and the modes onto
    that grid: phi = 2 pi center / width + omega_1 (cos + sin) delta.
    """
    width = resp.shape[0]
    k = np.fft.fftfreq(width) * width
    delta = n // 2 - (n - 1) / 2.0
    phi = (2.0 * np.pi / width) * (center + (np.cos(angles) + np.sin(angles)) * delta)
    phase = np.mod(np.outer(phi, k), 2.0 * np.pi).astype(np.float32)
    gain = np.empty(phase.shape, dtype=np.complex64)
    gain.real = np.cos(phase)
    gain.imag = np.sin(phase)
    gain *= np.outer(angle_weights(angles), resp / width).astype(np.float32)
    return gain


def _check_options(settings: ReconSettings, interpolation: str, fft_plan: str) -> None:
    """Reject what gridrec cannot do: a GPU device, unknown interpolation or planning."""
    if settings.device not in (None, "cpu"):
        raise BadInputError(f"device: gridrec runs on the CPU only, got {settings.device!r}; use method='fbp'")
    if interpolation not in INTERPOLATIONS:
        raise BadInputError(f"interpolation: expected one of {INTERPOLATIONS}, got {interpolation!r}")
    if fft_plan not in ("auto", "measure", "estimate"):
        raise BadInputError(f"fft_plan: expected 'auto', 'measure' or 'estimate', got {fft_plan!r}")


def _response(settings: ReconSettings, width: int, interpolation: str) -> np.ndarray:
    """The filter in FFT order, tapered for ``interpolation``, without its unpaired Nyquist term."""
    k = np.fft.fftfreq(width) * width
    resp = filter_response(settings.filter, width, settings.filter_cutoff)
    if interpolation == "linear":
        resp = resp * np.sinc(k / width) ** 2
    if width % 2 == 0:
        resp[width // 2] = 0.0  # Nyquist has no Hermitian partner: drop it
    return resp
