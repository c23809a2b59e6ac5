"""Simulated ptychography devices: a far-field detector, two scan stages and a rotation stage.

The detector's image on trigger is the diffraction pattern ``|FFT(probe * object patch)|^2``
(``tomolive.techniques.ptycho.physics``) of the sample at the stages' current position, with
Poisson noise at a configurable fluence. The sample is any complex object: amplitude and
phase from two images (:meth:`ComplexSample.from_images`), or the projection of a 3D phantom
at the rotation stage's angle (:meth:`ComplexSample.from_phantom`) for ptycho-tomography.

Geometry (see :mod:`tomolive.techniques.ptycho.geometry`): stage readbacks are micrometres,
the stages' zero is the centre of the object, and one object pixel is ``lambda z / (n p)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device
from ophyd.sim import SynAxis
from ophyd.status import Status

from ..errors import BadInputError
from ..techniques.ptycho import physics
from ..techniques.ptycho.geometry import object_pixel_um
from .devices import ImageSignal
from .phantoms import FoamPhantom


class ComplexSample:
    """A complex transmission function, possibly depending on the rotation angle (degrees)."""

    def __init__(self, object_at: Callable[[float], np.ndarray], shape: tuple[int, int]):
        self._object_at = functools.lru_cache(maxsize=4)(object_at)
        self.shape = shape
        self.phase_per_unit: float | None = None  # radians per unit of a phantom's attenuation

    def at(self, angle_deg: float) -> np.ndarray:
        """The complex64 object (rows, cols) seen at ``angle_deg``."""
        return self._object_at(round(float(angle_deg), 6))

    @classmethod
    def from_images(cls, amplitude: np.ndarray, phase: np.ndarray, *, phase_range_rad: float = 1.0) -> ComplexSample:
        """A fixed object from two images (``physics.complex_object``): the same at every angle."""
        obj = physics.complex_object(amplitude, phase, phase_range_rad=phase_range_rad)
        return cls(lambda angle: obj, obj.shape)

    @classmethod
    def from_phantom(
        cls, phantom: FoamPhantom, *, phase_range_rad: float = 1.0, absorption_ratio: float = 0.1
    ) -> ComplexSample:
        """The projection of ``phantom`` at each angle: ``exp((i - absorption_ratio) * k * line integral)``.

        ``k`` (kept as :attr:`phase_per_unit`) makes the thickest projection at angle 0 a phase
        of ``phase_range_rad``; the phantom's attenuation volume times ``k`` is then the 3D
        phase (radians per voxel) a ptycho-tomography reconstruction should find.
        """
        nz, _, nx = phantom.shape
        thickest = float(phantom.project(0.0).max())
        if thickest <= 0:
            raise BadInputError("the phantom projects to zero everywhere; nothing to image.")
        k = phase_range_rad / thickest

        def at(angle_deg: float) -> np.ndarray:
            projected = phantom.project(np.deg2rad(angle_deg)).astype(np.float64)
            return np.exp((1j - absorption_ratio) * k * projected).astype(np.complex64)

        sample = cls(at, (nz, nx))
        sample.phase_per_unit = k
        return sample


class SimPtychoDetector(Device):
    """A pixel detector in the far field of a probe scanning ``sample``.

    Parameters
    ----------
    sample : ComplexSample
        The object; the stages' zero is its centre.
    probe : ndarray (n, n) or (modes, n, n) complex
        The illumination (e.g. ``physics.make_probe``); patterns are ``n x n``. Several modes
        are a partially coherent beam (``physics.add_probe_modes``): their intensities add.
    y, x : SynAxis
        Scan stages, micrometres.
    rotation : SynAxis, optional
        Rotation stage, degrees (the sample's projection angle); 0 when absent.
    pixel_um : float
        Object pixel in micrometres (see :func:`~tomolive.techniques.ptycho.geometry.object_pixel_um`).
    photons_per_pattern : float or None
        Expected counts of a pattern through a transparent object; None for noise-free intensities.
    seed : int
        Seed of the Poisson noise.
    """

    image = Cpt(ImageSignal, value=np.zeros((1, 1), dtype=np.float32), kind="normal")

    def __init__(
        self,
        prefix: str = "",
        *,
        name: str,
        sample: ComplexSample,
        probe: np.ndarray,
        y: SynAxis,
        x: SynAxis,
        rotation: SynAxis | None = None,
        pixel_um: float,
        photons_per_pattern: float | None = 1e6,
        seed: int = 0,
        **kwargs,
    ):
        super().__init__(prefix, name=name, **kwargs)
        if photons_per_pattern is not None and photons_per_pattern <= 0:
            raise BadInputError(f"photons_per_pattern must be positive or None; got {photons_per_pattern!r}.")
        if pixel_um <= 0:
            raise BadInputError(f"pixel_um must be positive; got {pixel_um!r}.")
        self.sample, self.y, self.x, self.rotation = sample, y, x, rotation
        self.pixel_um, self.photons = pixel_um, photons_per_pattern
        self.probe = np.asarray(probe, dtype=np.complex64)
        if photons_per_pattern is not None:
            self.probe = self.probe * physics.probe_scale(self.probe, photons_per_pattern)
        self._rng = np.random.default_rng(seed)
        n = self.probe.shape[-1]
        self.image.put(np.zeros((n, n), dtype=np.float32))

    def position_px(self) -> np.ndarray:
        """The probe centre (row, col) in object pixels at the stages' current readbacks."""
        rows, cols = self.sample.shape
        return np.array([self.y.position / self.pixel_um + rows / 2, self.x.position / self.pixel_um + cols / 2])

    def trigger(self) -> Status:
        angle = 0.0 if self.rotation is None else float(self.rotation.position)
        intensity = physics.far_field(self.sample.at(angle), self.probe, self.position_px()[None])[0]
        pattern = intensity if self.photons is None else self._rng.poisson(intensity).astype(np.float32)
        self.image.put(pattern)
        status = Status(obj=self)
        status.set_finished()
        return status


@dataclass
class SimPtychoBeamline:
    """The simulated devices a ptychography plan needs, with the geometry they share."""

    detector: SimPtychoDetector
    y: SynAxis
    x: SynAxis
    rotation: SynAxis
    sample: ComplexSample
    probe: np.ndarray
    energy_kev: float
    detector_distance_m: float
    detector_pixel_um: float

    @property
    def pixel_um(self) -> float:
        return self.detector.pixel_um


def make_sim_ptycho(
    sample: ComplexSample,
    probe: np.ndarray,
    *,
    energy_kev: float = 8.0,
    detector_distance_m: float = 2.0,
    detector_pixel_um: float = 75.0,
    photons_per_pattern: float | None = 1e6,
    seed: int = 0,
    prefix: str = "ptycho",
) -> SimPtychoBeamline:
    """Scan stages, a rotation stage and a far-field detector around ``sample`` lit by ``probe``."""
    n = int(np.asarray(probe).shape[-1])
    y = SynAxis(name=f"{prefix}_y", labels={"motors"})
    x = SynAxis(name=f"{prefix}_x", labels={"motors"})
    rotation = SynAxis(name=f"{prefix}_rotation", labels={"motors"})
    detector = SimPtychoDetector(
        name=f"{prefix}_det",
        sample=sample,
        probe=probe,
        y=y,
        x=x,
        rotation=rotation,
        pixel_um=object_pixel_um(energy_kev, detector_distance_m, detector_pixel_um, n),
        photons_per_pattern=photons_per_pattern,
        seed=seed,
        labels={"detectors"},
    )
    return SimPtychoBeamline(
        detector, y, x, rotation, sample, np.asarray(probe), energy_kev, detector_distance_m, detector_pixel_um
    )
