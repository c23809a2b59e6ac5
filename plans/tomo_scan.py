"""Step-scan tomography: darks, flats, then one projection per rotation angle."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.protocols import DataKey, Movable, NamedMovable, Readable
from bluesky.utils import MsgGenerator

from tomolive.errors import BadInputError


class RotationStage(Readable, NamedMovable[float], Protocol):
    """A rotation stage in degrees: moved to each angle and read in every event (``EpicsMotor``)."""


class SampleStage(Readable, Movable[float], Protocol):
    """A sample translation: read, moved out of the beam for flats and back."""


def tomo_scan(
    detector: Readable,
    stage: RotationStage,
    angles: Sequence[float],
    n_darks: int = 10,
    n_flats: int = 10,
    *,
    shutter: Movable[Any] | None = None,
    sample_x: SampleStage | None = None,
    sample_out: float | None = None,
    shutter_open: Any = 1,
    shutter_closed: Any = 0,
    pixel_size: float | None = None,
    energy: float | None = None,
    md: dict[str, Any] | None = None,
) -> MsgGenerator[str]:
    """Acquire darks, flats and projections at the given rotation angles.

    Emits three streams: ``dark`` (shutter closed), ``flat`` (shutter open, sample moved
    to ``sample_out``) and ``primary`` (one projection per angle, with the stage readback).

    Parameters
    ----------
    detector : Readable
        Area detector whose reading holds one 2D image.
    stage : Movable
        Rotation stage, in degrees.
    angles : sequence of float
        Rotation angles in degrees, in acquisition order; they should cover >= 180 degrees.
    n_darks, n_flats : int
        Number of dark and flat frames (needed for normalisation).
    shutter : Movable, optional
        Moved to ``shutter_closed`` for darks and ``shutter_open`` afterwards. Required
        when ``n_darks > 0``.
    sample_x : Movable, optional
        Sample translation; moved to ``sample_out`` for flats and back to where it was.
        Required when ``n_flats > 0``.
    pixel_size : float, optional
        Effective pixel size in micrometres, recorded in the start document.
    energy : float, optional
        Beam energy in keV, recorded in the start document.
    md : dict, optional
        Extra start-document metadata (e.g. ``{"sample": "foam-1"}``).

    Yields
    ------
    Msg
        Bluesky messages; the plan returns the run uid.
    """
    angles = [float(a) for a in angles]
    if len(angles) < 2:
        raise BadInputError(f"angles must hold at least 2 rotation angles; got {len(angles)}.")
    if n_darks and shutter is None:
        raise BadInputError(f"n_darks={n_darks} needs a shutter to close; pass shutter=...")
    if n_flats and (sample_x is None or sample_out is None):
        raise BadInputError(f"n_flats={n_flats} needs sample_x and sample_out to move the sample out of the beam.")
    image_field = _image_field(detector)
    angle_field = _readback_field(stage)
    _md = {
        "plan_name": "tomo_scan",
        "plan_args": {
            "detector": repr(detector),
            "stage": repr(stage),
            "angles": angles,
            "n_darks": n_darks,
            "n_flats": n_flats,
        },
        "detectors": [detector.name],
        "motors": [stage.name],
        "num_points": len(angles),
        "num_intervals": len(angles) - 1,
        "hints": {"dimensions": [([angle_field], "primary")]},
        "tomo": {
            "image_field": image_field,
            "angle_field": angle_field,
            "angle_units": "deg",
            "angles": angles,
            "n_angles": len(angles),
            "n_darks": n_darks,
            "n_flats": n_flats,
            "angular_range": float(np.ptp(angles)),
        },
    }
    if pixel_size is not None:
        _md["pixel_size_um"] = float(pixel_size)
    if energy is not None:
        _md["energy_kev"] = float(energy)
    _md.update(md or {})
    devices: list[Readable] = [detector, stage]

    @bpp.stage_decorator(devices)
    @bpp.run_decorator(md=_md)
    def inner() -> MsgGenerator[None]:
        if n_darks:
            yield from bps.mv(shutter, shutter_closed)
            for _ in range(n_darks):
                yield from bps.trigger_and_read(devices, name="dark")
            yield from bps.mv(shutter, shutter_open)
        if n_flats:
            sample_in = yield from bps.rd(sample_x)
            yield from bps.mv(sample_x, sample_out)
            for _ in range(n_flats):
                yield from bps.trigger_and_read(devices, name="flat")
            yield from bps.mv(sample_x, sample_in)
        for angle in angles:
            yield from bps.mv(stage, angle)
            yield from bps.trigger_and_read(devices, name="primary")

    return (yield from inner())


def _description(device: Readable) -> dict[str, DataKey]:
    """``device.describe()`` of a synchronous (ophyd) device."""
    description = device.describe()
    if not isinstance(description, dict):
        raise BadInputError(
            f"{device.name!r} describes itself asynchronously; tomo_scan reads the description of "
            "synchronous (ophyd) devices."
        )
    return description


def _image_field(detector: Readable) -> str:
    """The detector data key that holds a 2D image."""
    description = _description(detector)
    images = [key for key, info in description.items() if len(info.get("shape") or []) == 2]
    if len(images) != 1:
        raise BadInputError(
            f"detector {detector.name!r} must describe exactly one 2D image field; "
            f"found {images!r} among {list(description)!r}."
        )
    return images[0]


def _readback_field(stage: RotationStage) -> str:
    """The data key of the stage's readback (its first hinted field)."""
    fields = (stage.hints or {}).get("fields") or list(_description(stage))
    return fields[0]
