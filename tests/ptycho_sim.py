"""A small simulated ptychography setup for the tests: sample, probes, beamline and scan arguments.

96^2 object (amplitude from skimage's camera, phase from its moon), a 32^2 zone-plate probe
with phase curvature, ~100 Fermat positions; the reconstruction starts from an aperture-only
probe guess, as a beamline would.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import skimage.data
from skimage.transform import resize

from tomolive.plans.ptycho import ptycho_scan
from tomolive.sim.ptycho_devices import ComplexSample, SimPtychoBeamline, make_sim_ptycho
from tomolive.techniques.ptycho import physics

N = 32
OBJECT = (96, 96)
PHASE_RANGE = 1.0
GUESS = {"kind": "aperture", "aperture_px": 16.0, "defocus_phase_rad": 0.0}


def true_object(shape: tuple[int, int] = OBJECT) -> np.ndarray:
    amplitude = 0.75 + 0.25 * resize(skimage.data.camera().astype(float) / 255, shape, anti_aliasing=True)
    phase = resize(skimage.data.moon().astype(float), shape, anti_aliasing=True)
    return physics.complex_object(amplitude, phase, phase_range_rad=PHASE_RANGE)


def beamline(photons: float = 1e6, seed: int = 3, incoherent: float = 0.0) -> SimPtychoBeamline:
    """The simulated beamline; ``incoherent`` > 0 makes its beam partially coherent: a second
    probe mode holding that share of the power."""
    probe = physics.make_probe(N, aperture_px=16, defocus_phase_rad=1.5, kind="zone_plate")
    if incoherent > 0:
        probe = physics.add_probe_modes(probe, 2, fraction=incoherent)
    obj = true_object()
    sample = ComplexSample(lambda angle: obj, obj.shape)
    return make_sim_ptycho(sample, probe, photons_per_pattern=photons, seed=seed)


def scan_kwargs(line: SimPtychoBeamline, **overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "energy_kev": line.energy_kev,
        "detector_distance_m": line.detector_distance_m,
        "detector_pixel_um": line.detector_pixel_um,
        "object_shape": OBJECT,
        "probe": dict(GUESS),
        "pattern": "fermat",
        "n_positions": 100,
        "step_um": 5.5 * line.pixel_um,
        "md": {"sample": "camera-moon"},
    }
    kwargs.update(overrides)
    return kwargs


def scan(line: SimPtychoBeamline, **overrides: Any):
    """``ptycho_scan`` of the simulated ``line``."""
    return ptycho_scan(line.detector, line.y, line.x, **scan_kwargs(line, **overrides))
