"""Flat fields taken before the projections, after them, or both, and the correction each projection gets.

Beamlines take darks and flats at the start of a scan, at its end, or at both ends. With one
set, every projection is corrected with it. With two, projection ``i`` is corrected with
the flat (and dark) interpolated linearly between the sets, by acquisition time when the
frames' times are known, else by index ``w = i / (n - 1)`` as tomocupy's ``--flat-linear``
does: a beam that drifts during the scan is then followed instead of frozen at one end.

When no flats came before the first projection, projections are spooled raw and corrected
in one pass over the spool once every frame is in (:func:`correct_spool`); raw frames are
never modified, only the scratch spool is rewritten.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import zarr

from ...errors import BadInputError, MissingDataError
from ...preprocess import reduce_frames
from .params import PipelineParams
from .reconstruction import prepare_projection
from .sanity import check_flats_over_darks, check_transmission

FLAT_MODES = ("before", "after", "both")
"""``tomo.flats`` in the start document (``tomo_scan(..., flats=...)``); absent: whenever they come."""
CALIBRATIONS = ("dark", "flat")


def flat_mode(tomo: Any) -> str | None:
    """The start document's declared ``tomo.flats`` (None when not declared: taken as they come)."""
    mode = tomo.get("flats") if isinstance(tomo, dict) else None
    if mode is not None and mode not in FLAT_MODES:
        raise BadInputError(f"the start document's tomo.flats must be one of {FLAT_MODES!r}; got {mode!r}.")
    return mode


@dataclass
class CalibrationSet:
    """The darks and flats of one end of a scan, as they arrive, then reduced."""

    frames: dict[str, list[np.ndarray]]
    dark: np.ndarray | None = None
    flat: np.ndarray | None = None
    n_darks: int = 0
    n_flats: int = 0

    @classmethod
    def empty(cls) -> CalibrationSet:
        return cls({name: [] for name in CALIBRATIONS})

    def count(self, role: str) -> int:
        return len(self.frames[role])

    def reduce(self, method: Literal["median", "mean"], when: str) -> None:
        """Combine each stack into one image (the frames are then let go)."""
        self.n_darks, self.n_flats = self.count("dark"), self.count("flat")
        if self.frames["dark"]:
            self.dark = reduce_frames(np.stack(self.frames["dark"]), method, name=f"darks {when}")
        if self.frames["flat"]:
            self.flat = reduce_frames(np.stack(self.frames["flat"]), method, name=f"flats {when}")
        self.frames = {name: [] for name in CALIBRATIONS}


class FlatField:
    """The flat and dark each projection of a scan is corrected with.

    Parameters
    ----------
    before, after : CalibrationSet
        Reduced sets taken before and after the projections (either may lack flats or darks).
    n_projections : int
        Projections in the scan.
    weights : ndarray, optional
        Each projection's position between the sets (0: ``before``, 1: ``after``), e.g. from
        acquisition times (:func:`time_weights`); default by index.

    Raises
    ------
    MissingDataError
        Neither set has flats, or neither has darks.
    """

    def __init__(
        self, before: CalibrationSet, after: CalibrationSet, n_projections: int, weights: np.ndarray | None = None
    ):
        flats = [s.flat for s in (before, after) if s.flat is not None]
        darks = [s.dark for s in (before, after) if s.dark is not None]
        for name, found in (("flat", flats), ("dark", darks)):
            if not found:
                raise MissingDataError(
                    f"no {name} frames arrived, before or after the projections; the scan needs a '{name}' "
                    f"stream (tomo_scan(..., n_{name}s=10)) to normalise projections."
                )
        for s in (before, after):
            if s.flat is not None:
                check_flats_over_darks(s.flat, s.dark if s.dark is not None else darks[0])
        self.flats, self.darks = flats, darks
        self.interpolated = len(flats) == 2 or len(darks) == 2
        if weights is None:
            weights = np.linspace(0.0, 1.0, n_projections) if n_projections > 1 else np.zeros(n_projections)
            self.basis = "index" if self.interpolated else "one set"
        else:
            self.basis = "time"
        self.weights = np.clip(np.asarray(weights, dtype=np.float64), 0.0, 1.0)
        self.before, self.after = before, after

    @classmethod
    def of_scan(
        cls, before: CalibrationSet, after: CalibrationSet, times: dict[str, list[float]], n_projections: int
    ) -> FlatField:
        """The field of a finished scan, interpolated by acquisition time when ``times`` (per
        role, flats before then after) allow it, else by index."""
        weights = None
        if before.flat is not None and after.flat is not None:
            flat_times = times["flat"]
            nb = before.n_flats
            weights = time_weights(times["projection"], flat_times[:nb], flat_times[nb:], n_projections)
        return cls(before, after, n_projections, weights)

    def provenance(self, declared: str | None) -> dict[str, Any]:
        """What the provenance record's ``inputs`` say about the darks and flats used."""
        before, after = self.before, self.after
        return {
            "n_darks": before.n_darks + after.n_darks,
            "n_flats": before.n_flats + after.n_flats,
            "flats": {
                "declared": declared,
                "before": {"darks": before.n_darks, "flats": before.n_flats},
                "after": {"darks": after.n_darks, "flats": after.n_flats},
                "interpolation": self.basis,
            },
        }

    def for_projection(self, index: int, rows: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """``(flat, dark)`` for projection ``index``, detector rows ``rows`` (float32)."""
        w = float(self.weights[index])
        return self._at(self.flats, w, rows), self._at(self.darks, w, rows)

    @staticmethod
    def _at(images: list[np.ndarray], w: float, rows: slice) -> np.ndarray:
        if len(images) == 1:
            return images[0][rows]
        return ((1.0 - w) * images[0][rows] + w * images[1][rows]).astype(np.float32)


def time_weights(
    projection_times: list[float], before_times: list[float], after_times: list[float], n_projections: int
) -> np.ndarray | None:
    """Each projection's position between the mean times of the flats before and after it,
    or None when the times are incomplete or not increasing (then projections go by index)."""
    if len(projection_times) != n_projections or not before_times or not after_times:
        return None
    t0, t1 = float(np.mean(before_times)), float(np.mean(after_times))
    t = np.asarray(projection_times, dtype=np.float64)
    if not (np.isfinite([t0, t1]).all() and np.isfinite(t).all() and t1 > t0):
        return None
    return (t - t0) / (t1 - t0)


def correct_spool(path: str, field: FlatField, params: PipelineParams) -> None:
    """Rewrite a finished spool of raw frames as line integrals, each with its own flat and dark.

    Chunks are rewritten whole: frame chunks by row blocks, or by whole frames when zinger
    removal or phase retrieval (which look across rows) is on.
    """
    array = zarr.open_array(path, mode="r+")
    n_angles, n_rows, _ = array.shape
    depth, height, _ = array.chunks
    step = n_rows if (params.paganin is not None or params.zinger_threshold is not None) else height
    for a0 in range(0, n_angles, depth):
        a1 = min(n_angles, a0 + depth)
        for r0 in range(0, n_rows, step):
            rows = slice(r0, min(n_rows, r0 + step))
            raw = np.asarray(array[a0:a1, rows])
            out = np.empty_like(raw, dtype=np.float32)
            for k, frame in enumerate(raw):
                flat, dark = field.for_projection(a0 + k, rows)
                out[k] = prepare_projection(frame, flat, dark, params)
                check_transmission(a0 + k, out[k])
            array[a0:a1, rows] = out
