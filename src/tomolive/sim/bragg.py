"""Far-field diffraction frames with Bragg peaks, and their ground truth (pure numpy).

A rotation sweep of a few grains: each reflection lights up over a few frames around its
own rotation angle (a Gaussian rocking curve) and drifts slightly across the detector as
the sample turns. Each peak is a pseudo-Voigt (Gaussian and Lorentzian of one FWHM, mixed
by ``eta``) of varying width, mixing and intensity at a sub-pixel centre, on a smooth
background, with Poisson and Gaussian read noise. Some reflections come in close pairs
whose peaks overlap. The peak shape is a setting (:class:`PeakShape`) that may change
mid-series (:meth:`BraggSimulator.set_shape`), as when the setup changes.

Pixel ``(i, j)`` has its centre at ``(i, j)``; centres are ``(row, col)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import BadInputError

FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


@dataclass(frozen=True)
class PeakShape:
    """The ranges peaks are drawn from; ``width`` is the Gaussian sigma in pixels (the
    Lorentzian has the same FWHM), ``eta`` the Lorentzian fraction, ``amplitude`` the peak
    height in counts above the background."""

    width: tuple[float, float] = (0.8, 1.4)
    eta: tuple[float, float] = (0.0, 0.6)
    amplitude: tuple[float, float] = (150.0, 1500.0)

    def __post_init__(self) -> None:
        for name, (low, high) in asdict(self).items():
            if not (np.isfinite(low) and np.isfinite(high) and 0 <= low <= high):
                raise BadInputError(f"PeakShape.{name} must be a range 0 <= low <= high; got {(low, high)!r}.")
        if self.eta[1] > 1:
            raise BadInputError(f"PeakShape.eta must lie in [0, 1]; got {self.eta!r}.")

    def as_dict(self) -> dict[str, list[float]]:
        return {name: list(value) for name, value in asdict(self).items()}


@dataclass(frozen=True)
class Noise:
    """Detector noise: a background level (counts, with a gentle gradient), read noise
    (Gaussian sigma, counts) and Poisson counting noise (``poisson=False`` for none)."""

    background: float = 10.0
    read_noise: float = 2.0
    poisson: bool = True


def pseudo_voigt(
    rows: np.ndarray, cols: np.ndarray, row: float, col: float, amplitude: float, width: float, eta: float
) -> np.ndarray:
    """A pseudo-Voigt of height ``amplitude`` at ``(row, col)``: ``eta`` Lorentzian + ``1 - eta``
    Gaussian (sigma ``width``), both of one FWHM, evaluated at the given pixel coordinates."""
    r2 = (rows - row) ** 2 + (cols - col) ** 2
    gamma = FWHM_PER_SIGMA * width / 2.0
    gauss = np.exp(-r2 / (2.0 * width**2))
    lorentz = 1.0 / (1.0 + r2 / gamma**2)
    return amplitude * (eta * lorentz + (1.0 - eta) * gauss)


@dataclass
class Reflection:
    """One reflection's path through the sweep: where it is at ``omega0`` and how it moves."""

    row: float
    col: float
    omega0: float
    drift: tuple[float, float]
    amplitude: float
    width: float
    eta: float


@dataclass
class BraggFrame:
    """One frame and the peaks in it: ``truth`` has one row per peak, columns
    ``(row, col, amplitude, width, eta)``."""

    image: np.ndarray
    truth: np.ndarray
    omega: float


@dataclass
class BraggSimulator:
    """Frames of a rotation sweep with Bragg peaks.

    Parameters
    ----------
    shape : (rows, cols)
        Detector shape.
    n_reflections : int
        Reflections over the full sweep ``omega_range`` (degrees).
    rocking_width : float
        Rocking-curve sigma in degrees: a reflection shows in frames within about 2 sigma.
    pair_fraction : float
        Fraction of reflections that get a partner 2.5-4.5 px away (overlapping peaks).
    margin : float
        Reflections keep this far (px) from the detector edge; 0 lets them sit on it.
    """

    shape: tuple[int, int] = (128, 128)
    n_reflections: int = 400
    omega_range: tuple[float, float] = (0.0, 180.0)
    rocking_width: float = 0.6
    pair_fraction: float = 0.15
    margin: float = 6.0
    peak_shape: PeakShape = field(default_factory=PeakShape)
    noise: Noise = field(default_factory=Noise)
    seed: int = 0

    def __post_init__(self) -> None:
        rows, cols = self.shape
        if rows < 16 or cols < 16:
            raise BadInputError(f"detector shape must be at least 16 x 16 pixels; got {self.shape!r}.")
        self._rng = np.random.default_rng(self.seed)
        self.reflections = self._draw_reflections()
        yy, xx = np.mgrid[0:rows, 0:cols]
        self._grid = (yy.astype(np.float64), xx.astype(np.float64))
        self._background = self.noise.background * (1.0 + 0.3 * xx / cols + 0.2 * yy / rows)

    def _draw_reflections(self) -> list[Reflection]:
        rng, (rows, cols) = self._rng, self.shape
        lo, hi = self.omega_range
        out: list[Reflection] = []
        for _ in range(self.n_reflections):
            centre = rng.uniform((self.margin, self.margin), (rows - 1 - self.margin, cols - 1 - self.margin))
            omega0 = rng.uniform(lo, hi)
            out.append(self._reflection(centre, omega0))
            if rng.random() < self.pair_fraction:
                angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(2.5, 4.5)
                partner = centre + dist * np.array([np.sin(angle), np.cos(angle)])
                partner = np.clip(partner, self.margin, np.array([rows, cols]) - 1 - self.margin)
                out.append(self._reflection(partner, omega0 + rng.normal(0, self.rocking_width / 3)))
        return out

    def _reflection(self, centre: np.ndarray, omega0: float) -> Reflection:
        rng, shape = self._rng, self.peak_shape
        return Reflection(
            row=float(centre[0]),
            col=float(centre[1]),
            omega0=float(omega0),
            drift=(float(rng.normal(0, 0.05)), float(rng.normal(0, 0.05))),  # px per degree
            amplitude=float(rng.uniform(*shape.amplitude)),
            width=float(rng.uniform(*shape.width)),
            eta=float(rng.uniform(*shape.eta)),
        )

    def set_shape(self, peak_shape: PeakShape) -> None:
        """Change the peak shape from now on ("setup changed"): every reflection's width,
        mixing and amplitude are drawn anew from ``peak_shape``'s ranges."""
        self.peak_shape = peak_shape
        for k, refl in enumerate(self.reflections):
            fresh = self._reflection(np.array([refl.row, refl.col]), refl.omega0)
            self.reflections[k] = replace(fresh, drift=refl.drift)

    def truth_at(self, omega: float) -> np.ndarray:
        """Peaks visible at ``omega`` (degrees): rows ``(row, col, amplitude, width, eta)``."""
        rows: list[tuple[float, ...]] = []
        for refl in self.reflections:
            d = omega - refl.omega0
            weight = np.exp(-(d**2) / (2 * self.rocking_width**2))
            if weight < 0.05:
                continue
            rows.append(
                (
                    refl.row + refl.drift[0] * d,
                    refl.col + refl.drift[1] * d,
                    refl.amplitude * weight,
                    refl.width,
                    refl.eta,
                )
            )
        return np.array(rows, dtype=np.float64).reshape(-1, 5)

    def frame(self, omega: float) -> BraggFrame:
        """The detector image at ``omega`` (float64 counts, before any clipping) and its peaks."""
        truth = self.truth_at(omega)
        expected = self._background.copy()
        for row, col, amplitude, width, eta in truth:
            expected += _stamp(self._grid, row, col, amplitude, width, eta)
        image = self._rng.poisson(expected).astype(np.float64) if self.noise.poisson else expected
        if self.noise.read_noise > 0:
            image = image + self._rng.normal(0.0, self.noise.read_noise, image.shape)
        return BraggFrame(image, truth, float(omega))

    def sweep(self, n_frames: int) -> list[BraggFrame]:
        """``n_frames`` frames evenly over ``omega_range``."""
        return [self.frame(omega) for omega in np.linspace(*self.omega_range, n_frames)]

    def settings(self) -> dict[str, Any]:
        """What made these frames, for a start document or a benchmark record."""
        return {
            "shape": list(self.shape),
            "n_reflections": self.n_reflections,
            "rocking_width": self.rocking_width,
            "pair_fraction": self.pair_fraction,
            "peak_shape": self.peak_shape.as_dict(),
            "noise": asdict(self.noise),
            "seed": self.seed,
        }


def _stamp(grid: tuple[np.ndarray, np.ndarray], row: float, col: float, amp: float, width: float, eta: float):
    """A peak added over a window around its centre (the Lorentzian tail beyond is below noise)."""
    yy, xx = grid
    half = int(np.ceil(8 * width)) + 2
    r0, r1 = max(0, int(row) - half), min(yy.shape[0], int(row) + half + 1)
    c0, c1 = max(0, int(col) - half), min(yy.shape[1], int(col) + half + 1)
    out = np.zeros_like(yy)
    out[r0:r1, c0:c1] = pseudo_voigt(yy[r0:r1, c0:c1], xx[r0:r1, c0:c1], row, col, amp, width, eta)
    return out


def simulate_patches(
    n: int,
    *,
    size: int = 11,
    peak_shape: PeakShape | None = None,
    noise: Noise | None = None,
    neighbour_fraction: float = 0.15,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` single-peak patches as peak finding cuts them: centred on the brightest pixel
    near the peak (so noise may put the true centre over half a pixel off the middle);
    ``neighbour_fraction`` of them with a weaker neighbour peak 3-5 px away.

    Returns ``(patches (n, size, size) float32, centres (n, 2) float64)`` in patch pixels.
    Training data for :mod:`tomolive.techniques.bragg.braggnn` and benchmarks.
    """
    shape, noise = peak_shape or PeakShape(), noise or Noise()
    rng = np.random.default_rng(seed)
    canvas, pad = size + 4, 2  # drawn on a larger canvas, then cut around the brightest pixel
    yy, xx = np.mgrid[0:canvas, 0:canvas].astype(np.float64)
    centres = canvas // 2 + rng.uniform(-1.0, 1.0, (n, 2))
    amp = rng.uniform(*shape.amplitude, n)
    width = rng.uniform(*shape.width, n)
    eta = rng.uniform(*shape.eta, n)
    r2 = (yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2
    expected = _profile(r2, amp, width, eta) + noise.background * rng.uniform(0.8, 1.5, n)[:, None, None]
    near = rng.random(n) < neighbour_fraction
    angle, dist = rng.uniform(0, 2 * np.pi, n), rng.uniform(3.0, 5.0, n)
    other = centres + dist[:, None] * np.stack([np.sin(angle), np.cos(angle)], axis=1)
    r2o = (yy[None] - other[:, 0, None, None]) ** 2 + (xx[None] - other[:, 1, None, None]) ** 2
    expected += near[:, None, None] * _profile(r2o, amp * rng.uniform(0.2, 0.7, n), width, eta)
    images = rng.poisson(expected).astype(np.float64) if noise.poisson else expected
    images = images + rng.normal(0.0, noise.read_noise, images.shape)
    inner = images[:, pad : canvas - pad, pad : canvas - pad][:, pad : pad + 5, pad : pad + 5]
    top = np.stack(np.unravel_index(inner.reshape(n, -1).argmax(axis=1), (5, 5)), axis=1) + 2 * pad
    origins = top - size // 2
    index = np.arange(size)
    rows = (origins[:, 0, None] + index)[:, :, None]
    cols = (origins[:, 1, None] + index)[:, None, :]
    patches = images[np.arange(n)[:, None, None], rows, cols]
    return patches.astype(np.float32), centres - origins


def _profile(r2: np.ndarray, amp: np.ndarray, width: np.ndarray, eta: np.ndarray) -> np.ndarray:
    """Vectorised :func:`pseudo_voigt` over a stack of squared-distance maps."""
    w, e, a = width[:, None, None], eta[:, None, None], amp[:, None, None]
    gamma = FWHM_PER_SIGMA * w / 2.0
    return a * (e / (1.0 + r2 / gamma**2) + (1.0 - e) * np.exp(-r2 / (2.0 * w**2)))
