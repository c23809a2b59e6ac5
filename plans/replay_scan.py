"""Replay a stored scan (DXchange or NeXus/NXtomo HDF5) through the RunEngine, live.

The documents are those of :func:`tomolive.plans.tomo_scan` (streams ``dark``, ``flat`` and
``primary``, one event per frame, the angle read in every event), so anything subscribed to
a live scan, such as ``TomoPipeline``, processes a past scan unchanged.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.utils import MsgGenerator
from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.status import Status

from tomolive.errors import BadInputError, MissingDataError
from tomolive.io.formats import StoredScan, open_scan
from tomolive.sim.devices import ImageSignal

STREAMS = (("dark", "dark"), ("flat", "flat"))
"""(frame kind, stream name) of the calibration frames, emitted before the projections."""


class ReplayDetector(Device):
    """A detector whose trigger yields the next stored frame of the selected kind.

    ``frame_kind`` (``"dark"``, ``"flat"`` or ``"projection"``) picks the stack; each kind
    keeps its own position, rewound on :meth:`stage`. ``frame_index`` records which stored
    frame each reading holds.
    """

    image = Cpt(ImageSignal, value=np.zeros((1, 1), dtype=np.uint16), kind="normal")
    frame_index = Cpt(Signal, value=-1, kind="normal")
    frame_kind = Cpt(Signal, value="projection", kind="config")

    def __init__(
        self,
        prefix: str = "",
        *,
        name: str,
        scan: StoredScan,
        rows: slice | None = None,
        **kwargs: Any,
    ):
        super().__init__(prefix, name=name, **kwargs)
        self.scan, self.rows = scan, rows
        self._next = {"dark": 0, "flat": 0, "projection": 0}
        self.image.put(scan.projections.frame(0, rows))

    def stage(self) -> list[Any]:
        self._next = dict.fromkeys(self._next, 0)
        return super().stage()

    def trigger(self) -> Status:
        kind = self.frame_kind.get()
        stack, i = self.scan.stack(kind), self._next[kind]
        if i >= len(stack):
            raise MissingDataError(
                f"{self.name}: {str(self.scan.source)!r} holds {len(stack)} {kind} frames; frame {i} was asked for."
            )
        self.image.put(stack.frame(i, self.rows))
        self.frame_index.put(i)
        self._next[kind] = i + 1
        status = Status(obj=self)
        status.set_finished()
        return status


class _Pacer:
    """Holds frames to ``frame_rate`` (Hz) on average: frame k leaves at t0 + k / rate."""

    def __init__(self, frame_rate: float | None):
        self.period = None if frame_rate is None else 1.0 / frame_rate
        self.t0: float | None = None
        self.count = 0

    def wait(self) -> MsgGenerator[None]:
        if self.period is None:
            return
        now = time.monotonic()
        if self.t0 is None:
            self.t0 = now
        delay = self.t0 + self.count * self.period - now
        self.count += 1
        if delay > 0:
            yield from bps.sleep(delay)


def replay_scan(
    path_or_scan: str | Path | StoredScan,
    *,
    frame_rate: float | None = None,
    md: dict[str, Any] | None = None,
    rows: slice | None = None,
) -> MsgGenerator[str]:
    """Stream a stored scan through the RunEngine as a live ``tomo_scan`` would.

    Parameters
    ----------
    path_or_scan : path or StoredScan
        A DXchange or NeXus/NXtomo file (opened with :func:`tomolive.io.formats.open_scan` and
        closed when the plan ends) or an open scan (left open).
    frame_rate : float, optional
        Frames per second, darks and flats included; None (default) replays as fast as the
        RunEngine goes.
    md : dict, optional
        Extra start-document metadata; overrides what the file supplies (e.g. ``sample``).
    rows : slice, optional
        Detector rows to replay (e.g. ``slice(500, 532)``); default all.

    Yields
    ------
    Msg
        Bluesky messages; the plan returns the run uid.

    Examples
    --------
    >>> RE(replay_scan("tooth.h5", frame_rate=100))  # doctest: +SKIP
    """
    if frame_rate is not None and not frame_rate > 0:
        raise BadInputError(f"frame_rate must be a positive number of Hz or None; got {frame_rate!r}.")
    if isinstance(path_or_scan, StoredScan):
        return (yield from _replay(path_or_scan, frame_rate, md, rows))
    with open_scan(path_or_scan) as scan:
        return (yield from _replay(scan, frame_rate, md, rows))


def _replay(
    scan: StoredScan, frame_rate: float | None, md: dict[str, Any] | None, rows: slice | None
) -> MsgGenerator[str]:
    _check_rows(rows, scan)
    detector = ReplayDetector(name="replay_det", scan=scan, rows=rows)
    rotation = Signal(name="replay_rotation", value=float(scan.angles_deg[0]))
    _md = _start_metadata(scan, detector, rotation, frame_rate, rows)
    _md.update(md or {})
    devices = [detector, rotation]
    pacer = _Pacer(frame_rate)

    @bpp.stage_decorator([detector])
    @bpp.run_decorator(md=_md)
    def inner() -> MsgGenerator[None]:
        for kind, stream in STREAMS:
            yield from bps.mv(detector.frame_kind, kind)
            for _ in range(len(scan.stack(kind))):
                yield from pacer.wait()
                yield from bps.trigger_and_read(devices, name=stream)
        yield from bps.mv(detector.frame_kind, "projection")
        for angle in scan.angles_deg:
            yield from bps.mv(rotation, float(angle))
            yield from pacer.wait()
            yield from bps.trigger_and_read(devices, name="primary")

    return (yield from inner())


def _start_metadata(
    scan: StoredScan,
    detector: ReplayDetector,
    rotation: Signal,
    frame_rate: float | None,
    rows: slice | None,
) -> dict[str, Any]:
    """The start document: tomo_scan's keys plus where the frames came from."""
    angles = [float(a) for a in scan.angles_deg]
    row_range = None if rows is None else [rows.start, rows.stop, rows.step]
    _md: dict[str, Any] = {
        "plan_name": "replay_scan",
        "plan_args": {"path": str(scan.source), "frame_rate": frame_rate, "rows": row_range},
        "detectors": [detector.name],
        "motors": [rotation.name],
        "num_points": len(angles),
        "num_intervals": len(angles) - 1,
        "hints": {"dimensions": [([rotation.name], "primary")]},
        "tomo": {
            "image_field": detector.image.name,
            "angle_field": rotation.name,
            "angle_units": "deg",
            "angles": angles,
            "n_angles": len(angles),
            "n_darks": len(scan.darks),
            "n_flats": len(scan.flats),
            "angular_range": float(np.ptp(angles)),
        },
        "replay": {"source": str(scan.source), "format": scan.format, **scan.metadata},
    }
    if "sample" in scan.metadata:
        _md["sample"] = scan.metadata["sample"]
    return _md


def _check_rows(rows: slice | None, scan: StoredScan) -> None:
    """``rows`` must be a forward slice selecting at least one detector row."""
    n_rows = scan.frame_shape[0]
    if rows is None:
        return
    if not isinstance(rows, slice) or (rows.step or 1) < 1 or not range(n_rows)[rows]:
        raise BadInputError(
            f"rows must be a slice selecting some of the {n_rows} detector rows of {str(scan.source)!r}; got {rows!r}."
        )
