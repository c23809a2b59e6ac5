"""A ptychography run's frames on the way in: patterns and positions grouped into views, and the live preview.

Runs on the engine's ingest thread, frame by frame (see :mod:`.documents`: each event gives a
pattern, then its position). Every pattern is checked as it arrives (a 2-D ``n x n`` array as
the ``ptycho`` block says, finite, not negative) and every position against the object grid,
so a bad frame fails the run at once, naming it. A view is the patterns taken at one angle;
a rotation series has one per angle, in order. Patterns are kept in memory (float32).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import BadInputError, MissingDataError
from ...store import now
from . import physics
from .geometry import ScanSetup, check_block, check_positions
from .params import PtychoParams
from .preview import PreviewImage, StitchedPreview
from .views import View

if TYPE_CHECKING:
    from ...engine.run import Run
    from .learning import LiveSurrogate

logger = logging.getLogger(__name__)
ROLES = ("pattern", "position")
SAME_ANGLE_DEG = 1e-3
"""Rotation readbacks closer than this belong to one view."""
PREVIEW_KEYS = ("preview_phase", "preview_amplitude")


class _ViewFrames:
    """One view's patterns and positions as they arrive."""

    def __init__(self, angle_deg: float):
        self.angle_deg = angle_deg
        self.patterns: list[np.ndarray] = []
        self.positions: list[np.ndarray] = []

    def view(self) -> View:
        return View(self.angle_deg, np.stack(self.patterns), np.array(self.positions, dtype=np.float64))


class PtychoAcquisition:
    """Patterns and positions of one ptychography run, by view, and its live preview."""

    def __init__(self, run: Run, block: Any):
        self.run = run
        self.params: PtychoParams = run.params
        self._block = block  # checked on the first frame: the reader has refused a bad one by then
        self._setup: ScanSetup | None = None
        self.probe_guess: np.ndarray | None = None
        self.preview: StitchedPreview | None = None
        self._views: list[_ViewFrames] = []
        self._pattern: np.ndarray | None = None  # waiting for its position
        self._count = 0
        self._lock = threading.Lock()  # the preview reads the views while they grow
        self._targets: dict[str, Any] | None = None

    @property
    def setup(self) -> ScanSetup:
        """The run's checked ``ptycho`` block."""
        if self._setup is None:
            self._setup = check_block(self._block)
        return self._setup

    def _start(self) -> None:
        """The first frame: the probe guess, and the preview's thread."""
        guess = self.setup.probe
        probe = physics.make_probe(
            self.setup.pattern_n,
            aperture_px=guess.aperture_px,
            defocus_phase_rad=guess.defocus_phase_rad,
            kind=guess.kind,
        )
        self.probe_guess = physics.add_probe_modes(probe, self.params.probe_modes)
        self.preview = StitchedPreview(
            self._snapshot,
            self.probe_guess,
            self.setup.object_shape,
            self.params,
            self._publish,
            None if self.params.surrogate == "off" else self._find_surrogate,
        )

    def _find_surrogate(self) -> LiveSurrogate:
        """The deployed surrogate for this run's pattern size (the preview's thread: it waits for the store)."""
        from .learning import deployed_surrogate  # torch: imported off the ingest thread

        store = self.run.store.result()
        client = getattr(store, "models_client", None)
        return deployed_surrogate(client, self.setup.pattern_n, self.params.surrogate_channels)

    # -- the ingest thread ----------------------------------------------------------------

    def add(self, role: str, frame: np.ndarray, coordinate: float | None) -> None:
        """Take a pattern, or the position (row, col) of the pattern before it, at angle ``coordinate``."""
        if self.probe_guess is None:
            self._start()
        if role == "pattern":
            if self._pattern is not None:
                raise BadInputError(f"pattern {self._count} arrived before the position of the pattern before it.")
            self._pattern = self._check_pattern(frame)
        elif role == "position":
            if self._pattern is None:
                raise BadInputError(f"a position arrived with no pattern before it (after pattern {self._count}).")
            self._add_position(self._pattern, frame, 0.0 if coordinate is None else float(coordinate))
        else:
            raise BadInputError(f"a ptychography frame's role must be one of {ROLES}; got {role!r}.")

    def _check_pattern(self, frame: np.ndarray) -> np.ndarray:
        n, where = self.setup.pattern_n, f"pattern {self._count}"
        if frame.ndim != 2 or frame.size == 0:
            raise BadInputError(f"{where} has shape {frame.shape!r}; expected a 2-D {n}x{n} diffraction pattern.")
        if frame.shape != (n, n):
            raise BadInputError(
                f"{where} has shape {frame.shape!r} but the ptycho block's pattern_shape (and every pattern "
                f"before it) is {(n, n)!r}; the detector's shape must not change during a scan."
            )
        pattern = frame.astype(np.float32)
        if not np.isfinite(pattern).all():
            bad = int(np.count_nonzero(~np.isfinite(pattern)))
            raise BadInputError(f"{where} holds {bad} NaN or infinite pixels; expected finite detector counts.")
        if (pattern < 0).any():
            raise BadInputError(f"{where} holds negative intensities (min {pattern.min():.3g}); expected counts >= 0.")
        if not pattern.any():
            raise BadInputError(f"{where} is all zero; expected diffraction counts. Check the detector and shutter.")
        return pattern

    def _add_position(self, pattern: np.ndarray, frame: np.ndarray, angle: float) -> None:
        position = np.asarray(frame, dtype=np.float64).reshape(-1)
        if position.shape != (2,):
            raise BadInputError(f"the position of pattern {self._count} must be (row, col); got {frame!r}.")
        check_positions(
            position[None], self.setup.object_shape, self.setup.pattern_n, what=f"the position of pattern {self._count}"
        )
        with self._lock:
            if not self._views or abs(angle - self._views[-1].angle_deg) > SAME_ANGLE_DEG:
                if any(abs(angle - v.angle_deg) <= SAME_ANGLE_DEG for v in self._views):
                    raise BadInputError(f"pattern {self._count} returns to angle {angle} deg after other angles.")
                self._views.append(_ViewFrames(angle))
            self._views[-1].patterns.append(pattern)
            self._views[-1].positions.append(position)
        self._pattern = None
        self._count += 1

    def _snapshot(self) -> tuple[int, View] | None:
        """The current view so far, for the preview (its thread)."""
        with self._lock:
            if not self._views or len(self._views[-1].patterns) < 2:
                return None
            return len(self._views) - 1, self._views[-1].view()

    def _publish(self, image: PreviewImage) -> None:
        """Write the preview arrays (made on the first call) and say what they show in ``preview``."""
        store = self.run.store.result()
        if self._targets is None:
            units = {"preview_phase": "rad", "preview_amplitude": "transmission"}
            self._targets = {
                key: store.new_volume(
                    key, self.setup.object_shape, self.setup.object_shape[0], metadata={"units": unit}
                )
                for key, unit in units.items()
            }
        self._targets["preview_phase"].write_block(0, image.phase)
        self._targets["preview_amplitude"].write_block(0, image.amplitude)
        store.update(
            preview={
                "keys": list(PREVIEW_KEYS),
                "source": image.source,
                "interval_s": self.params.preview_interval_s,
                "view": image.view,
                "angle_deg": image.angle_deg,
                "n_patterns": image.n_patterns,
                "updated": now(),
            }
        )

    def stopping(self) -> None:
        """The stop arrived: no more preview updates (the final reconstruction starts soon)."""
        if self.preview is not None:
            self.preview.hold()

    def finish(self) -> None:
        """Every frame is in: check every pattern has its position and each view suffices."""
        if self._pattern is not None:
            raise MissingDataError(f"pattern {self._count} never got its position.")
        if not self._views:
            raise MissingDataError("the scan was stopped before any diffraction pattern arrived.")
        counts = [len(v.patterns) for v in self._views]
        if min(counts) < 2:
            raise MissingDataError(f"a view needs at least 2 patterns to reconstruct; patterns per view: {counts}.")
        if len(self._views) > 1 and len(set(counts)) > 1:
            raise MissingDataError(f"the views of a rotation series must have one number of patterns; got {counts}.")
        self.run.provenance.inputs.update(
            n_views=len(self._views),
            n_patterns=self._count,
            pattern_shape=[self.setup.pattern_n] * 2,
            angles_deg=[v.angle_deg for v in self._views],
        )

    def views(self) -> list[View]:
        """Every view, in the order taken."""
        with self._lock:
            return [v.view() for v in self._views]

    # -- after processing -------------------------------------------------------------------

    def close(self, patience_s: float) -> None:
        """Stop the preview (held since the stop)."""
        if self.preview is not None:
            self.preview.close(timeout=patience_s)
            self.preview = None

    def release(self) -> None:
        """Drop the patterns."""
        with self._lock:
            self._views = []

    def discard(self, store: Any) -> None:
        """The run ended without a result: stop the preview, drop the patterns."""
        self._pattern = None
        if self.preview is not None:
            self.preview.close(timeout=0)
            self.preview = None
        self.release()
