"""A live preview: a few slices reconstructed incrementally while projections arrive.

Each new projection is filtered (ramp) and back-projected into a running sum, so the
preview sharpens as angles accumulate: after a quarter of a 180-degree scan it shows the
object seen from those angles, at the end it is a full filtered back-projection. Wide
detectors are binned to at most ``size`` pixels across, so each frame costs about the same
(a few milliseconds: torch's ``grid_sample`` does the interpolation) whatever the detector.

:class:`LivePreview` runs this on its own thread: the RunEngine thread only hands over
the preview rows of each frame (a copy of a few detector rows) and never waits, however
slow the reconstruction or the Tiled server is. Results are published at most every
``interval_s`` seconds. When the acquisition outpaces it, frames queue up; those still
queued when the scan ends are dropped (:meth:`LivePreview.hold`), since the volume's
reconstruction starts then and needs the CPU more than the preview does.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.fft
import torch

from ...errors import BadInputError
from ...recon.filters import filter_response, pad_projections, padded_width

logger = logging.getLogger(__name__)


def default_preview_rows(n_rows: int) -> tuple[int, ...]:
    """The central detector row plus the rows a quarter of the way from each end."""
    return tuple(sorted({n_rows // 4, n_rows // 2, (3 * n_rows) // 4}))


@dataclass(frozen=True)
class PreviewSnapshot:
    """The preview at one moment: ``image`` is float32 (len(rows), size, size), or None when
    it is the image of the previous snapshot (the last one, after :meth:`LivePreview.hold`,
    often only adds ``dropped``)."""

    image: np.ndarray | None
    rows: tuple[int, ...]
    n_angles: int
    angle_range_deg: tuple[float, float]
    center: float
    binning: int
    dropped: int | None = None  # frames left out because the scan ended first; None until the last snapshot


class IncrementalFBP:
    """Filtered back-projection of a few detector rows, one projection at a time.

    Follows :mod:`tomolive.recon` conventions: ``center`` is the rotation-axis column
    (pixel j's centre at j), the output grid is centred on the axis, values are attenuation
    per (unbinned) detector pixel, scaled for a scan covering 180 degrees (or 360) evenly.
    """

    def __init__(self, n_cols: int, center: float, size: int = 512, filter: str = "ramp"):
        if n_cols < 2:
            raise BadInputError(f"n_cols: need a detector at least 2 pixels wide; got {n_cols}.")
        self.binning = max(1, math.ceil(n_cols / size))
        self.n = n_cols // self.binning
        self.center = float(center)
        binned_center = (self.center - (self.binning - 1) / 2) / self.binning
        self._width = padded_width(self.n)
        self._filter = filter_response(filter, self._width).astype(np.float32)
        grid = torch.arange(self.n, dtype=torch.float32) - (self.n - 1) / 2
        self._x = grid[None, :]
        self._y = grid[:, None]
        self._c = binned_center
        self.sum: torch.Tensor | None = None
        self.n_angles = 0
        self.angle_range = (math.inf, -math.inf)

    def _filtered(self, rows: np.ndarray) -> np.ndarray:
        binned = rows[:, : self.n * self.binning].reshape(len(rows), self.n, self.binning).mean(-1)
        spectrum = scipy.fft.rfft(pad_projections(binned, self._width, "edge"), axis=-1)
        spectrum *= self._filter[: spectrum.shape[-1]]
        return scipy.fft.irfft(spectrum, n=self._width, axis=-1)[:, : self.n].astype(np.float32)

    def add(self, rows: np.ndarray, angle: float) -> None:
        """Back-project the detector ``rows`` (k, n_cols) of a projection taken at ``angle`` (rad)."""
        q = torch.from_numpy(self._filtered(np.asarray(rows, dtype=np.float32)))
        # Detector coordinate of every pixel, scaled to grid_sample's [-1, 1] over the row.
        s = self._c + self._x * math.cos(angle) + self._y * math.sin(angle)
        grid = torch.stack([s * (2.0 / (self.n - 1)) - 1.0, torch.zeros_like(s)], dim=-1)
        values = torch.nn.functional.grid_sample(
            q[None, :, None, :], grid[None], mode="bilinear", padding_mode="zeros", align_corners=True
        )[0]
        if self.sum is None:
            self.sum = torch.zeros_like(values)
        self.sum += values
        self.n_angles += 1
        degrees = math.degrees(angle)
        self.angle_range = (min(self.angle_range[0], degrees), max(self.angle_range[1], degrees))

    def image(self) -> np.ndarray:
        """The current reconstruction, (k, n, n) float32, weighted as if the scan were even."""
        if self.sum is None:
            raise BadInputError("the preview has no projection yet.")
        folds = 2 if self.angle_range[1] - self.angle_range[0] > 270 else 1
        return (self.sum * (math.pi * folds / self.n_angles / self.binning)).numpy()


class LivePreview:
    """Runs :class:`IncrementalFBP` on a background thread and publishes snapshots.

    ``publish`` is called on that thread with a :class:`PreviewSnapshot`, at most every
    ``interval_s`` seconds until :meth:`hold`, and a last time at :meth:`close` (once anything
    was back-projected), whose snapshot alone gives ``dropped``: the frames not back-projected
    because the scan ended first. Publish errors are logged and the preview goes on (a
    preview is worth having, never worth losing the scan for).
    """

    def __init__(
        self,
        rows: Sequence[int],
        n_cols: int,
        center: float,
        publish: Callable[[PreviewSnapshot], None],
        *,
        size: int = 512,
        interval_s: float = 2.0,
    ):
        self.rows = tuple(int(r) for r in rows)
        self.fbp = IncrementalFBP(n_cols, center, size=size)
        self.publish = publish
        self.interval_s = interval_s
        self.published = 0
        self.dropped = 0
        self._pending: list[tuple[np.ndarray, float]] = []
        self._wake = threading.Condition()
        self._closing = False
        self._held = False
        self._thread = threading.Thread(target=self._run, name="tomolive-preview", daemon=True)
        self._thread.start()

    def add(self, frame: np.ndarray, angle_rad: float) -> None:
        """Hand over a frame's preview rows (copied; returns at once); dropped once held or closed."""
        with self._wake:
            if self._held or self._closing:
                self.dropped += 1
                return
            self._pending.append((frame[list(self.rows)].copy(), angle_rad))
            self._wake.notify()

    def hold(self) -> None:
        """The scan has ended: drop the frames still queued, and those of a batch being
        back-projected, and publish nothing more until :meth:`close`: the cores are better
        spent on the start of the volume, which soon shows every angle."""
        with self._wake:
            self._held = True
            self.dropped += len(self._pending)
            self._pending = []

    def close(self, timeout: float | None = None) -> None:
        """Back-project what is still queued (nothing, after :meth:`hold`), publish a last
        time and stop the thread."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        last_publish = -math.inf
        published_angles = 0
        while True:
            with self._wake:
                unpublished = self.fbp.n_angles > published_angles
                if not self._pending and not self._closing:
                    due_in = self.interval_s - (time.monotonic() - last_publish)
                    self._wake.wait(timeout=max(0.0, due_in) if unpublished and not self._held else None)
                batch, self._pending = self._pending, []
                closing = self._closing
                dropped = self.dropped if closing else None  # later frames are dropped too, uncounted here
            for done, (rows, angle) in enumerate(batch):
                if self._held:  # the scan ended mid-batch: the rest is dropped like the queue
                    with self._wake:
                        self.dropped += len(batch) - done
                        dropped = self.dropped if closing else None
                    break
                self.fbp.add(rows, angle)
            due = time.monotonic() - last_publish >= self.interval_s and not self._held
            # the last publish is sent even with no new angle: it alone says how many were dropped
            if self.fbp.n_angles and (closing or (due and self.fbp.n_angles > published_angles)):
                last_publish = time.monotonic()
                if self._publish(dropped, with_image=self.fbp.n_angles > published_angles):
                    published_angles = self.fbp.n_angles
            if closing:
                return

    def _publish(self, dropped: int | None, with_image: bool) -> bool:
        snapshot = PreviewSnapshot(
            self.fbp.image() if with_image else None,
            self.rows,
            self.fbp.n_angles,
            self.fbp.angle_range,
            self.fbp.center,
            self.fbp.binning,
            dropped,
        )
        try:
            self.publish(snapshot)
        except Exception:
            logger.warning("could not publish the live preview (%d angles)", snapshot.n_angles, exc_info=True)
            return False
        self.published += 1
        return True
