"""3D foam and rock phantoms with ground-truth labels and exact parallel-beam projections.

A foam is a solid cylinder (axis along z, the rotation axis) holding non-overlapping
spherical pores and, optionally, dense spherical inclusions. A rock (:func:`make_rock`) is
a cylinder of matrix holding non-overlapping ellipsoidal grains, pores and inclusions.
Projections are exact line integrals through these shapes, sampled at detector pixel
centres, so the simulator never depends on a discretised projector (and never on
tomolive's own reconstruction code). :func:`measure` adds photon noise and detector
stripes (ring artefacts) to them.

Geometry (shared with :mod:`tomolive.recon`): volumes are indexed ``[z, y, x]``; the object
point ``(x, y)``, in pixels from the rotation axis, projects at angle ``theta`` (radians) to
detector column ``u = center + x cos(theta) + y sin(theta)`` with
``center = (n_cols - 1) / 2``; detector row ``v`` sees slice ``z = v``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BadInputError

PORE, SOLID, INCLUSION = 0, 1, 2
"""Label values of the ground truth (0 is also the background outside the sample)."""


class _Phantom:
    """What both phantoms share: a volume ``shape`` and sinograms made of exact projections."""

    shape: tuple[int, int, int]

    @property
    def n_cols(self) -> int:
        return self.shape[2]

    def project(self, theta: float) -> np.ndarray:
        raise NotImplementedError

    def sinogram(self, angles: np.ndarray) -> np.ndarray:
        """Projections ``(n_angles, n_slices, n_cols)`` at ``angles`` radians (float32)."""
        return np.stack([self.project(theta) for theta in np.asarray(angles, dtype=float)])


@dataclass(frozen=True)
class FoamPhantom(_Phantom):
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

    def _mu_of_labels(self) -> np.ndarray:
        """Attenuation of each label, indexed by ``PORE``, ``SOLID`` and ``INCLUSION``."""
        return np.array([self._mu(k) for k in (PORE, SOLID, INCLUSION)])

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
            dist2 = (z[zs, None, None] - zc) ** 2 + (y[None, ys, None] - yc) ** 2 + (x[None, None, xs] - xc) ** 2
            view = volume[zs, ys, xs]
            view[dist2 <= r * r] = label
        return volume

    def attenuation(self) -> np.ndarray:
        """Linear attenuation volume (float32, per pixel) matching :meth:`labels`."""
        lut = self._mu_of_labels().astype(np.float32)
        return lut[self.labels()]

    def project(self, theta: float) -> np.ndarray:
        """Exact line integrals (float32, ``(n_slices, n_cols)``) at angle ``theta`` radians.

        Small spheres' chords are summed in batches, each on a square of pixels around its
        projected centre, with one ``bincount`` per batch, which is several times faster than one
        sphere at a time (docs/measurements/moves.md).
        """
        nz, _, nx = self.shape
        u, v = _grid(nx), _grid(nz)
        chord = 2.0 * np.sqrt(np.clip(self.radius**2 - u**2, 0.0, None))
        sinogram = np.broadcast_to(self.mu_solid * chord, (nz, nx)).astype(np.float64)
        zc = self.centers[:, 0]
        uc = self.centers[:, 2] * np.cos(theta) + self.centers[:, 1] * np.sin(theta)
        excess = self._mu_of_labels()[self.labels_of_spheres] - self.mu_solid
        reach = 4 * np.ceil((np.ceil(self.radii) + 1) / 4).astype(int)  # box half-widths, 4 px steps
        for half_width in np.unique(reach):
            same = np.flatnonzero(reach == half_width)
            if half_width > _SMALL_SPHERE_PX:  # its pixels outweigh the calls: one at a time
                for i in same:
                    _add_chord(sinogram, v, u, self.radii[i], zc[i], uc[i], excess[i])
            else:
                offsets = np.arange(-half_width, half_width + 1)
                for batch in np.array_split(same, -(-len(same) * len(offsets) ** 2 // _PROJECT_BATCH_PIXELS)):
                    sinogram += self._chords(batch, offsets, zc, uc, excess)
        return sinogram.astype(np.float32)

    def _chords(
        self, batch: np.ndarray, offsets: np.ndarray, zc: np.ndarray, uc: np.ndarray, excess: np.ndarray
    ) -> np.ndarray:
        """What the spheres ``batch`` add to a projection (float64 ``(n_slices, n_cols)``), each
        on the pixels within ``offsets`` of its projected centre ``(zc, uc)``."""
        nz, _, nx = self.shape
        rows = np.rint(zc[batch] + (nz - 1) / 2)[:, None].astype(int) + offsets  # (spheres, box)
        cols = np.rint(uc[batch] + (nx - 1) / 2)[:, None].astype(int) + offsets
        d2 = (rows - (nz - 1) / 2 - zc[batch, None])[:, :, None] ** 2 + (cols - (nx - 1) / 2 - uc[batch, None])[
            :, None, :
        ] ** 2
        r2 = (self.radii[batch] ** 2)[:, None, None]
        inside = (d2 < r2) & ((rows >= 0) & (rows < nz))[:, :, None] & ((cols >= 0) & (cols < nx))[:, None, :]
        weights = (excess[batch, None, None] * 2.0 * np.sqrt(r2 - d2, where=inside, out=np.zeros_like(d2)))[inside]
        pixels = (rows[:, :, None] * nx + cols[:, None, :])[inside]
        return np.bincount(pixels, weights=weights, minlength=nz * nx).reshape(nz, nx)


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
        raise BadInputError(f"shape must be (n_slices, n, n) with n >= 8 and square slices; got {shape!r}.")
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
        shape=_shape3(shape),
        radius=float(radius),
        centers=np.asarray(centers, dtype=float).reshape(-1, 3),
        radii=np.asarray(radii, dtype=float),
        labels_of_spheres=np.asarray(labels, dtype=np.uint8),
        mu_solid=mu_solid,
        mu_inclusion=mu_inclusion,
    )


@dataclass(frozen=True)
class RockPhantom(_Phantom):
    """A cylindrical rock core: a solid matrix holding ellipsoidal grains, pores and inclusions.

    Grains are solid (label ``SOLID``) whose attenuation differs a little from the matrix's,
    so the solid phase has texture; pores are elongated or flattened ellipsoids (vugs and
    cracks); inclusions are small dense ellipsoids (e.g. pyrite in sandstone). Ellipsoids never
    overlap, so projections are exact sums of chords, as for :class:`FoamPhantom`, with the
    same geometry.

    Attributes
    ----------
    shape : tuple of int
        Volume shape ``(n_slices, n_cols, n_cols)``.
    radius : float
        Cylinder radius in pixels.
    centers : ndarray
        Ellipsoid centres ``(n, 3)`` as ``(z, y, x)`` in pixels from the volume centre.
    semi_axes : ndarray
        ``(n, 3)`` semi-axis lengths in pixels along each ellipsoid's principal directions.
    rotations : ndarray
        ``(n, 3, 3)``; column ``k`` is principal direction ``k`` in ``(z, y, x)`` coordinates.
    labels_of_shapes : ndarray
        ``PORE``, ``SOLID`` (grain) or ``INCLUSION`` for each ellipsoid.
    mus : ndarray
        Attenuation per pixel of each ellipsoid.
    mu_matrix : float
        Attenuation per pixel of the matrix between the ellipsoids.
    """

    shape: tuple[int, int, int]
    radius: float
    centers: np.ndarray
    semi_axes: np.ndarray
    rotations: np.ndarray
    labels_of_shapes: np.ndarray
    mus: np.ndarray
    mu_matrix: float = 0.005

    def _forms(self) -> np.ndarray:
        """Quadratic forms ``M = R diag(1 / a^2) R^T``: a point ``p`` is inside if ``p M p <= 1``."""
        inv = 1.0 / self.semi_axes**2
        return np.einsum("nik,nk,njk->nij", self.rotations, inv, self.rotations)

    def _paint(self, volume: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Write ``values[k]`` into the voxels (centres) inside ellipsoid ``k``."""
        nz, ny, nx = self.shape
        grids = (_grid(nz), _grid(ny), _grid(nx))
        for center, form, reach, value in zip(self.centers, self._forms(), self.semi_axes.max(1), values):
            windows = [_window(g, c, reach) for g, c in zip(grids, center)]
            offsets = np.meshgrid(*(g[w] - c for g, w, c in zip(grids, windows, center)), indexing="ij")
            quad = sum(form[i, j] * offsets[i] * offsets[j] for i in range(3) for j in range(3))
            view = volume[tuple(windows)]
            view[quad <= 1.0] = value
        return volume

    def _cylinder(self, fill: float, dtype: type) -> np.ndarray:
        _nz, ny, nx = self.shape
        y, x = _grid(ny), _grid(nx)
        inside = (y[:, None] ** 2 + x[None, :] ** 2) <= self.radius**2
        return np.broadcast_to((inside * fill).astype(dtype), self.shape).copy()

    def labels(self) -> np.ndarray:
        """Ground-truth label volume (uint8, ``[z, y, x]``): 0 pore/outside, 1 solid, 2 inclusion."""
        return self._paint(self._cylinder(SOLID, np.uint8), self.labels_of_shapes)

    def attenuation(self) -> np.ndarray:
        """Linear attenuation volume (float32, per pixel), grains included."""
        return self._paint(self._cylinder(self.mu_matrix, np.float32), self.mus.astype(np.float32))

    def project(self, theta: float) -> np.ndarray:
        """Exact line integrals (float32, ``(n_slices, n_cols)``) at angle ``theta`` radians."""
        nz, _, nx = self.shape
        u, v = _grid(nx), _grid(nz)
        chord = 2.0 * np.sqrt(np.clip(self.radius**2 - u**2, 0.0, None))
        sinogram = np.broadcast_to(self.mu_matrix * chord, (nz, nx)).astype(np.float32)
        cos_t, sin_t = np.cos(theta), np.sin(theta)
        direction = np.array([0.0, cos_t, -sin_t])  # along the ray, in (z, y, x)
        for center, form, reach, mu in zip(self.centers, self._forms(), self.semi_axes.max(1), self.mus):
            zc, yc, xc = center
            rows, cols = _window(v, zc, reach), _window(u, xc * cos_t + yc * sin_t, reach)
            w = (v[rows, None] - zc, u[None, cols] * sin_t - yc, u[None, cols] * cos_t - xc)
            md = form @ direction
            a = float(direction @ md)
            half_b = md[0] * w[0] + md[1] * w[1] + md[2] * w[2]
            c = sum(form[i, j] * w[i] * w[j] for i in range(3) for j in range(3)) - 1.0
            ellipsoid_chord = 2.0 * np.sqrt(np.clip(half_b**2 - a * c, 0.0, None)) / a
            sinogram[rows, cols] += (mu - self.mu_matrix) * ellipsoid_chord
        return sinogram


def make_rock(
    shape: tuple[int, int, int] = (128, 128, 128),
    *,
    porosity: float = 0.12,
    pore_radius: tuple[float, float] = (0.03, 0.1),
    pore_aspect: tuple[float, float] = (0.3, 1.0),
    n_inclusions: int = 20,
    inclusion_radius: tuple[float, float] = (0.02, 0.045),
    grain_radius: tuple[float, float] = (0.02, 0.06),
    grain_contrast: float = 0.2,
    seed: int = 0,
    mu_matrix: float = 0.005,
    mu_inclusion: float = 0.015,
) -> RockPhantom:
    """Make a seeded random rock core.

    Inclusions are placed first, then pores up to the target porosity (retried smaller
    when they no longer fit, as in :func:`make_foam`), then grains fill what space is left.
    Ellipsoids are kept apart by their bounding spheres, 1.5 pixels at least.

    Parameters
    ----------
    shape : (n_slices, n_cols, n_cols)
        Volume shape; the last two must be equal (square slices).
    porosity : float
        Target volume fraction of pores inside the cylinder, in [0, 0.3].
    pore_radius, inclusion_radius, grain_radius : (min, max)
        Longest semi-axis as fractions of ``n_cols``.
    pore_aspect : (min, max)
        Ratio of each shorter pore semi-axis to the longest (1 is a sphere, 0.3 a crack).
    n_inclusions : int
        Number of dense inclusions (0 for a two-phase rock).
    grain_contrast : float
        Grains' attenuation is ``mu_matrix * (1 + g)`` with ``|g| <= grain_contrast``, < 0.5.
    seed : int
        Random seed; the same seed gives the same rock.
    mu_matrix, mu_inclusion : float
        Attenuation per pixel of the matrix and of the inclusions.
    """
    nz, ny, nx = shape
    if ny != nx or min(shape) < 8:
        raise BadInputError(f"shape must be (n_slices, n, n) with n >= 8 and square slices; got {shape!r}.")
    if not 0.0 <= porosity <= 0.3:
        raise BadInputError(f"porosity must be in [0, 0.3]; got {porosity!r}.")
    if not 0.0 <= grain_contrast < 0.5:
        raise BadInputError(f"grain_contrast must be in [0, 0.5); got {grain_contrast!r}.")
    packer = _EllipsoidPacker(np.random.default_rng(seed), shape, 0.42 * nx)
    for _ in range(n_inclusions):
        packer.place(packer.rng.uniform(*inclusion_radius) * nx, (0.5, 1.0), INCLUSION, mu_inclusion)
    target = porosity * np.pi * packer.radius**2 * nz
    while packer.volume_of(PORE) < target and packer.fill(pore_radius, pore_aspect, PORE, 0.0):
        pass
    rng = packer.rng
    while packer.fill(grain_radius, (0.6, 1.0), SOLID, mu_matrix * (1 + rng.uniform(-1, 1) * grain_contrast)):
        pass
    return packer.phantom(mu_matrix)


class _EllipsoidPacker:
    """Random sequential addition of non-overlapping ellipsoids (by bounding spheres) in a cylinder."""

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int, int], radius: float) -> None:
        self.rng, self.shape, self.radius = rng, _shape3(shape), float(radius)
        self.centers: list[np.ndarray] = []
        self.reach: list[float] = []
        self.axes: list[np.ndarray] = []
        self.rotations: list[np.ndarray] = []
        self.labels: list[int] = []
        self.mus: list[float] = []
        self._volumes: dict[int, float] = {}
        self._misses: dict[int, int] = {}

    def place(self, r: float, aspect: tuple[float, float], label: int, mu: float, tries: int = 64) -> bool:
        """Put one ellipsoid of longest semi-axis ``r`` at the first of ``tries`` spots where it fits."""
        nz = self.shape[0]
        rho = (self.radius - r - 1.0) * np.sqrt(self.rng.uniform(size=tries))
        phi = self.rng.uniform(0, 2 * np.pi, size=tries)
        z = self.rng.uniform(-nz / 2, nz / 2, size=tries)
        candidates = np.stack([z, rho * np.sin(phi), rho * np.cos(phi)], axis=1)
        fits = rho >= 0
        if self.centers:
            distance = np.linalg.norm(candidates[:, None, :] - np.asarray(self.centers)[None], axis=2)
            fits &= (distance - np.asarray(self.reach)[None] - r).min(axis=1) >= 1.5
        if not fits.any():
            return False
        semi_axes = r * np.concatenate([[1.0], self.rng.uniform(*aspect, size=2)])
        q, upper = np.linalg.qr(self.rng.standard_normal((3, 3)))
        self.centers.append(candidates[np.argmax(fits)])
        self.reach.append(r)
        self.axes.append(semi_axes)
        self.rotations.append(q * np.sign(np.diag(upper)))
        self.labels.append(label)
        self.mus.append(mu)
        clipped = _volume_inside_slab(self.centers[-1][0], r, nz) / (4.0 / 3.0 * np.pi * r**3)
        volume = 4.0 / 3.0 * np.pi * float(np.prod(semi_axes)) * clipped
        self._volumes[label] = self._volumes.get(label, 0.0) + volume
        return True

    def fill(self, radius: tuple[float, float], aspect: tuple[float, float], label: int, mu: float) -> bool:
        """Place one more ``label`` ellipsoid, shrinking it until it fits; False after 20 misses."""
        n = self.shape[2]
        r = self.rng.uniform(*radius) * n
        while r >= 0.5 * radius[0] * n and not self.place(r, aspect, label, mu):
            r *= 0.8
        if r < 0.5 * radius[0] * n:
            self._misses[label] = self._misses.get(label, 0) + 1
        return self._misses.get(label, 0) < 20

    def volume_of(self, label: int) -> float:
        """Volume (pixels) of the ``label`` ellipsoids placed so far, clipped to the slab."""
        return self._volumes.get(label, 0.0)

    def phantom(self, mu_matrix: float) -> RockPhantom:
        return RockPhantom(
            shape=self.shape,
            radius=self.radius,
            centers=np.asarray(self.centers, dtype=float).reshape(-1, 3),
            semi_axes=np.asarray(self.axes, dtype=float).reshape(-1, 3),
            rotations=np.asarray(self.rotations, dtype=float).reshape(-1, 3, 3),
            labels_of_shapes=np.asarray(self.labels, dtype=np.uint8),
            mus=np.asarray(self.mus, dtype=float),
            mu_matrix=mu_matrix,
        )


def measure(
    line_integrals: np.ndarray,
    *,
    photons: float | None = None,
    stripe_fraction: float = 0.0,
    stripe_strength: float = 0.05,
    seed: int = 0,
) -> np.ndarray:
    """Line integrals as a detector returns them after flat/dark correction (float32).

    A simpler, faster stand-in for the simulated detector in :mod:`tomolive.sim.devices`, for
    making many training and test scans.

    Parameters
    ----------
    line_integrals : ndarray
        Exact projections ``(n_angles, n_rows, n_cols)``, e.g. from ``phantom.sinogram``.
    photons : float, optional
        Mean open-beam counts per pixel; Poisson noise (counts floored at 0.5). None for
        noise-free data.
    stripe_fraction : float
        Fraction of detector pixels whose gain differs from the flat field's; each
        gives a stripe in its sinogram and a ring in its reconstructed slice.
    stripe_strength : float
        Standard deviation of those pixels' relative gain error.
    seed : int
        Seed of the noise and of the defective pixels.
    """
    p = np.asarray(line_integrals, dtype=np.float64)
    if p.ndim != 3:
        raise BadInputError(f"line_integrals: expected (n_angles, n_rows, n_cols), got shape {p.shape!r}")
    if photons is not None and not photons > 0:
        raise BadInputError(f"photons must be positive or None (noise-free); got {photons!r}.")
    if not 0.0 <= stripe_fraction <= 1.0:
        raise BadInputError(f"stripe_fraction must be in [0, 1]; got {stripe_fraction!r}.")
    rng = np.random.default_rng(seed)
    gain = np.ones(p.shape[1:])
    bad = rng.random(p.shape[1:]) < stripe_fraction
    gain[bad] = np.clip(1.0 + stripe_strength * rng.standard_normal(int(bad.sum())), 0.05, None)
    transmission = np.exp(-p) * gain
    if photons is not None:
        transmission = np.maximum(rng.poisson(photons * transmission), 0.5) / photons
    return (-np.log(transmission)).astype(np.float32)


_SMALL_SPHERE_PX = 16
"""Spheres up to this radius (rounded up) are projected together, in batches of up to
:data:`_PROJECT_BATCH_PIXELS` pixels (spheres x box); larger ones one by one."""
_PROJECT_BATCH_PIXELS = 2**18


def _add_chord(
    sinogram: np.ndarray, v: np.ndarray, u: np.ndarray, r: float, zc: float, uc: float, excess: float
) -> None:
    """Add one sphere of radius ``r`` projected at ``(zc, uc)`` to ``sinogram`` (rows on grid
    ``v``, columns on ``u``), on its window."""
    rows, cols = _window(v, zc, r), _window(u, uc, r)
    d2 = (v[rows, None] - zc) ** 2 + (u[None, cols] - uc) ** 2
    sinogram[rows, cols] += excess * 2.0 * np.sqrt(np.clip(r * r - d2, 0.0, None))


def _shape3(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """A volume shape as three Python ints (numpy integers in a shape break JSON metadata)."""
    nz, ny, nx = shape
    return int(nz), int(ny), int(nx)


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
    return [(rho * mu_scale, a * r, b * r, x * r, y * r, np.radians(phi)) for rho, a, b, x, y, phi in SHEPP_LOGAN]


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
