"""Step-scan tomography: darks and flats before and/or after one projection per rotation angle."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.protocols import DataKey, Movable, NamedMovable, Readable
from bluesky.utils import MsgGenerator

from tomolive.errors import BadInputError
from tomolive.recon import MAX_MISSING_WEDGE_DEG
from tomolive.recon.filters import largest_gap


class RotationStage(Readable, NamedMovable[float], Protocol):
    """A rotation stage in degrees: moved to each angle and read in every event (``EpicsMotor``)."""


class SampleStage(Readable, Movable[float], Protocol):
    """A sample translation: read, moved out of the beam for flats and back."""


FLAT_MODES = ("before", "after", "both")
"""When ``tomo_scan`` takes its darks and flats: before the projections, after them, or both."""
MIN_ANGLES = 4
"""Fewer projections than this cannot be centred or reconstructed."""


def tomo_scan(
    detector: Readable,
    stage: RotationStage,
    angles: Sequence[float],
    n_darks: int = 10,
    n_flats: int = 10,
    *,
    flats: Literal["before", "after", "both"] = "before",
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
    Every argument is checked when the plan is made, before the RunEngine moves anything.

    Parameters
    ----------
    detector : Readable
        Area detector whose reading holds one 2D image.
    stage : Movable
        Rotation stage, in degrees.
    angles : sequence of float
        At least 4 finite rotation angles in degrees, in acquisition order, covering 180
        degrees (modulo 180) without a gap wider than the typical step.
    n_darks, n_flats : int
        Number of dark and flat frames in each set (needed for normalisation).
    flats : {"before", "after", "both"}
        When the darks and flats are taken: before the projections (default), after them, or
        both; with ``"both"`` each projection is corrected with flats interpolated linearly
        between the two sets by acquisition time. Recorded as ``tomo.flats``.
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

    Raises
    ------
    BadInputError
        At once (before any message), naming the argument: too few, non-finite or too
        sparse angles, negative counts, an unknown ``flats``, missing devices.
    """
    angles = check_angles(angles)
    n_darks, n_flats = _count("n_darks", n_darks), _count("n_flats", n_flats)
    if flats not in FLAT_MODES:
        raise BadInputError(f"flats must be one of {FLAT_MODES!r}; got {flats!r}.")
    if n_darks and shutter is None:
        raise BadInputError(f"n_darks={n_darks} needs a shutter to close; pass shutter=...")
    if n_flats and (sample_x is None or sample_out is None):
        raise BadInputError(f"n_flats={n_flats} needs sample_x and sample_out to move the sample out of the beam.")
    for name, value in (("pixel_size", pixel_size), ("energy", energy)):
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise BadInputError(f"{name} must be a positive number or None; got {value!r}.")
    if md is not None and not isinstance(md, Mapping):
        raise BadInputError(f"md must be a mapping of start-document metadata; got {type(md).__name__}.")
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
            "flats": flats,
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
            "flats": flats,
            "angular_range": float(np.ptp(angles)),
        },
    }
    if pixel_size is not None:
        _md["pixel_size_um"] = float(pixel_size)
    if energy is not None:
        _md["energy_kev"] = float(energy)
    _md.update(md or {})
    devices: list[Readable] = [detector, stage]

    def calibration() -> MsgGenerator[None]:
        """One set of darks (shutter closed) and flats (sample out of the beam)."""
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

    @bpp.stage_decorator(devices)
    @bpp.run_decorator(md=_md)
    def inner() -> MsgGenerator[None]:
        if flats in ("before", "both"):
            yield from calibration()
        for angle in angles:
            yield from bps.mv(stage, angle)
            yield from bps.trigger_and_read(devices, name="primary")
        if flats in ("after", "both"):
            yield from calibration()

    return inner()


def check_angles(angles: Any) -> list[float]:
    """``angles`` (degrees) as floats, after checking a scan of them can be reconstructed.

    At least :data:`MIN_ANGLES` finite values in a flat sequence, covering 180 degrees
    modulo 180 with no gap wider than the typical step plus the reconstruction's tolerance
    (the check :func:`tomolive.recon.reconstruct` makes after the scan, made before it).
    """
    try:
        values = np.asarray(angles, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise BadInputError(f"angles must be a sequence of numbers (degrees); got {angles!r:.80}.") from err
    if values.ndim != 1:
        raise BadInputError(f"angles must be a flat sequence of degrees; got an array of shape {values.shape!r}.")
    if len(values) < MIN_ANGLES:
        raise BadInputError(
            f"angles must hold at least {MIN_ANGLES} rotation angles (degrees); got {len(values)}: {values.tolist()!r}."
        )
    if not np.isfinite(values).all():
        raise BadInputError(f"angles must be finite degrees; {int((~np.isfinite(values)).sum())} are NaN or inf.")
    gap = largest_gap(np.deg2rad(values))
    if np.degrees(gap.largest - gap.median) > MAX_MISSING_WEDGE_DEG:
        raise BadInputError(
            f"angles must cover 180 degrees (modulo 180) in steps; they leave a {np.degrees(gap.largest):.2f} degree "
            f"gap from {np.degrees(gap.start):.2f} degrees (typical step {np.degrees(gap.median):.3f}; span "
            f"{np.ptp(values):.2f} degrees). Use e.g. np.linspace(0, 180, n, endpoint=False); are they in degrees?"
        )
    return [float(a) for a in values]


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise BadInputError(f"{name} must be a whole number >= 0; got {value!r}.")
    return int(value)


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
