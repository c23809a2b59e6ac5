"""Simulated beamline devices: a tomography detector, rotation stage, sample stage, shutter.

The detector's image on trigger is the exact projection of a phantom at the rotation
stage's current angle, times a beam (flat-field) profile with per-pixel gain, plus dark
current, read noise and Poisson noise. With the shutter closed it sees only dark current;
with the sample moved out of the beam it sees the flat field. The plans drive these with
standard bluesky stubs, so the same plans drive EPICS devices unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.sim import SynAxis
from ophyd.status import Status

from .errors import BadInputError
from .phantoms import FoamPhantom, make_foam

SHUTTER_OPEN, SHUTTER_CLOSED = 1, 0


class ImageSignal(Signal):
    """A Signal holding a 2D image whose description carries shape and numpy dtype."""

    def describe(self) -> dict:
        description = super().describe()
        value = np.asarray(self.get())
        description[self.name].update(
            dtype="array", shape=list(value.shape), dtype_numpy=value.dtype.str
        )
        return description


class SimTomoDetector(Device):
    """A detector that images a phantom in a parallel beam.

    Parameters
    ----------
    phantom : FoamPhantom
        The sample; detector size is ``(phantom.shape[0], phantom.shape[2])``.
    rotation, sample_x : SynAxis
        Rotation stage (degrees) and the sample translation that moves it out of the beam.
    shutter : Signal
        ``SHUTTER_OPEN`` (1) or ``SHUTTER_CLOSED`` (0).
    photons : float or None
        Mean photon count per pixel in the open beam; ``None`` for noise-free images.
    dark_counts, read_noise : float
        Dark-current offset and Gaussian read noise (counts).
    sample_in : float
        ``sample_x`` position where the sample sits in the beam; any position further
        than ``out_tolerance`` from it counts as out of the beam.
    seed : int
        Seed of the noise generator.
    """

    image = Cpt(ImageSignal, value=np.zeros((1, 1), dtype=np.uint16), kind="normal")

    def __init__(
        self,
        prefix: str = "",
        *,
        name: str,
        phantom: FoamPhantom,
        rotation: SynAxis,
        sample_x: SynAxis,
        shutter: Signal,
        photons: float | None = 5000.0,
        dark_counts: float = 100.0,
        read_noise: float = 2.0,
        sample_in: float = 0.0,
        out_tolerance: float = 1.0,
        seed: int = 0,
        **kwargs,
    ):
        super().__init__(prefix, name=name, **kwargs)
        if photons is not None and photons <= 0:
            raise BadInputError(f"photons must be positive or None (noise-free); got {photons!r}.")
        self.phantom = phantom
        self.rotation, self.sample_x, self.shutter = rotation, sample_x, shutter
        self.photons, self.dark_counts, self.read_noise = photons, dark_counts, read_noise
        self.sample_in, self.out_tolerance = sample_in, out_tolerance
        self._rng = np.random.default_rng(seed)
        self.beam_profile = _beam_profile(phantom.shape[0], phantom.shape[2], seed)
        self.image.put(np.zeros((phantom.shape[0], phantom.shape[2]), dtype=np.uint16))

    def expected_counts(self) -> np.ndarray:
        """Mean counts (float64) for the current stage, shutter and sample positions."""
        level = self.photons if self.photons is not None else 10000.0
        beam = np.zeros_like(self.beam_profile)
        if self.shutter.get() == SHUTTER_OPEN:
            beam = level * self.beam_profile
            if abs(self.sample_x.position - self.sample_in) <= self.out_tolerance:
                angle = np.deg2rad(self.rotation.position)
                beam = beam * np.exp(-self.phantom.project(angle).astype(np.float64))
        return beam + self.dark_counts

    def trigger(self) -> Status:
        counts = self.expected_counts()
        if self.photons is not None:
            counts = self._rng.poisson(counts - self.dark_counts) + self.dark_counts
            counts = counts + self._rng.normal(0.0, self.read_noise, counts.shape)
        image = np.clip(np.rint(counts), 0, np.iinfo(np.uint16).max).astype(np.uint16)
        self.image.put(image)
        status = Status(obj=self)
        status.set_finished()
        return status


def _beam_profile(rows: int, cols: int, seed: int) -> np.ndarray:
    """A smooth beam (brighter in the middle) times a fixed per-pixel gain pattern."""
    rng = np.random.default_rng(seed + 1)
    v = np.linspace(-1.0, 1.0, rows)[:, None]
    u = np.linspace(-1.0, 1.0, cols)[None, :]
    smooth = np.exp(-(v**2) / 2.0 - u**2 / 4.0)
    gain = 1.0 + 0.03 * rng.standard_normal((rows, cols))
    return smooth * gain


@dataclass
class SimBeamline:
    """The simulated devices a tomography plan needs, wired together."""

    detector: SimTomoDetector
    rotation: SynAxis
    sample_x: SynAxis
    shutter: Signal
    phantom: FoamPhantom
    sample_out: float = 20.0


def make_sim_beamline(
    phantom: FoamPhantom | None = None,
    *,
    photons: float | None = 5000.0,
    seed: int = 0,
    prefix: str = "sim",
) -> SimBeamline:
    """Create a simulated detector, rotation stage, sample stage and shutter.

    Parameters
    ----------
    phantom : FoamPhantom, optional
        The sample; default a seeded 64-slice, 128-pixel-wide foam.
    photons : float or None
        Open-beam photons per pixel (sets the noise); ``None`` for noise-free images.
    seed : int
        Noise seed.
    prefix : str
        Prefix of the device names (``sim_det``, ``sim_rotation``, ...).
    """
    phantom = phantom or make_foam((64, 128, 128), seed=seed)
    rotation = SynAxis(name=f"{prefix}_rotation", labels={"motors"})
    sample_x = SynAxis(name=f"{prefix}_sample_x", labels={"motors"})
    shutter = Signal(name=f"{prefix}_shutter", value=SHUTTER_OPEN)
    detector = SimTomoDetector(
        name=f"{prefix}_det",
        phantom=phantom,
        rotation=rotation,
        sample_x=sample_x,
        shutter=shutter,
        photons=photons,
        seed=seed,
        labels={"detectors"},
    )
    return SimBeamline(detector, rotation, sample_x, shutter, phantom)
