"""A tomography run's frames on the way in: darks and flats, the projection spool, the live preview.

Runs on the engine's ingest thread, frame by frame. Darks and flats are kept until the first
projection, then reduced; each projection is normalised, appended to the scratch spool and
handed to the live preview. As soon as the frame shape is known, the empty ``recon`` array
is made on an I/O thread, so processing starts with the centre search.

Flats may also come after the projections, or at both ends (``tomo.flats``, see
:mod:`.flats`): then projections are spooled raw and corrected once the last flats are in,
each with flats interpolated between the two sets; the live preview uses the flats taken
before, or waits for flats and says so (``preview_status`` in the container's metadata).
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import BadInputError, MissingDataError
from ...store import now
from ...validation import check_finite
from .flats import CALIBRATIONS, CalibrationSet, FlatField, correct_spool, flat_mode
from .preview import LivePreview, PreviewSnapshot, default_preview_rows
from .reconstruction import new_recon_volume, prepare_projection
from .sanity import check_flats_over_darks, check_frame_values, check_transmission
from .spool import ProjectionSpool

if TYPE_CHECKING:
    from ...engine.run import Run

logger = logging.getLogger(__name__)
ROLES = (*CALIBRATIONS, "projection")
WAITING_FOR_FLATS = "waiting for flats: no flats came before the projections; they are spooled raw until the flats come"
FLATS_ARRIVED = "flats arrived after the projections: no live preview; the reconstruction follows"


class TomoAcquisition:
    """Calibration frames, the spool and the preview of one tomography run."""

    def __init__(self, run: Run, expected_angles: int = 256):
        self.run = run
        self.params = run.params
        self.expected_angles = expected_angles
        self.mode = flat_mode(run.metadata.get("tomo"))
        self.sets = {"before": CalibrationSet.empty(), "after": CalibrationSet.empty()}
        self.deferred = False  # projections spooled raw until the flats after them arrive
        self.times: dict[str, list[float]] = {role: [] for role in ROLES}  # acquisition times, when known
        self.flat: np.ndarray | None = None
        self.dark: np.ndarray | None = None
        self.spool: ProjectionSpool | None = None
        self.preview: LivePreview | None = None
        self.preview_status: str | None = None  # why there is no live preview yet, when there is none
        self.recon_volume: Future | None = None  # made during the scan, once the frame shape is known
        self.blocks_submitted = False  # processing has begun writing the recon array
        self._frame_shape: tuple[int, ...] | None = None
        self._counts = dict.fromkeys(ROLES, 0)

    # -- the ingest thread ----------------------------------------------------------------

    def record_time(self, role: str, time: float) -> None:
        """The acquisition time of the next frame of ``role`` (the document reader's thread;
        read once every frame is in): flats at both ends are interpolated by time."""
        self.times[role].append(float(time))

    def add(self, role: str, frame: np.ndarray, coordinate: float | None) -> None:
        """Take a dark, a flat, or a projection at angle ``coordinate`` (degrees)."""
        if role not in ROLES:
            raise BadInputError(f"a tomography frame's role must be one of {ROLES}; got {role!r}.")
        self._check_frame(role, frame)
        check_frame_values(role, self._counts[role], frame)
        self._counts[role] += 1
        if role == "projection":
            if coordinate is None:
                raise BadInputError("a projection arrived without its rotation angle.")
            self._add_projection(frame, float(coordinate))
        elif self.spool is None:
            self.sets["before"].frames[role].append(frame)
        elif self.deferred:
            self.sets["after"].frames[role].append(frame)
        else:
            raise BadInputError(
                f"a {role} frame arrived after the projections began, but the projections were already "
                f"corrected with the flats before them (tomo.flats={self.mode!r}); to take flats at the end "
                "too, declare it: tomo_scan(..., flats='after' or 'both')."
            )

    def _check_frame(self, role: str, frame: np.ndarray) -> None:
        if frame.ndim != 2 or frame.shape[0] < 1 or frame.shape[1] < 2:
            raise BadInputError(
                f"a {role} frame has shape {frame.shape!r}; expected a 2-D detector image (rows, columns) "
                "of at least 1 row and 2 columns."
            )
        if self._frame_shape is None:
            self._frame_shape = frame.shape
        elif frame.shape != self._frame_shape:
            raise BadInputError(
                f"a {role} frame has shape {frame.shape!r} but the frames before it have {self._frame_shape!r}; "
                "darks, flats and projections must all have the detector's shape."
            )

    def _add_projection(self, frame: np.ndarray, angle_deg: float) -> None:
        if self.spool is None:
            self._start(frame)
        assert self.spool is not None
        prepared = None  # with the flats before (if any): the spool's frame, or only the preview's
        if self.flat is not None and self.dark is not None and (not self.deferred or self.preview is not None):
            prepared = prepare_projection(frame, self.flat, self.dark, self.params)
        if self.deferred:  # raw counts (exact in float32), corrected when the last flats are in
            check_finite(frame, "projection")
            self.spool.append(frame, angle_deg)
        else:
            assert prepared is not None
            check_transmission(len(self.spool), prepared)
            self.spool.append(prepared, angle_deg)
        if self.preview is not None and prepared is not None:
            self.preview.add(prepared, math.radians(angle_deg))

    def _start(self, frame: np.ndarray) -> None:
        before = self.sets["before"]
        self.deferred = self.mode in ("after", "both") or (self.mode is None and not before.count("flat"))
        if not self.deferred:
            for name in CALIBRATIONS:
                if not before.count(name):
                    raise MissingDataError(
                        f"no {name} frames arrived before the first projection; the scan needs a "
                        f"'{name}' stream (tomo_scan(..., n_{name}s=10)) to normalise projections, "
                        "or tomo_scan(..., flats='after') to take darks and flats at the end."
                    )
        before.reduce(self.params.flat_reduce, "before the projections")
        if before.flat is not None and before.dark is not None:
            check_flats_over_darks(before.flat, before.dark)
            self.flat, self.dark = before.flat, before.dark
        self.run.provenance.inputs.update(
            frame_shape=list(frame.shape),
            frame_dtype=str(frame.dtype),
            n_darks=before.n_darks,
            n_flats=before.n_flats,
        )
        path = self.run.engine.scratch_dir / f"tomolive-spool-{self.run.uid}.zarr"
        shape = frame.shape  # keep the shape, not the frame
        self.spool = ProjectionSpool.create(path, shape, self.params.rows_per_block, self.expected_angles)
        self.run.store.add_done_callback(lambda store: self._make_recon_volume(store, shape))
        if self.flat is not None:
            self._start_preview(shape)
        else:
            self._say_preview_status(WAITING_FOR_FLATS)

    def _say_preview_status(self, status: str) -> None:
        """Put ``preview_status`` in the container's metadata (on an I/O thread, once it exists); the
        final metadata repeats it (:class:`~.stages.CenterStage`), so a concurrent update cannot lose it."""
        self.preview_status = status

        def say(store: Future) -> None:
            if store.exception() is None:
                self.run.unless_ended(lambda: self.run.engine.io.submit(store.result().update, preview_status=status))

        self.run.store.add_done_callback(say)

    def _correct_deferred(self) -> None:
        """The spool holds raw frames: correct each with its flats, interpolated when both ends have them."""
        assert self.spool is not None
        self.sets["after"].reduce(self.params.flat_reduce, "after the projections")
        field = FlatField.of_scan(self.sets["before"], self.sets["after"], self.times, len(self.spool))
        if self.mode == "both" and not field.interpolated:
            logger.warning("run %s declared flats at both ends but has one set only: corrected with it", self.run.uid)
        correct_spool(str(self.spool.path), field, self.params)
        self.run.provenance.inputs.update(field.provenance(self.mode))
        if self.preview is None:
            self._say_preview_status(FLATS_ARRIVED)

    def _make_recon_volume(self, store: Future, frame_shape: tuple[int, int]) -> None:
        """Once the store exists, make its empty ``recon`` array on an I/O thread, unless the
        run has ended: then processing makes it, or nothing needs it."""
        if store.exception() is not None:
            return

        def make() -> None:
            self.recon_volume = self.run.engine.io.submit(new_recon_volume, store.result(), frame_shape, self.params)

        self.run.unless_ended(make)

    def early_volume(self, store: Any) -> Future | None:
        """The ``recon`` array made during the scan, if it is ``store``'s and was made (Tiled was up)."""
        made_on, volume = self.run.store, self.recon_volume
        if volume is None or not made_on.done() or made_on.exception() is not None or made_on.result() is not store:
            return None
        if volume.done() and volume.exception() is not None:
            return None
        return volume

    def _start_preview(self, frame_shape: tuple[int, int]) -> None:
        rows = self.params.preview_rows
        rows = rows if rows is not None else default_preview_rows(frame_shape[0])
        if not rows:
            return
        if max(rows) >= frame_shape[0] or min(rows) < 0:
            raise BadInputError(f"preview_rows {rows!r} are outside the detector's {frame_shape[0]} rows.")
        center = self.params.center if self.params.center is not None else (frame_shape[1] - 1) / 2
        self.preview = LivePreview(
            rows,
            frame_shape[1],
            center,
            self._publish_preview,
            size=self.params.preview_size,
            interval_s=self.params.preview_interval_s,
        )

    def _publish_preview(self, snapshot: PreviewSnapshot) -> None:
        self.run.store.result().write_preview(
            snapshot.image,
            {
                "rows": list(snapshot.rows),
                "n_angles": snapshot.n_angles,
                "angle_range_deg": list(snapshot.angle_range_deg),
                "center": snapshot.center,
                "center_source": "given" if self.params.center is not None else "detector middle",
                "binning": snapshot.binning,
                "frames_dropped": snapshot.dropped,
                "updated": now(),
            },
        )

    def stopping(self) -> None:
        """Hold the preview now: a publish due before the last frame is in would run beside
        the centre search, which the whole reconstruction waits for."""
        if self.preview is not None:
            self.preview.hold()

    def finish(self) -> None:
        """Every frame is in: close the spool and record what came in."""
        self.dark = self.flat = None
        if self.spool is None:
            raise MissingDataError("the scan was stopped before any projection arrived.")
        self.spool.finish()
        if self.deferred:
            self._correct_deferred()
        if self.preview is not None:
            self.preview.hold()  # its last publish waits until the volume's blocks are queued
        self.run.provenance.inputs.update(n_angles=len(self.spool), angles_deg=self.spool.angles)

    # -- after processing -------------------------------------------------------------------

    def blocks_started(self) -> None:
        """The volume's blocks are queued: the preview's last publish may run beside them."""
        self.blocks_submitted = True
        if self.preview is not None:
            self.preview.close(timeout=0)

    def close(self, patience_s: float) -> None:
        """Wait for the preview's last publish."""
        if self.preview is not None:
            self.preview.close(timeout=patience_s)
            self.preview = None

    def release(self) -> None:
        """Delete the spool (about 0.2 s per 512 MB: done off the processing thread)."""
        if self.spool is not None:
            self.spool.remove()

    def discard(self, store: Any) -> None:
        """The run ended without a result: stop the preview, drop the spool, and mark an empty
        ``recon`` array in ``store`` (None when it is unreachable) as never written."""
        self.dark = self.flat = None
        self.sets = {"before": CalibrationSet.empty(), "after": CalibrationSet.empty()}
        if self.preview is not None:
            self.preview.close(timeout=0)
            self.preview = None
        self.release()
        if store is not None and not self.blocks_submitted:
            self._mark_unwritten_volume(store)

    def _mark_unwritten_volume(self, store: Any) -> None:
        """Say so in the container when its ``recon`` array was made but never written: the
        pipeline's key may not delete (least privilege), and the status says why."""
        if self.recon_volume is not None:
            self.recon_volume.exception()  # waits for one being made: no array appears after this
        try:
            if "recon" in store:
                store.update(unwritten=["recon"])
        except Exception as err:  # the status, set next, says why there is no result
            logger.warning("could not mark the empty recon array of run %s: %s", self.run.uid, err)
