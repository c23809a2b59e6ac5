"""A ptychographic scan's geometry: the start document's ``ptycho`` block, pixel size, stage -> object pixels.

``ptycho_scan`` writes the block and the reader checks it; both use these functions, so a
plan and the technique agree on every convention:

- the object pixel is ``lambda * z / (n * p)`` (far field, ``n`` detector pixels of size ``p``
  at distance ``z``);
- stage readbacks are micrometres, with the stages' zero at the centre of the object grid:
  a probe centre at stage ``(y, x)`` is at object pixel ``(y / dx + H / 2, x / dx + W / 2)``
  (row, col), and its ``n x n`` patch starts at ``centre - n / 2``;
- every patch must lie inside the ``object_shape`` grid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import BadInputError

HC_KEV_NM = 1.2398419843320026
"""Planck constant times the speed of light, keV nm: wavelength (nm) = HC_KEV_NM / energy (keV)."""
PROBE_KINDS = ("aperture", "zone_plate")
NEEDED = {
    "image_field": "the detector's pattern data key",
    "y_field": "the vertical stage's readback data key",
    "x_field": "the horizontal stage's readback data key",
    "energy_kev": "the photon energy, keV",
    "detector_distance_m": "sample to detector distance, m",
    "detector_pixel_um": "the detector pixel size, um",
    "pattern_shape": "the patterns' [n, n]",
    "object_shape": "the reconstruction grid's [rows, cols] in object pixels",
    "probe": "the probe guess: kind, aperture_px, defocus_phase_rad",
}


def object_pixel_um(energy_kev: float, distance_m: float, detector_pixel_um: float, n: int) -> float:
    """The object-plane pixel of a far-field geometry, micrometres: ``lambda z / (n p)``."""
    wavelength_um = HC_KEV_NM / energy_kev * 1e-3
    return wavelength_um * (distance_m * 1e6) / (n * detector_pixel_um)


@dataclass(frozen=True)
class ProbeGuess:
    """The probe the reconstruction starts from (see ``physics.make_probe``)."""

    kind: str
    aperture_px: float
    defocus_phase_rad: float = 0.0


@dataclass(frozen=True)
class ScanSetup:
    """The checked ``ptycho`` block of one run's start document."""

    image_field: str
    y_field: str
    x_field: str
    angle_field: str | None
    energy_kev: float
    detector_distance_m: float
    detector_pixel_um: float
    pattern_n: int
    object_shape: tuple[int, int]
    probe: ProbeGuess

    @property
    def pixel_um(self) -> float:
        """The object pixel, micrometres."""
        return object_pixel_um(self.energy_kev, self.detector_distance_m, self.detector_pixel_um, self.pattern_n)

    def to_pixels(self, y_um: np.ndarray | float, x_um: np.ndarray | float) -> np.ndarray:
        """Stage readbacks (um) -> probe centres (row, col) in object pixels, shape (..., 2)."""
        dx = self.pixel_um
        rows, cols = self.object_shape
        return np.stack([np.asarray(y_um) / dx + rows / 2, np.asarray(x_um) / dx + cols / 2], axis=-1)


def check_block(block: Any) -> ScanSetup:
    """The :class:`ScanSetup` of a start document's ``ptycho`` block; raises naming what is missing or wrong."""
    if not isinstance(block, Mapping):
        raise BadInputError(
            f"the start document's 'ptycho' block must be a mapping with {sorted(NEEDED)!r}; got {block!r}."
        )
    for key, what in NEEDED.items():
        if block.get(key) is None:
            raise BadInputError(
                f"the start document's 'ptycho' block has no {key!r} ({what}; ptycho_scan writes it); "
                f"its keys are {sorted(block)!r}."
            )
    for key in ("image_field", "y_field", "x_field"):
        if not isinstance(block[key], str):
            raise BadInputError(f"ptycho.{key} must name a data key; got {block[key]!r}.")
    numbers = {key: _positive(block, key) for key in ("energy_kev", "detector_distance_m", "detector_pixel_um")}
    n = _shape(block, "pattern_shape")
    if n[0] != n[1]:
        raise BadInputError(f"ptycho.pattern_shape must be square [n, n]; got {list(n)!r}.")
    object_shape = _shape(block, "object_shape")
    if min(object_shape) < n[0]:
        raise BadInputError(f"ptycho.object_shape {list(object_shape)!r} is smaller than the {n[0]}-pixel probe.")
    angle_field = block.get("angle_field")
    if angle_field is not None and not isinstance(angle_field, str):
        raise BadInputError(f"ptycho.angle_field must name the rotation's data key or be absent; got {angle_field!r}.")
    return ScanSetup(
        image_field=block["image_field"],
        y_field=block["y_field"],
        x_field=block["x_field"],
        angle_field=angle_field,
        pattern_n=n[0],
        object_shape=object_shape,
        probe=check_probe(block["probe"], n[0]),
        **numbers,
    )


def check_probe(probe: Any, n: int) -> ProbeGuess:
    """The probe guess of a ``ptycho`` block: ``kind`` in :data:`PROBE_KINDS`, ``aperture_px`` in (0, n]."""
    if not isinstance(probe, Mapping) or probe.get("kind") not in PROBE_KINDS:
        raise BadInputError(
            f"ptycho.probe must be a mapping with 'kind' in {PROBE_KINDS}, 'aperture_px' and "
            f"'defocus_phase_rad'; got {probe!r}."
        )
    aperture = probe.get("aperture_px")
    if not isinstance(aperture, (int, float)) or not 0 < aperture <= n:
        raise BadInputError(
            f"ptycho.probe.aperture_px must be a number in (0, {n}] (the pattern size); got {aperture!r}."
        )
    defocus = probe.get("defocus_phase_rad", 0.0)
    if not isinstance(defocus, (int, float)) or not np.isfinite(defocus):
        raise BadInputError(f"ptycho.probe.defocus_phase_rad must be a finite number; got {defocus!r}.")
    return ProbeGuess(str(probe["kind"]), float(aperture), float(defocus))


def check_positions(positions: np.ndarray, object_shape: tuple[int, int], n: int, what: str = "positions") -> None:
    """Refuse probe centres whose ``n x n`` patch would leave the object grid (or are not finite)."""
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    limits = np.array(object_shape, dtype=np.float64)
    bad = ~np.isfinite(positions).all(axis=1) | (positions - n / 2 < 0).any(axis=1)
    bad |= (positions + n / 2 > limits).any(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise BadInputError(
            f"{what}: {int(bad.sum())} of {len(positions)} probe positions put the {n}x{n} probe outside the "
            f"{object_shape[0]}x{object_shape[1]} object grid (first: #{first} at (row, col) "
            f"{tuple(np.round(positions[first], 2))}); expected centres within [{n / 2}, size - {n / 2}]. "
            "Enlarge ptycho.object_shape or scan a smaller area."
        )


def _positive(block: Mapping, key: str) -> float:
    value = block[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
        raise BadInputError(f"ptycho.{key} must be a positive number; got {value!r}.")
    return float(value)


def _shape(block: Mapping, key: str) -> tuple[int, int]:
    value = block[key]
    ok = isinstance(value, (list, tuple)) and len(value) == 2
    if not ok or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise BadInputError(f"ptycho.{key} must be two positive integers [rows, cols]; got {value!r}.")
    return int(value[0]), int(value[1])
