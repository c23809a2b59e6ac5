"""The live stitched preview: the surrogate's image, or a few iterative sweeps, of the patterns so far.

While a view is being scanned, :class:`StitchedPreview` wakes every ``interval_s``, takes the
patterns and positions that have arrived, runs ``epochs`` sweeps of the solver over them
(starting from the object and probe of its last update, so the image sharpens as positions
accumulate) and hands the phase and amplitude to ``publish``. It runs on its own thread:
the ingest thread only appends frames and never waits for it. A new view (the next angle of
a rotation series) starts from a flat object and the probe found so far. Publish errors are
logged and the preview goes on: a preview is worth having, never worth losing the scan for.

When the model store has a surrogate for the run's pattern size (``find_surrogate``, called
once on the preview's thread: never on the ingest thread) and its trust check passes on the
patterns so far, the update is the surrogate's stitched image instead (milliseconds, not
sweeps); :attr:`PreviewImage.source` says which, and why the surrogate was not used.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .params import PtychoParams
from .views import View

if TYPE_CHECKING:
    from .learning import LiveSurrogate

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreviewImage:
    """The stitched object of one view so far: phase (rad) and amplitude, (rows, cols) float32."""

    phase: np.ndarray
    amplitude: np.ndarray
    view: int
    angle_deg: float
    n_patterns: int
    sweeps: int
    source: str


class StitchedPreview:
    """Runs a few solver sweeps on a background thread and publishes :class:`PreviewImage` s.

    ``snapshot()`` returns the current view's index and its :class:`View` so far (or None);
    ``probe`` is the starting probe (n, n); ``publish`` is called on the preview's thread, at
    most every ``params.preview_interval_s`` seconds; ``find_surrogate`` gives the surrogate
    the preview may use (None: iterative only).
    """

    def __init__(
        self,
        snapshot: Callable[[], tuple[int, View] | None],
        probe: np.ndarray,
        object_shape: tuple[int, int],
        params: PtychoParams,
        publish: Callable[[PreviewImage], None],
        find_surrogate: Callable[[], LiveSurrogate] | None = None,
    ):
        self.snapshot = snapshot
        self.initial_probe = probe
        self.object_shape = object_shape
        self.params = params
        self.publish = publish
        self.published = 0
        self.find_surrogate = find_surrogate
        self.surrogate: LiveSurrogate | None = None
        self._why_not = "surrogate off"
        self._probe = probe
        self._object: np.ndarray | None = None
        self._view = -1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tomolive-ptycho-preview", daemon=True)
        self._thread.start()

    def hold(self) -> None:
        """The scan ended: no more updates (the final reconstruction needs the cores)."""
        self._stop.set()

    def close(self, timeout: float | None = None) -> None:
        """Stop the thread, waiting up to ``timeout`` for an update under way."""
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        self._load_surrogate()
        interval = self.params.preview_interval_s
        done = 0  # patterns of the current view in the last published image
        while not self._stop.wait(interval):
            current = self.snapshot()
            if current is None:
                continue
            index, view = current
            if index != self._view:  # a new view: a flat object, the probe found so far
                self._view, self._object, done = index, None, 0
            n = len(view.patterns)
            if n < self.params.preview_min_patterns or n == done:
                continue
            started = time.monotonic()
            try:
                image = self._update(index, view)
            except Exception:
                logger.warning("the live preview could not update (%d patterns)", n, exc_info=True)
                continue
            if self._stop.is_set():
                return
            try:
                self.publish(image)
                self.published += 1
                done = n
            except Exception:
                logger.warning("could not publish the live preview (%d patterns)", n, exc_info=True)
            logger.debug("ptycho preview of %d patterns in %.2f s", n, time.monotonic() - started)

    def _load_surrogate(self) -> None:
        """Ask for the deployed surrogate once; a failure only means iterative previews."""
        if self.find_surrogate is None:
            return
        try:
            self.surrogate = self.find_surrogate()
            self._why_not = self.surrogate.why_not
        except Exception as err:
            logger.warning("the live preview could not load the surrogate", exc_info=True)
            self._why_not = f"the surrogate could not be loaded: {err}"

    def _update(self, index: int, view: View) -> PreviewImage:
        from .solver import reconstruct  # torch: imported when the first preview is due

        params = self.params
        why_not = self._why_not
        if self.surrogate is not None:
            obj, said = self.surrogate.image(view, self.object_shape)
            if obj is not None:
                return self._image(obj, index, view, 0, said)
            why_not = said
        result = reconstruct(
            view.patterns,
            view.positions,
            self._probe,
            object_shape=self.object_shape,
            method=params.preview_method,
            epochs=params.preview_epochs,
            batch_size=params.batch_size,
            object_init=self._object,
        )
        self._object = result.object
        self._probe = result.probe
        source = f"iterative: {params.preview_epochs} {params.preview_method} sweeps per update ({why_not})"
        return self._image(result.object, index, view, params.preview_epochs, source)

    @staticmethod
    def _image(obj: np.ndarray, index: int, view: View, sweeps: int, source: str) -> PreviewImage:
        return PreviewImage(
            phase=np.angle(obj).astype(np.float32),
            amplitude=np.abs(obj).astype(np.float32),
            view=index,
            angle_deg=view.angle_deg,
            n_patterns=len(view.patterns),
            sweeps=sweeps,
            source=source,
        )
