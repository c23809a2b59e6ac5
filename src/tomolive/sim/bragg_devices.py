"""A simulated far-field area detector for Bragg-peak scans, driven by bluesky plans.

On trigger it takes the frame of a :class:`~tomolive.sim.bragg.BraggSimulator` at the
rotation stage's current angle, as unsigned 16-bit counts clipped at ``saturation`` (a
real detector's full well). The peaks in each frame are kept in ``truths`` (one array per
trigger, columns ``row, col, amplitude, width, eta``) so tests can score localisation.
Setting ``peak_shape`` (``bps.mv(det.peak_shape, PeakShape(...))``) changes the peaks'
shape from the next frame on: the "setup changed" case.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.sim import SynAxis
from ophyd.status import Status

from ..errors import BadInputError
from .bragg import BraggSimulator, PeakShape
from .devices import ImageSignal


class PeakShapeSignal(Signal):
    """Holds the detector's :class:`PeakShape`; putting a new one changes the simulated peaks."""

    def put(self, value: Any, **kwargs: Any) -> None:
        if not isinstance(value, PeakShape):
            raise BadInputError(f"peak_shape takes a tomolive.sim.bragg.PeakShape; got {value!r}.")
        parent = self.parent
        if parent is not None and hasattr(parent, "simulator"):
            parent.simulator.set_shape(value)
        super().put(value, **kwargs)


class SimBraggDetector(Device):
    """An area detector seeing Bragg peaks of a rotating sample.

    Parameters
    ----------
    rotation : SynAxis
        The rotation stage (degrees); its position picks the frame.
    simulator : BraggSimulator, optional
        Where frames come from; default a 128 x 128 detector, seed 0.
    saturation : int
        Counts at which a pixel saturates (at most 65535, the uint16 maximum).
    """

    image = Cpt(ImageSignal, value=np.zeros((1, 1), dtype=np.uint16), kind="normal")
    peak_shape = Cpt(PeakShapeSignal, value=PeakShape(), kind="omitted")

    def __init__(
        self,
        prefix: str = "",
        *,
        name: str,
        rotation: SynAxis,
        simulator: BraggSimulator | None = None,
        saturation: int = 65535,
        **kwargs: Any,
    ):
        if not 0 < saturation <= np.iinfo(np.uint16).max:
            raise BadInputError(f"saturation must be in 1..65535 counts (uint16); got {saturation!r}.")
        self.simulator = simulator or BraggSimulator()
        super().__init__(prefix, name=name, **kwargs)
        self.rotation = rotation
        self.saturation = saturation
        self.truths: list[np.ndarray] = []
        self.peak_shape.put(self.simulator.peak_shape)
        self.image.put(np.zeros(self.simulator.shape, dtype=np.uint16))

    def make_image(self, omega: float) -> np.ndarray:
        """The frame at ``omega`` degrees, as the detector reads it out (uint16, clipped)."""
        frame = self.simulator.frame(omega)
        self.truths.append(frame.truth)
        return np.clip(np.rint(frame.image), 0, self.saturation).astype(np.uint16)

    def trigger(self) -> Status:
        self.image.put(self.make_image(float(self.rotation.position)))
        status = Status(obj=self)
        status.set_finished()
        return status


def make_bragg_beamline(
    simulator: BraggSimulator | None = None, *, prefix: str = "bragg", saturation: int = 65535
) -> tuple[SimBraggDetector, SynAxis]:
    """A simulated Bragg detector and its rotation stage (``<prefix>_det``, ``<prefix>_omega``)."""
    rotation = SynAxis(name=f"{prefix}_omega", labels={"motors"})
    detector = SimBraggDetector(
        name=f"{prefix}_det", rotation=rotation, simulator=simulator, saturation=saturation, labels={"detectors"}
    )
    return detector, rotation
