"""Ptychography plans: a 2D probe scan (raster or Fermat spiral), and a rotation series of them.

Every point moves the two scan stages, triggers the detector and reads detector and stages,
so each event holds one diffraction pattern and the positions the stages read back. The
start document's ``ptycho`` block holds what processing needs: the data keys, photon
energy, detector distance and pixel size, the object grid and the probe guess; it is checked
by :func:`tomolive.techniques.ptycho.geometry.check_block`, as the pipeline checks it. Every
input, and every position against the object grid, is checked before anything moves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.protocols import NamedMovable, Readable
from bluesky.utils import MsgGenerator

from tomolive.errors import BadInputError
from tomolive.techniques.ptycho import physics
from tomolive.techniques.ptycho.geometry import ScanSetup, check_block, check_positions

from .tomo_scan import _description, _image_field, _readback_field

PATTERNS = ("fermat", "raster")


class Stage(Readable, NamedMovable[float], Protocol):
    """A scan stage (micrometres) or rotation stage (degrees): moved, and read in every event."""


def scan_positions_um(
    pattern: str, n_positions: int, step_um: float, *, pixel_um: float, grid: tuple[int, int] | None = None
) -> np.ndarray:
    """Probe positions (N, 2) (y, x) in micrometres about the stages' zero: a Fermat spiral of
    ``n_positions``, or a raster of ``grid`` (rows, cols) points, ``step_um`` apart."""
    if step_um is None or not step_um > 0:
        raise BadInputError(f"step_um must be a positive distance (micrometres); got {step_um!r}.")
    if pattern == "fermat":
        return physics.fermat_positions(int(n_positions), step_um / pixel_um) * pixel_um
    if pattern == "raster":
        if grid is None:
            raise BadInputError("a raster scan needs grid=(rows, cols) of points.")
        return physics.raster_positions(int(grid[0]), int(grid[1]), step_um / pixel_um) * pixel_um
    raise BadInputError(f"pattern must be one of {PATTERNS}; got {pattern!r}.")


def ptycho_scan(
    detector: Readable,
    y_stage: Stage,
    x_stage: Stage,
    *,
    energy_kev: float,
    detector_distance_m: float,
    detector_pixel_um: float,
    object_shape: Sequence[int],
    probe: Mapping[str, Any],
    pattern: str = "fermat",
    n_positions: int = 100,
    step_um: float | None = None,
    grid: tuple[int, int] | None = None,
    positions_um: np.ndarray | None = None,
    md: dict[str, Any] | None = None,
) -> MsgGenerator[str]:
    """Scan the probe over the sample: one diffraction pattern per position.

    Parameters
    ----------
    detector : Readable
        Far-field area detector whose reading holds one 2D pattern.
    y_stage, x_stage : Movable
        Vertical and horizontal scan stages, micrometres; zero at the centre of the object grid.
    energy_kev, detector_distance_m, detector_pixel_um : float
        Photon energy, sample-detector distance and detector pixel size (set the object pixel).
    object_shape : (rows, cols)
        The reconstruction grid in object pixels; every probe patch must lie inside it.
    probe : mapping
        The probe guess: ``kind`` ("aperture" or "zone_plate"), ``aperture_px``, ``defocus_phase_rad``.
    pattern : {"fermat", "raster"}
        Fermat spiral of ``n_positions`` points, or a raster of ``grid`` (rows, cols) points,
        ``step_um`` apart; or give ``positions_um`` (N, 2) (y, x) yourself.
    md : dict, optional
        Extra start-document metadata (e.g. ``{"sample": "chip-3"}``).

    Yields
    ------
    Msg
        Bluesky messages; the plan returns the run uid.
    """
    return (yield from _ptycho_run(detector, y_stage, x_stage, None, [0.0], locals(), plan_name="ptycho_scan", md=md))


def ptycho_tomo_scan(
    detector: Readable,
    y_stage: Stage,
    x_stage: Stage,
    rotation: Stage,
    angles: Sequence[float],
    *,
    energy_kev: float,
    detector_distance_m: float,
    detector_pixel_um: float,
    object_shape: Sequence[int],
    probe: Mapping[str, Any],
    pattern: str = "fermat",
    n_positions: int = 100,
    step_um: float | None = None,
    grid: tuple[int, int] | None = None,
    positions_um: np.ndarray | None = None,
    md: dict[str, Any] | None = None,
) -> MsgGenerator[str]:
    """A rotation series: the :func:`ptycho_scan` at each of ``angles`` (degrees), one run.

    Each event also reads ``rotation``; a view is the events at one angle, in order.
    Parameters as :func:`ptycho_scan`.
    """
    angles = [float(a) for a in angles]
    if len(angles) < 2:
        raise BadInputError(f"angles must hold at least 2 rotation angles for a rotation series; got {len(angles)}.")
    if len(set(angles)) != len(angles):
        raise BadInputError("angles must be distinct: a view is the events at one angle.")
    return (
        yield from _ptycho_run(
            detector, y_stage, x_stage, rotation, angles, locals(), plan_name="ptycho_tomo_scan", md=md
        )
    )


def _ptycho_run(
    detector: Readable,
    y_stage: Stage,
    x_stage: Stage,
    rotation: Stage | None,
    angles: list[float],
    args: dict[str, Any],
    *,
    plan_name: str,
    md: dict[str, Any] | None,
) -> MsgGenerator[str]:
    """Check everything, write the start document's ``ptycho`` block, then scan at each angle."""
    block = _ptycho_block(detector, y_stage, x_stage, rotation, angles, args)
    setup = check_block(block)
    positions = _positions(args, setup)
    check_positions(setup.to_pixels(positions[:, 0], positions[:, 1]), setup.object_shape, setup.pattern_n)
    block.update(n_positions=len(positions), n_views=len(angles))
    _md = {
        "plan_name": plan_name,
        "plan_args": {"detector": repr(detector), "y_stage": repr(y_stage), "x_stage": repr(x_stage)},
        "detectors": [detector.name],
        "motors": [s.name for s in (y_stage, x_stage, rotation) if s is not None],
        "num_points": len(positions) * len(angles),
        "energy_kev": setup.energy_kev,
        "pixel_size_um": setup.pixel_um,
        "hints": {"dimensions": [([setup.x_field], "primary"), ([setup.y_field], "primary")]},
        "ptycho": block,
        **(md or {}),
    }
    devices: list[Readable] = [detector, y_stage, x_stage, *([rotation] if rotation is not None else [])]

    @bpp.stage_decorator(devices)
    @bpp.run_decorator(md=_md)
    def inner() -> MsgGenerator[None]:
        for angle in angles:
            if rotation is not None:
                yield from bps.mv(rotation, angle)
            for y, x in positions:
                yield from bps.mv(y_stage, float(y), x_stage, float(x))
                yield from bps.trigger_and_read(devices, name="primary")

    return (yield from inner())


def _ptycho_block(
    detector: Readable,
    y_stage: Stage,
    x_stage: Stage,
    rotation: Stage | None,
    angles: list[float],
    args: dict[str, Any],
) -> dict[str, Any]:
    image_field = _image_field(detector)
    shape = _description(detector)[image_field]["shape"]
    block: dict[str, Any] = {
        "image_field": image_field,
        "y_field": _readback_field(y_stage),
        "x_field": _readback_field(x_stage),
        "position_units": "um",
        "energy_kev": args["energy_kev"],
        "detector_distance_m": args["detector_distance_m"],
        "detector_pixel_um": args["detector_pixel_um"],
        "pattern_shape": [int(n or 0) for n in shape],
        "object_shape": [int(n) for n in args["object_shape"]] if args["object_shape"] is not None else None,
        "probe": dict(args["probe"]) if isinstance(args["probe"], Mapping) else args["probe"],
        "scan": {"pattern": args["pattern"], "step_um": args["step_um"], "grid": args["grid"]},
    }
    if rotation is not None:
        block.update(angle_field=_readback_field(rotation), angle_units="deg", angles_deg=angles)
    return block


def _positions(args: dict[str, Any], setup: ScanSetup) -> np.ndarray:
    given = args["positions_um"]
    if given is not None:
        positions = np.asarray(given, dtype=np.float64)
        if positions.ndim != 2 or positions.shape[1] != 2 or len(positions) < 2:
            raise BadInputError(f"positions_um must be (N, 2) (y, x) with N >= 2; got shape {positions.shape!r}.")
        return positions
    pixel = setup.pixel_um
    return scan_positions_um(args["pattern"], args["n_positions"], args["step_um"], pixel_um=pixel, grid=args["grid"])
