"""A Bragg run's frames on the way in: find the peaks of each frame and localise them at once.

Runs on the engine's ingest thread, frame by frame: check the frame (2-D, the detector's
shape, finite: anything else fails the run, naming the frame), find its peaks, skip and
count those whose patch would cross the detector edge, and localise the rest with the
model deployed in the technique's slot at that moment (its version goes in each row, so a
hot swap mid-scan shows in the table). A frame with no peak is recorded, not fatal; peaks
touching saturated pixels are flagged. A few patches are kept for the audit stage, and
every frame's patches go to the drift monitor when there is one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import BadInputError, MissingDataError
from .peaks import check_frame, extract_patches, find_peaks, split_edge

if TYPE_CHECKING:
    from ...engine.run import Run
    from .technique import BraggTechnique

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
        self._rng = np.random.default_rng(0)

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
        self._localise(index, coordinate, patches, origins, saturated)
        if self.technique.monitor is not None:
            self.technique.monitor.observe(index, patches)

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
        from .braggnn import predict_centres

        model, label = self.technique.deployed()
        centres = predict_centres(model, patches, self.technique.params.batch_size)
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
        self.audit = []

    def discard(self, store: Any) -> None:
        """The run ended without a result: drop the rows (nothing was written to ``store``)."""
        self.rows = {name: [] for name in COLUMNS}
        self.audit = []

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
