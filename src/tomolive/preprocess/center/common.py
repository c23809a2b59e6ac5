"""What both centre-finding methods share: the result type and the input checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from ...errors import BadInputError
from ...validation import as_float32

__all__ = [
    "CENTER_LAYOUT",
    "CenterInputs",
    "CenterResult",
    "check_center_inputs",
    "check_search_range",
    "median_step",
    "parabola_min",
]

CENTER_LAYOUT = "(n_angles, n_cols) or (n_angles, n_rows, n_cols)"


class CenterInputs(NamedTuple):
    """Checked inputs: projections float32 (n_angles, n_rows, n_cols), angles float64 radians."""

    projections: np.ndarray
    angles: np.ndarray


@dataclass(frozen=True)
class CenterResult:
    """A rotation centre and how it was found.

    Attributes
    ----------
    center : float
        Column coordinate of the rotation axis in pixels (pixel ``j``'s centre is ``j``).
    method : str
        ``"registration"``, ``"vo"`` or ``"quality"``: the method whose number this is.
    confidence : float
        0..1; for registration the normalised cross-correlation of the registered pair,
        for Vo's method the relative depth of the metric's minimum (1 - min/median), for
        the image-quality check its sharpness times its agreement with the other methods
        (:mod:`tomolive.preprocess.center.auto`).
    details : dict
        Method-specific numbers (JSON-serialisable) for the provenance record.
    """

    center: float
    method: str
    confidence: float
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain-dict form for provenance records."""
        return {
            "center": self.center,
            "method": self.method,
            "confidence": self.confidence,
            "details": dict(self.details),
        }


def check_center_inputs(data: object, angles: object) -> CenterInputs:
    """Check projections and angles for centre finding; return them as float32 3D and float64.

    Raises
    ------
    BadInputError
        Wrong shapes, NaN/inf, too few angles or columns, degrees for radians, or less
        than 180 degrees of coverage.
    """
    arr = as_float32(data, "projections", (2, 3), CENTER_LAYOUT)
    given_shape = arr.shape
    if arr.ndim == 2:
        arr = arr[:, np.newaxis, :]
    theta = np.asarray(angles, dtype=np.float64)
    if theta.ndim != 1 or theta.shape[0] != arr.shape[0]:
        raise BadInputError(
            f"angles must be 1D with one value per projection ({arr.shape[0]}); got shape "
            f"{theta.shape!r}. Pass the rotation angle of each projection, in radians."
        )
    if not np.all(np.isfinite(theta)):
        raise BadInputError("angles contain NaN/inf; expected finite angles in radians.")
    if arr.shape[0] < 4 or arr.shape[2] < 8:
        raise BadInputError(
            f"projections need at least 4 angles and 8 columns {CENTER_LAYOUT}; got shape {given_shape!r}."
        )
    span = float(np.ptp(theta))
    if span > 4.0 * np.pi:
        raise BadInputError(
            f"angles span {span:.1f}, more than two turns; they look like degrees. Pass radians (np.deg2rad(angles))."
        )
    step = median_step(theta)
    if span + 1.5 * step < np.pi - 1e-6:
        raise BadInputError(
            f"angles cover {np.degrees(span):.2f} degrees (+ one step of "
            f"{np.degrees(step):.3f}); centre finding needs a scan over at least 180 degrees."
        )
    return CenterInputs(arr, theta)


def median_step(theta: np.ndarray) -> float:
    """Median positive step between sorted angles (0.0 when all are equal)."""
    diffs = np.diff(np.sort(theta))
    diffs = diffs[diffs > 1e-9]
    return float(np.median(diffs)) if diffs.size else 0.0


def check_search_range(search: tuple[float, float] | None, n_cols: int) -> tuple[float, float] | None:
    """Return ``search`` as a float pair inside the detector, or None when not given."""
    if search is None:
        return None
    try:
        lo, hi = (float(v) for v in search)
    except (TypeError, ValueError) as err:
        raise BadInputError(f"search_range must be a pair (start, stop) of column positions; got {search!r}.") from err
    if not (0.0 <= lo < hi <= n_cols - 1):
        raise BadInputError(
            f"search_range must satisfy 0 <= start < stop <= n_cols - 1 = {n_cols - 1}; got {search!r}."
        )
    return lo, hi


def parabola_min(grid: np.ndarray, metric: np.ndarray) -> float:
    """Grid point of the minimum, refined by a parabola through it and its neighbours."""
    k = int(np.argmin(metric))
    value = float(grid[k])
    if 0 < k < len(grid) - 1:
        y0, y1, y2 = metric[k - 1 : k + 2]
        denom = y0 - 2 * y1 + y2
        if denom > 0:
            spacing = float(grid[k + 1] - grid[k])
            value += float(np.clip(0.5 * (y0 - y2) / denom, -0.5, 0.5)) * spacing
    return value
