"""A Bragg run's frames on the way in: find the peaks of each frame and localise them at once.

Runs on the engine's ingest thread, frame by frame: check the frame (2-D, the detector's
shape, finite: anything else fails the run, naming the frame), find its peaks, skip and
count those whose patch would cross the detector edge, and localise the rest with the
model deployed in the technique's slot at that moment (its version goes in each row, so a
hot swap mid-scan shows in the table). A frame with no peak is recorded, not fatal; peaks
touching saturated pixels are flagged. A few patches are kept for the audit stage, and
every frame's patches go to the retraining loop (:mod:`.live_loop`, tagged with the run's
uid) or to a hand-wired drift monitor. The loop is connected off this thread; the first
frame waits for it at most ``LOOP_WAIT_S`` (frames before it connects are not audited).
"""

from __future__ import annotations

import time
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import BadInputError, MissingDataError
from .peaks import check_frame, extract_patches, find_peaks, split_edge

if TYPE_CHECKING:
    from ...engine.run import Run
    from .live_loop import BraggLoop
    from .technique import BraggTechnique

LOOP_WAIT_S = 10.0
COLUMNS = ("frame", "peak_id", "omega", "x", "y", "intensity", "saturated", "method", "model_version")


class BraggAcquisition:
    """Peak rows of one run, built frame by frame, and what was odd about its frames."""

    def __init__(self, run: Run, technique: BraggTechnique):
        self.run = run
        self.technique = technique
        params = technique.params
        found = run.metadata.get("bragg")
        bragg: dict[str, Any] = found if isinstance(found, dict) else {}
        self.threshold = float(bragg.get("threshold", params.threshold))
        self.min_pixels = int(bragg.get("min_pixels", params.min_pixels))
        self.patch_size = int(bragg.get("patch_size", params.patch_size))
        shape = bragg.get("frame_shape")
        self.frame_shape: tuple[int, ...] | None = tuple(int(n) for n in shape) if shape else None
        self.frame_dtype = str(bragg.get("frame_dtype") or "")
        self.rows: dict[str, list[Any]] = {name: [] for name in COLUMNS}
        self.n_frames = 0
        self.empty_frames: list[int] = []
        self.saturated_frames: list[int] = []
        self.edge_peaks = 0
        self.versions: dict[str, int] = {}  # model version label -> peaks it localised
        self.audit: list[tuple[int, np.ndarray, np.ndarray]] = []  # (table row, patch, origin)
        self.refit: list[tuple[int, np.ndarray, np.ndarray]] = []  # every peak after the cost model chose the fit
        self._rng = np.random.default_rng(0)
        self._connecting = technique.attach(run) if technique.automatic else None
        self.loop: BraggLoop | None = None
        self.loop_why: str | None = None  # why this run is edge-only
        self._infer_s = 0.0

    def add(self, role: str, frame: np.ndarray, coordinate: float | None) -> None:
        """Take frame number ``self.n_frames`` at rotation angle ``coordinate`` (degrees)."""
        if role != "frame":
            raise BadInputError(f"a Bragg run's frames have role 'frame'; got {role!r}.")
        index = self.n_frames
        image = self._checked(frame, index)
        self.n_frames += 1
        level = self._saturation(frame)
        saturated = image >= level if level is not None else None
        if saturated is not None and saturated.any():
            self.saturated_frames.append(index)
        centres = find_peaks(image, self.threshold, self.min_pixels)
        if len(centres) == 0:
            self.empty_frames.append(index)
        inside = split_edge(centres, image.shape, self.patch_size)
        self.edge_peaks += int((~inside).sum())
        patches, origins = extract_patches(image, centres[inside], self.patch_size)
        self._connect(LOOP_WAIT_S if index == 0 else 0.0)
        self._infer_s = 0.0
        self._localise(index, coordinate, patches, origins, saturated)
        if self.loop is not None:
            self.loop.observe(self.run.uid, index, patches, self._infer_s)
        elif self.technique.monitor is not None:
            self.technique.monitor.observe(index, patches, source=self.run.uid)

    def _connect(self, wait_s: float) -> None:
        """Take the loop once its connection is done (waiting up to ``wait_s``), or why there is none."""
        future = self._connecting
        if future is None or (wait_s == 0 and not future.done()):
            return
        try:
            outcome = future.result(timeout=wait_s)
        except FutureTimeout:
            return
        except Exception as err:
            outcome = f"edge-only: the retraining loop could not connect ({type(err).__name__}: {err})"
        self._connecting = None
        if isinstance(outcome, str):
            self.loop_why = outcome
        else:
            self.loop = outcome

    def loop_record(self) -> dict[str, Any]:
        """What the retraining loop did with this run's peaks (waits for its passes, up to ``wait_s``)."""
        retrain = self.technique.params.retrain
        if not self.technique.automatic:
            manual = self.technique.monitor is not None
            why = "a hand-wired drift monitor" if manual else "params.retrain.mode is 'off'"
            return {"mode": "manual" if manual else "off", "why": why}
        self._connect(LOOP_WAIT_S)
        if self.loop is None:
            return {"mode": "edge-only", "why": self.loop_why or f"the loop did not connect in {LOOP_WAIT_S:g} s"}
        return self.loop.record(self.run.uid, retrain.wait_s)

    def _checked(self, frame: np.ndarray, index: int) -> np.ndarray:
        """The frame as float64, or a BadInputError naming frame ``index`` and what was wrong."""
        name = f"frame {index}"
        if frame.ndim != 2:
            raise BadInputError(f"{name} has shape {frame.shape!r}; expected a 2-D detector image (rows, columns).")
        if self.frame_shape is None:
            self.frame_shape = frame.shape
        if frame.shape != self.frame_shape:
            raise BadInputError(
                f"{name} has shape {frame.shape!r}; expected the detector's {self.frame_shape!r} "
                "(start document's bragg.frame_shape, else the first frame's)."
            )
        if min(frame.shape) < self.patch_size:
            raise BadInputError(f"{name} of shape {frame.shape!r} is smaller than a {self.patch_size}-px patch.")
        return check_frame(frame, name)

    def _saturation(self, frame: np.ndarray) -> float | None:
        """The count at which this run's pixels saturate: the parameter, else the dtype's maximum."""
        if self.technique.params.saturation is not None:
            return float(self.technique.params.saturation)
        for dtype in (self.frame_dtype, frame.dtype):
            if dtype and np.issubdtype(np.dtype(dtype), np.integer):
                return float(np.iinfo(np.dtype(dtype)).max)
        return None

    def _localise(
        self,
        index: int,
        omega: float | None,
        patches: np.ndarray,
        origins: np.ndarray,
        saturated: np.ndarray | None,
    ) -> None:
        """Centres of this frame's peaks by the deployed model, appended as table rows."""
        if len(patches) == 0:
            return
        import torch

        from .braggnn import predict_centres

        torch.set_num_threads(1)  # this (ingest) thread only: small batches are slower on more threads
        model, label = self.technique.deployed()
        start = time.perf_counter()
        centres = predict_centres(model, patches, self.technique.params.batch_size)
        self._infer_s = time.perf_counter() - start
        self.versions[label] = self.versions.get(label, 0) + len(patches)
        half, size = self.patch_size // 2, self.patch_size
        border = np.concatenate([patches[:, 0], patches[:, -1], patches[:, 1:-1, 0], patches[:, 1:-1, -1]], axis=1)
        intensity = patches.sum(axis=(1, 2)) - np.median(border, axis=1) * size * size
        flagged = np.zeros(len(patches), bool)
        if saturated is not None:
            flagged = np.array([saturated[r : r + size, c : c + size].any() for r, c in origins])
        first_row = len(self.rows["frame"])
        self.rows["frame"] += [index] * len(patches)
        self.rows["peak_id"] += list(range(len(patches)))
        self.rows["omega"] += [np.nan if omega is None else float(omega)] * len(patches)
        self.rows["y"] += (origins[:, 0] + centres[:, 0]).tolist()
        self.rows["x"] += (origins[:, 1] + centres[:, 1]).tolist()
        self.rows["intensity"] += intensity.astype(np.float64).tolist()
        self.rows["saturated"] += flagged.tolist()
        self.rows["method"] += ["braggnn"] * len(patches)
        self.rows["model_version"] += [label] * len(patches)
        self._sample_for_audit(first_row, patches, origins, half)

    def _sample_for_audit(self, first_row: int, patches: np.ndarray, origins: np.ndarray, half: int) -> None:
        params = self.technique.params
        tally = self.loop.runs.get(self.run.uid) if self.loop is not None else None
        if tally is not None and tally.fit_rest:  # the cost model chose the fit for the rest of the run
            self.refit += [(first_row + k, patches[k], origins[k]) for k in range(len(patches))]
            return
        room = params.audit_max - len(self.audit)
        if room <= 0 or params.audit_fraction <= 0:
            return
        picked = np.flatnonzero(self._rng.random(len(patches)) < params.audit_fraction)[:room]
        self.audit += [(first_row + int(k), patches[k], origins[k]) for k in picked]

    def stopping(self) -> None:
        pass

    def finish(self) -> None:
        """Every frame is in: there must be one; record the frames in provenance."""
        if self.n_frames == 0:
            raise MissingDataError("the Bragg scan was stopped before any frame arrived.")
        self.run.provenance.inputs.update(
            frame_shape=list(self.frame_shape or ()),
            n_frames=self.n_frames,
            peak_finding={"threshold": self.threshold, "min_pixels": self.min_pixels, "patch_size": self.patch_size},
        )

    def close(self, patience_s: float) -> None:
        pass

    def release(self) -> None:
        self.audit, self.refit = [], []

    def discard(self, store: Any) -> None:
        """The run ended without a result: drop the rows (nothing was written to ``store``)."""
        self.rows = {name: [] for name in COLUMNS}
        self.audit, self.refit = [], []

    def summary(self) -> dict[str, Any]:
        """What the container's metadata says of the frames: counts, and frames that were odd."""
        localised = [s for s, m in zip(self.rows["saturated"], self.rows["method"], strict=True) if m == "braggnn"]
        return {
            "n_frames": self.n_frames,
            "n_peaks": len(localised),
            "empty_frames": list(self.empty_frames),
            "saturated_frames": list(self.saturated_frames),
            "saturated_peaks": int(sum(localised)),
            "edge_peaks": self.edge_peaks,
            "model_versions": dict(self.versions),
        }
