"""Rotation sweep for Bragg-peak analysis: one far-field frame per rotation angle."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.protocols import NamedMovable, Readable
from bluesky.utils import MsgGenerator

from tomolive.errors import BadInputError


class RotationStage(Readable, NamedMovable[float], Protocol):
    """A rotation stage in degrees: moved to each angle and read in every event (``EpicsMotor``)."""


def bragg_scan(
    detector: Readable,
    stage: RotationStage,
    angles: Sequence[float],
    *,
    patch_size: int = 11,
    threshold: float | None = None,
    min_pixels: int | None = None,
    md: dict[str, Any] | None = None,
) -> MsgGenerator[str]:
    """Take one detector frame at each rotation angle (degrees) for live peak localisation.

    The start document carries a ``bragg`` block (image and angle fields, frame shape and
    dtype, patch size, optional peak-finding ``threshold`` / ``min_pixels`` that override the
    processing defaults) which ``BraggTechnique`` claims. Every input is checked before
    anything moves.

    Parameters
    ----------
    detector : Readable
        Area detector whose reading holds one 2-D image.
    stage : Movable
        Rotation stage, in degrees; read in every event.
    angles : sequence of float
        Rotation angles, in acquisition order (at least one, all finite).
    patch_size : int
        Side of the patch cut around each peak (odd, >= 3; BraggNN takes 11).
    threshold : float, optional
        Counts above the frame's median a peak pixel needs; None for the processing default.
    min_pixels : int, optional
        Smallest peak in pixels; None for the processing default.
    md : dict, optional
        Extra start-document metadata (e.g. ``{"sample": "Ti-7Al grain 3"}``).

    Yields
    ------
    Msg
        Bluesky messages; the plan returns the run uid.
    """
    angles = _check_angles(angles)
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 3 or patch_size % 2 == 0:
        raise BadInputError(f"patch_size must be an odd integer >= 3; got {patch_size!r}.")
    if threshold is not None and not (np.isfinite(threshold) and threshold > 0):
        raise BadInputError(f"threshold must be a positive number of counts or None; got {threshold!r}.")
    if min_pixels is not None and (isinstance(min_pixels, bool) or not isinstance(min_pixels, int) or min_pixels < 1):
        raise BadInputError(f"min_pixels must be an integer >= 1 or None; got {min_pixels!r}.")
    image_field, frame_shape, dtype = _image_key(detector)
    if min(frame_shape) < patch_size:
        raise BadInputError(f"detector frames of shape {frame_shape!r} are smaller than a {patch_size}-px patch.")
    angle_field = ((stage.hints or {}).get("fields") or list(_description(stage)))[0]
    bragg: dict[str, Any] = {
        "image_field": image_field,
        "angle_field": angle_field,
        "angle_units": "deg",
        "n_frames": len(angles),
        "omega_range": [min(angles), max(angles)],
        "frame_shape": list(frame_shape),
        "frame_dtype": dtype,
        "patch_size": patch_size,
    }
    bragg.update({k: v for k, v in (("threshold", threshold), ("min_pixels", min_pixels)) if v is not None})
    _md = {
        "plan_name": "bragg_scan",
        "plan_args": {"detector": repr(detector), "stage": repr(stage), "angles": angles, "patch_size": patch_size},
        "detectors": [detector.name],
        "motors": [stage.name],
        "num_points": len(angles),
        "num_intervals": len(angles) - 1,
        "hints": {"dimensions": [([angle_field], "primary")]},
        "bragg": bragg,
    }
    _md.update(md or {})
    devices: list[Any] = [detector, stage]

    @bpp.stage_decorator(devices)
    @bpp.run_decorator(md=_md)
    def inner() -> MsgGenerator[None]:
        for angle in angles:
            yield from bps.mv(stage, angle)
            yield from bps.trigger_and_read(devices)

    return (yield from inner())


def _check_angles(angles: Sequence[float]) -> list[float]:
    try:
        values = [float(a) for a in angles]
    except (TypeError, ValueError) as err:
        raise BadInputError(f"angles must be numbers in degrees; got {angles!r}.") from err
    if not values or not np.isfinite(values).all():
        raise BadInputError(f"angles must hold at least one finite angle in degrees; got {values!r}.")
    return values


def _description(device: Readable) -> dict[str, Any]:
    """``device.describe()`` of a synchronous (ophyd) device."""
    description = device.describe()
    if not isinstance(description, dict):
        raise BadInputError(f"{device.name!r} describes itself asynchronously; bragg_scan reads ophyd devices.")
    return dict(description)


def _image_key(detector: Readable) -> tuple[str, tuple[int, ...], str]:
    """The detector's one 2-D image data key, its shape and numpy dtype string."""
    description = _description(detector)
    images = [key for key, info in description.items() if len(info.get("shape") or []) == 2]
    if len(images) != 1:
        raise BadInputError(
            f"detector {detector.name!r} must describe exactly one 2-D image field; found {images!r} "
            f"among {list(description)!r}."
        )
    info = description[images[0]]
    return images[0], tuple(int(n or 0) for n in info["shape"]), str(info.get("dtype_numpy", ""))
