"""Simulation: phantoms with ground truth (:mod:`~tomolive.sim.phantoms`), simulated ophyd
devices (:mod:`~tomolive.sim.devices`) and ``tomolive demo`` (:mod:`~tomolive.sim.demo`).
"""

from .devices import SimBeamline, SimTomoDetector, make_sim_beamline
from .phantoms import FoamPhantom, RockPhantom, make_foam, make_rock, measure
from .volume import VolumePhantom, as_sample

__all__ = [
    "FoamPhantom",
    "RockPhantom",
    "SimBeamline",
    "SimTomoDetector",
    "VolumePhantom",
    "as_sample",
    "make_foam",
    "make_rock",
    "make_sim_beamline",
    "measure",
]
