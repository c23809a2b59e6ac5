"""3D foam phantoms with ground-truth labels and exact parallel-beam projections.

A foam is a solid cylinder (axis along z, the rotation axis) holding non-overlapping
spherical pores and, optionally, dense spherical inclusions. Projections are exact line
integrals through these shapes, sampled at detector pixel centres, so the simulator never
depends on a discretised projector (and never on tomolive's own reconstruction code).

Geometry (shared with :mod:`tomolive.recon`): volumes are indexed ``[z, y, x]``; the object
point ``(x, y)``, in pixels from the rotation axis, projects at angle ``theta`` (radians) to
detector column ``u = center + x cos(theta) + y sin(theta)`` with
``center = (n_cols - 1) / 2``; detector row ``v`` sees slice ``z = v``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import BadInputError

PORE, SOLID, INCLUSION = 0, 1, 2
"""Label values of the ground truth (0 is also the background outside the sample)."""


@dataclass(frozen=True)
class FoamPhantom:
    """A cylinder of solid with spherical pores and inclusions.

    Attributes
    ----------
    shape : tuple of int
        Volume shape ``(n_slices, n_cols, n_cols)``.
    radius : float
        Cylinder radius in pixels.
    centers : ndarray
        Sphere centres ``(n, 3)`` as ``(z, y, x)`` in pixels from the volume centre.
    radii : ndarray
        Sphere radii ``(n,)`` in pixels.
    labels_of_spheres : ndarray
        ``PORE`` or ``INCLUSION`` for each sphere.
    mu_solid, mu_inclusion : float
        Linear attenuation per pixel of each phase (pores and outside are 0).
    """

    shape: tuple[int, int, int]
    radius: float
    centers: np.ndarray
    radii: np.ndarray
    labels_of_spheres: np.ndarray
    mu_solid: float = 0.004
    mu_inclusion: float = 0.012

    @property
    def n_cols(self) -> int:
        return self.shape[2]

    def _mu(self, label: int) -> float:
        return {PORE: 0.0, SOLID: self.mu_solid, INCLUSION: self.mu_inclusion}[int(label)]

    def labels(self) -> np.ndarray:
        """Ground-truth label volume (uint8, ``[z, y, x]``): 0 pore/outside, 1 solid, 2 inclusion."""
        nz, ny, nx = self.shape
        y, x = _grid(ny), _grid(nx)
        inside = (y[:, None] ** 2 + x[None, :] ** 2) <= self.radius**2
        volume = np.broadcast_to(inside * np.uint8(SOLID), self.shape).copy()
        z = _grid(nz)
        for (zc, yc, xc), r, label in zip(self.centers, self.radii, self.labels_of_spheres):
            zs, ys, xs = (_window(axis, c, r) for axis, c in ((z, zc), (y, yc), (x, xc)))
            dist2 = (
                (z[zs, None, None] - zc) ** 2
                + (y[None, ys, None] - yc) ** 2
                + (x[None, None, xs] - xc) ** 2
            )
            view = volume[zs, ys, xs]
            view[dist2 <= r * r] = label
        return volume

    def attenuation(self) -> np.ndarray:
        """Linear attenuation volume (float32, per pixel) matching :meth:`labels`."""
        lut = np.array([self._mu(k) for k in (PORE, SOLID, INCLUSION)], dtype=np.float32)
        return lut[self.labels()]

    def project(self, theta: float) -> np.ndarray:
        """Exact line integrals (float32, ``(n_slices, n_cols)``) at angle ``theta`` radians."""
        nz, _, nx = self.shape
        u = _grid(nx)
        v = _grid(nz)
        chord = 2.0 * np.sqrt(np.clip(self.radius**2 - u**2, 0.0, None))
        sinogram = np.broadcast_to(self.mu_solid * chord, (nz, nx)).astype(np.float32)
        cos_t, sin_t = np.cos(theta), np.sin(theta)
        for (zc, yc, xc), r, label in zip(self.centers, self.radii, self.labels_of_spheres):
            uc = xc * cos_t + yc * sin_t
            rows, cols = _window(v, zc, r), _window(u, uc, r)
            d2 = (v[rows, None] - zc) ** 2 + (u[None, cols] - uc) ** 2
            sphere_chord = 2.0 * np.sqrt(np.clip(r * r - d2, 0.0, None))
            sinogram[rows, cols] += (self._mu(label) - self.mu_solid) * sphere_chord
        return sinogram

    def sinogram(self, angles: np.ndarray) -> np.ndarray:
        """Projections ``(n_angles, n_slices, n_cols)`` at ``angles`` radians (float32)."""
        return np.stack([self.project(theta) for theta in np.asarray(angles, dtype=float)])


def make_foam(
    shape: tuple[int, int, int] = (128, 128, 128),
    *,
    porosity: float = 0.3,
    pore_radius: tuple[float, float] = (0.03, 0.09),
    n_inclusions: int = 10,
    inclusion_radius: tuple[float, float] = (0.03, 0.06),
    seed: int = 0,
    mu_solid: float = 0.004,
    mu_inclusion: float = 0.012,
) -> FoamPhantom:
    """Make a seeded random foam.

    Parameters
    ----------
    shape : (n_slices, n_cols, n_cols)
        Volume shape; the last two must be equal (square slices).
    porosity : float
        Target volume fraction of pores inside the cylinder (0 to ~0.3; random packing
        of non-overlapping spheres jams beyond that and stops short of the target).
    pore_radius, inclusion_radius : (min, max)
        Sphere radii as fractions of ``n_cols``.
    n_inclusions : int
        Number of dense inclusions (0 for a two-phase foam).
    seed : int
        Random seed; the same seed gives the same phantom.
    mu_solid, mu_inclusion : float
        Attenuation per pixel. The defaults give about 40% transmission through the
        middle of a 256-pixel-wide sample.
    """
    nz, ny, nx = shape
    if ny != nx or min(shape) < 8:
        raise BadInputError(
            f"shape must be (n_slices, n, n) with n >= 8 and square slices; got {shape!r}."
        )
    if not 0.0 <= porosity < 0.6:
        raise BadInputError(f"porosity must be in [0, 0.6); got {porosity!r}.")
    rng = np.random.default_rng(seed)
    radius = 0.42 * nx
    cylinder_volume = np.pi * radius**2 * nz
    centers: list[np.ndarray] = []
    radii: list[float] = []
    labels: list[int] = []

    def place(r: float, label: int, tries: int = 64) -> bool:
        """Put a sphere of radius ``r`` at the first of ``tries`` random spots where it fits."""
        rho = (radius - r - 1.0) * np.sqrt(rng.uniform(size=tries))
        phi = rng.uniform(0, 2 * np.pi, size=tries)
        z = rng.uniform(-nz / 2, nz / 2, size=tries)
        candidates = np.stack([z, rho * np.sin(phi), rho * np.cos(phi)], axis=1)
        if centers:
            distance = np.linalg.norm(candidates[:, None, :] - np.asarray(centers)[None], axis=2)
            fits = (distance - np.asarray(radii)[None] - r).min(axis=1) >= 1.5
        else:
            fits = np.ones(tries, dtype=bool)
        if not fits.any():
            return False
        centers.append(candidates[np.argmax(fits)])
        radii.append(r)
        labels.append(label)
        return True

    for _ in range(n_inclusions):
        place(rng.uniform(*inclusion_radius) * nx, INCLUSION)
    # Random sequential addition jams long before the target with one size range, so a
    # pore that does not fit is retried smaller (down to half the minimum radius).
    pore_volume = 0.0
    smallest = 0.5 * pore_radius[0] * nx
    misses = 0
    while pore_volume < porosity * cylinder_volume and misses < 20:
        r = rng.uniform(*pore_radius) * nx
        while r >= smallest and not place(r, PORE):
            r *= 0.8
        if r >= smallest:
            pore_volume += _volume_inside_slab(centers[-1][0], r, nz)
        else:
            misses += 1
    return FoamPhantom(
        shape=tuple(int(s) for s in shape),
        radius=float(radius),
        centers=np.asarray(centers, dtype=float).reshape(-1, 3),
        radii=np.asarray(radii, dtype=float),
        labels_of_spheres=np.asarray(labels, dtype=np.uint8),
        mu_solid=mu_solid,
        mu_inclusion=mu_inclusion,
    )


def _grid(n: int) -> np.ndarray:
    """Pixel-centre coordinates of ``n`` pixels, centred on zero."""
    return np.arange(n, dtype=float) - (n - 1) / 2.0


def _window(axis: np.ndarray, center: float, radius: float) -> slice:
    """Index range of ``axis`` (sorted grid) within ``radius`` of ``center``."""
    lo = np.searchsorted(axis, center - radius, side="left")
    hi = np.searchsorted(axis, center + radius, side="right")
    return slice(int(lo), int(hi))


def _volume_inside_slab(zc: float, r: float, nz: int) -> float:
    """Volume of a sphere clipped to the slab ``|z| <= nz / 2``."""
    lo, hi = max(zc - r, -nz / 2) - zc, min(zc + r, nz / 2) - zc
    if hi <= lo:
        return 0.0
    return float(np.pi * ((r * r * hi - hi**3 / 3) - (r * r * lo - lo**3 / 3)))


SHEPP_LOGAN = (
    (1.0, 0.69, 0.92, 0.0, 0.0, 0.0),
    (-0.8, 0.6624, 0.874, 0.0, -0.0184, 0.0),
    (-0.2, 0.11, 0.31, 0.22, 0.0, -18.0),
    (-0.2, 0.16, 0.41, -0.22, 0.0, 18.0),
    (0.1, 0.21, 0.25, 0.0, 0.35, 0.0),
    (0.1, 0.046, 0.046, 0.0, 0.1, 0.0),
    (0.1, 0.046, 0.046, 0.0, -0.1, 0.0),
    (0.1, 0.046, 0.023, -0.08, -0.605, 0.0),
    (0.1, 0.023, 0.023, 0.0, -0.606, 0.0),
    (0.1, 0.023, 0.046, 0.06, -0.605, 0.0),
)
"""Modified Shepp-Logan (Toft): rho, a, b, x0, y0, phi (degrees), in unit-disc coordinates."""


def shepp_logan_ellipses(n: int, mu_scale: float) -> list[tuple[float, ...]]:
    """Shepp-Logan ellipses in pixels around the rotation axis for an ``n``-wide detector.

    Each ellipse's density is ``rho * mu_scale`` (attenuation per pixel); angles in radians.
    """
    r = n / 2.0
    return [(rho * mu_scale, a * r, b * r, x * r, y * r, np.radians(phi))
            for rho, a, b, x, y, phi in SHEPP_LOGAN]  # fmt: skip


def project_ellipses(ellipses, angles: np.ndarray, n_cols: int, center: float) -> np.ndarray:
    """Exact line integrals ``(n_angles, n_cols)`` (float64) of 2D ellipses.

    The point ``(x, y)`` lands on column ``center + x cos(theta) + y sin(theta)``.
    """
    th = np.asarray(angles, dtype=np.float64)[:, None]
    s = (np.arange(n_cols) - center)[None, :]
    sino = np.zeros((th.shape[0], n_cols))
    for rho, a, b, x0, y0, phi in ellipses:
        sp = s - (x0 * np.cos(th) + y0 * np.sin(th))
        a2 = (a * np.cos(th - phi)) ** 2 + (b * np.sin(th - phi)) ** 2
        sino += 2.0 * rho * a * b / a2 * np.sqrt(np.clip(a2 - sp**2, 0.0, None))
    return sino
