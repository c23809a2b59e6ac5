"""Ptychography forward model: scan positions, probes, complex objects and far-field patterns.

Pure numpy. Conventions shared with the solver (src/tomolive/techniques/ptycho/solver.py):

- positions are probe CENTRES in object pixels, ``(row, col)`` floats;
- a probe of size ``n`` at centre ``c`` covers the object window whose top-left pixel is
  ``round(c - n/2)``; the sub-pixel rest ``(c - n/2) - round(c - n/2)`` (in [-0.5, 0.5]) shifts
  the probe by a Fourier phase ramp, so sub-pixel positions are modelled exactly;
- patterns are ``|FFT2(probe * patch)|^2`` with the unnormalised FFT and DC centred (fftshift);
  a probe of several mutually incoherent modes (modes, n, n) gives the sum of its modes'
  intensities (a partially coherent beam).
"""

from __future__ import annotations

import numpy as np

from tomolive.errors import BadInputError

GOLDEN_ANGLE = np.pi * (3.0 - np.sqrt(5.0))
_CHUNK = 256  # patterns per FFT call in far_field (bounds the temporaries)


def fermat_positions(n_points: int, step_px: float, centre: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Fermat-spiral scan: point k at radius ``c * sqrt(k)``, angle ``k * golden angle``.

    ``step_px`` is the mean spacing (``c = step_px / sqrt(pi)``: each point owns an area
    ``step_px**2``). Returns (n_points, 2) float64 (row, col) centres.
    """
    if n_points < 1 or step_px <= 0:
        raise BadInputError(f"fermat_positions: need n_points >= 1 and step_px > 0, got {n_points!r}, {step_px!r}")
    k = np.arange(n_points, dtype=np.float64)
    radius = step_px / np.sqrt(np.pi) * np.sqrt(k)
    theta = k * GOLDEN_ANGLE
    return np.stack([centre[0] + radius * np.sin(theta), centre[1] + radius * np.cos(theta)], axis=1)


def raster_positions(n_rows: int, n_cols: int, step_px: float, centre: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Raster scan of ``n_rows x n_cols`` points ``step_px`` apart, centred on ``centre``; (N, 2) float64."""
    if n_rows < 1 or n_cols < 1 or step_px <= 0:
        raise BadInputError(
            f"raster_positions: need n_rows, n_cols >= 1 and step_px > 0, got {n_rows!r}, {n_cols!r}, {step_px!r}"
        )
    r = (np.arange(n_rows) - (n_rows - 1) / 2.0) * step_px + centre[0]
    c = (np.arange(n_cols) - (n_cols - 1) / 2.0) * step_px + centre[1]
    rr, cc = np.meshgrid(r, c, indexing="ij")
    return np.stack([rr.ravel(), cc.ravel()], axis=1)


def make_probe(n: int, *, aperture_px: float, defocus_phase_rad: float = 0.0, kind: str = "zone_plate") -> np.ndarray:
    """An illumination of size (n, n), centred on pixel n//2, complex64, max amplitude 1.

    ``kind="aperture"``: a disc of diameter ``aperture_px`` with a soft (1 px) edge.
    ``kind="zone_plate"``: the same disc with a central stop of 30 % of its diameter (a
    zone plate's beam stop seen out of focus). ``defocus_phase_rad`` adds a quadratic
    phase reaching that value at the disc's rim (phase curvature of a defocused beam).
    """
    if kind not in ("zone_plate", "aperture"):
        raise BadInputError(f"make_probe: kind must be 'zone_plate' or 'aperture', got {kind!r}")
    if n < 4 or not 0 < aperture_px <= n:
        raise BadInputError(
            f"make_probe: need n >= 4 and 0 < aperture_px <= n, got n={n!r}, aperture_px={aperture_px!r}"
        )
    y, x = np.mgrid[:n, :n] - n // 2
    r = np.hypot(y, x)
    radius = aperture_px / 2.0
    amp = np.clip(radius + 0.5 - r, 0.0, 1.0)
    if kind == "zone_plate":
        amp *= np.clip(r - 0.3 * radius + 0.5, 0.0, 1.0)
    phase = defocus_phase_rad * (r / radius) ** 2
    return (amp * np.exp(1j * phase)).astype(np.complex64)


_MODE_POLYNOMIALS = (
    lambda x, y: x,
    lambda x, y: y,
    lambda x, y: x * y,
    lambda x, y: x**2 - 1.0,
    lambda x, y: y**2 - 1.0,
    lambda x, y: x**2 * y,
    lambda x, y: x * y**2,
)


MAX_PROBE_MODES = len(_MODE_POLYNOMIALS) + 1
"""The most modes :func:`add_probe_modes` can make (one per polynomial, after the first)."""


def add_probe_modes(probe: np.ndarray, modes: int, *, fraction: float = 0.1) -> np.ndarray:
    """``probe`` (n, n) or (m, n, n) grown to ``modes`` incoherent modes (modes, n, n) complex64.

    A new mode is the first mode times a low-order polynomial of the window's coordinates
    (x, y, xy, x^2, y^2, ...), orthogonalised against the modes before it: the shapes a
    partially coherent beam's higher modes take. The new modes share ``fraction`` of the total
    power, halving from one to the next; the total power is kept. Modes already given are kept
    as they are (rescaled by ``1 - fraction`` with the rest when new ones are added).
    """
    probe = np.asarray(probe)
    given = probe[None] if probe.ndim == 2 else probe
    if given.ndim != 3 or given.shape[-1] != given.shape[-2]:
        raise BadInputError(f"probe must be (n, n) or (modes, n, n), got shape {probe.shape!r}")
    n, have = given.shape[-1], given.shape[0]
    if not 1 <= modes <= MAX_PROBE_MODES or modes < have:
        raise BadInputError(
            f"modes must be in [{have}, {MAX_PROBE_MODES}] for a probe of {have} mode(s), got {modes!r}"
        )
    if not 0.0 < fraction < 1.0:
        raise BadInputError(f"fraction must be in (0, 1), got {fraction!r}")
    out = given.astype(np.complex128)
    if modes == have:
        return out.astype(np.complex64)
    power = float(np.sum(np.abs(out) ** 2))
    first = out[0]
    weight = np.abs(first) ** 2
    y, x = np.mgrid[:n, :n] - (n - 1) / 2.0
    rms = np.sqrt(np.sum(weight * (x**2 + y**2)) / max(float(weight.sum()), 1e-30) / 2.0) or 1.0
    x, y = x / rms, y / rms
    shares = 0.5 ** np.arange(1, modes - have + 1)
    shares = fraction * shares / shares.sum()
    new: list[np.ndarray] = []
    for k, share in enumerate(shares):
        mode = first * _MODE_POLYNOMIALS[have - 1 + k](x, y)
        for other in [*out, *new]:
            mode = mode - np.vdot(other, mode) / np.vdot(other, other) * other
        new.append(mode / np.sqrt(np.sum(np.abs(mode) ** 2)) * np.sqrt(share * power))
    out = np.concatenate([out * np.sqrt(1.0 - fraction), np.stack(new)])
    return out.astype(np.complex64)


def complex_object(amplitude: np.ndarray, phase: np.ndarray, *, phase_range_rad: float) -> np.ndarray:
    """Complex transmission ``amplitude * exp(i * phase')``, ``phase'`` = ``phase`` rescaled to [0, phase_range_rad].

    ``amplitude`` is used as given (values in (0, 1] are physical); both images must have one shape.
    """
    amplitude = np.asarray(amplitude, dtype=np.float64)
    phase = np.asarray(phase, dtype=np.float64)
    if amplitude.ndim != 2 or amplitude.shape != phase.shape:
        raise BadInputError(
            f"complex_object: amplitude and phase must be 2D of one shape, got {amplitude.shape!r} and {phase.shape!r}"
        )
    if not (np.all(np.isfinite(amplitude)) and np.all(np.isfinite(phase))):
        raise BadInputError("complex_object: amplitude and phase must be finite (found NaN or inf)")
    span = float(phase.max() - phase.min())
    scaled = (phase - phase.min()) / span * phase_range_rad if span > 0 else np.zeros_like(phase)
    return (amplitude * np.exp(1j * scaled)).astype(np.complex64)


def split_positions(positions: np.ndarray, n: int, object_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Integer top-left corners (N, 2) int64 and sub-pixel rests (N, 2) float64 of probe windows.

    Raises BadInputError (naming ``positions``) when a window leaves the object.
    """
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2 or len(pos) == 0:
        raise BadInputError(f"positions must be (N, 2) (row, col) probe centres with N >= 1, got shape {pos.shape!r}")
    if not np.all(np.isfinite(pos)):
        raise BadInputError("positions contain NaN or inf")
    corner = pos - n / 2.0
    top = np.round(corner).astype(np.int64)
    limit = np.asarray(object_shape[:2]) - n
    bad = np.any((top < 0) | (top > limit), axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise BadInputError(
            f"positions: {int(bad.sum())} probe window(s) of {n} px leave the {tuple(object_shape)} object "
            f"(first: index {i}, centre {tuple(pos[i])!r}); centres must lie within [{n / 2}, size - {n / 2}]"
        )
    return top, corner - top


def axis_ramps(frac: np.ndarray, n: int) -> np.ndarray:
    """1D Fourier ramps (N, 2, n) complex128, ``exp(-2 pi i f k)`` (k: ``fftfreq``) per axis, that
    shift by ``frac`` (N, 2) pixels; a 2D shift's ramp is the outer product of the two."""
    return np.exp(-2j * np.pi * frac[:, :, None] * np.fft.fftfreq(n)[None, None, :])


def shift_ramps(frac: np.ndarray, n: int) -> np.ndarray:
    """Fourier ramps (N, n, n) complex64 that shift an (n, n) array by ``frac`` (N, 2) pixels (:func:`axis_ramps`)."""
    ramps = axis_ramps(frac, n)
    return (ramps[:, 0, :, None] * ramps[:, 1, None, :]).astype(np.complex64)


def shifted_probes(probe: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """The probe shifted by each sub-pixel rest in ``frac`` (N, 2): (N, n, n) complex64."""
    n = probe.shape[-1]
    spec = np.fft.fft2(probe.astype(np.complex64))
    return np.fft.ifft2(spec[None] * shift_ramps(frac, n)).astype(np.complex64)


def extract_patches(obj: np.ndarray, top: np.ndarray, n: int) -> np.ndarray:
    """Object windows (N, n, n) whose top-left corners are ``top`` (N, 2) int."""
    ar = np.arange(n)
    rows = top[:, 0, None, None] + ar[None, :, None]
    cols = top[:, 1, None, None] + ar[None, None, :]
    return obj[rows, cols]


def insert_patches(canvas: np.ndarray, patches: np.ndarray, top: np.ndarray) -> np.ndarray:
    """Add ``patches`` (N, n, n) into ``canvas`` at top-left corners ``top`` (overlaps sum); returns canvas."""
    n = patches.shape[-1]
    ar = np.arange(n)
    rows = top[:, 0, None, None] + ar[None, :, None]
    cols = top[:, 1, None, None] + ar[None, None, :]
    np.add.at(canvas, (rows, cols), patches)
    return canvas


def _check_probe_object(obj: np.ndarray, probe: np.ndarray) -> None:
    if obj.ndim != 2:
        raise BadInputError(f"obj must be a 2D complex image, got shape {obj.shape!r}")
    if probe.ndim not in (2, 3) or probe.shape[-1] != probe.shape[-2]:
        raise BadInputError(f"probe must be square (n, n) or (modes, n, n), got shape {probe.shape!r}")
    if probe.shape[-1] > min(obj.shape):
        raise BadInputError(f"probe {probe.shape!r} is larger than the object {obj.shape!r}")


def far_field(obj: np.ndarray, probe: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Noise-free intensities ``|fftshift(FFT2(shifted probe * patch))|^2``, (N, n, n) float32,
    summed over the modes of a (modes, n, n) probe."""
    obj = np.asarray(obj)
    probe = np.asarray(probe)
    _check_probe_object(obj, probe)
    n = probe.shape[-1]
    top, frac = split_positions(positions, n, obj.shape)
    out = np.zeros((len(top), n, n), dtype=np.float32)
    for mode in probe.reshape(-1, n, n):
        for i in range(0, len(top), _CHUNK):
            sl = slice(i, i + _CHUNK)
            exit_wave = shifted_probes(mode, frac[sl]) * extract_patches(obj, top[sl], n)
            out[sl] += np.abs(np.fft.fftshift(np.fft.fft2(exit_wave), axes=(-2, -1))) ** 2
    return out


def probe_scale(probe: np.ndarray, photons_per_pattern: float) -> float:
    """Factor on the probe's amplitude so a pattern through a transparent object holds ``photons_per_pattern``."""
    n = probe.shape[-1]
    power = float(np.sum(np.abs(probe) ** 2)) * n * n  # Parseval, unnormalised FFT
    if power <= 0:
        raise BadInputError("probe is zero everywhere")
    return float(np.sqrt(photons_per_pattern / power))


def simulate_patterns(
    obj: np.ndarray,
    probe: np.ndarray,
    positions: np.ndarray,
    *,
    photons_per_pattern: float,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Poisson-noisy far-field patterns (N, n, n) float32.

    The probe is scaled by :func:`probe_scale` first: a pattern through a transparent object
    has ``photons_per_pattern`` expected counts (the solver rescales its probe guess to the data).
    """
    if photons_per_pattern <= 0:
        raise BadInputError(f"photons_per_pattern must be > 0, got {photons_per_pattern!r}")
    gen = np.random.default_rng(rng)
    scaled = np.asarray(probe) * probe_scale(np.asarray(probe), photons_per_pattern)
    intensity = far_field(obj, scaled, positions)
    return gen.poisson(intensity).astype(np.float32)
