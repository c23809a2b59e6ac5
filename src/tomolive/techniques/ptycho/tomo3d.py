"""Ptycho-tomography: per-view complex objects and their angles -> one 3D phase volume.

Three steps, each a plain array function:

1. :func:`view_phases`: each view's phase with its offset and linear ramp removed on an air
   region (a ptychographic object's phase is known only up to both). The ramp and offset are
   estimated from complex products, not from wrapped angles, so no unwrapping is needed for
   them; the sample's own phase is read with ``np.angle`` (or unwrapped with scikit-image when
   it exceeds pi).
2. :func:`align_views`: vertical shifts by cross-correlating each view's row sums (the phase
   integrated over a detector row is the same at every angle for a parallel beam) with their
   mean; horizontal shifts from the phase centre of mass, which for a parallel beam follows
   ``c + X cos(theta) + Y sin(theta)`` exactly: a least-squares fit of that sinusoid gives the
   rotation centre ``c`` and each view's residual is its shift. Centre of mass was chosen over
   projection matching because it is exact when the sample stays inside the field of view
   (the usual ptycho-tomography case), costs no reconstruction, and cannot lock onto a wrong
   local optimum; what it cannot see, a rigid translation of the whole volume (the shifts'
   components along ``1, cos, sin``), does not change the volume.
3. The tomography engine's :func:`tomolive.recon.reconstruct` (gridrec/fbp) on the aligned
   phase projections, at the fitted centre.

:func:`assemble_phase_volume` chains them; :class:`PtychoTomoStage` runs it inside a run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from ...errors import BadInputError
from ...recon import reconstruct
from ...stages import StageContext, VolumeRef

__all__ = [
    "PtychoTomoStage",
    "TomoReport",
    "air_mask",
    "align_views",
    "assemble_phase_volume",
    "register_volume",
    "view_phases",
]


@dataclass
class TomoReport:
    """What :func:`assemble_phase_volume` did: per-view corrections, the centre, seconds per step."""

    angles_deg: np.ndarray
    offsets_rad: np.ndarray
    ramps_rad_per_px: np.ndarray
    shifts_px: np.ndarray
    center: float
    method: str
    alignment: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-able record for the container metadata and provenance."""
        return {
            "views": len(self.angles_deg),
            "center": round(float(self.center), 3),
            "method": self.method,
            "alignment": dict(self.alignment),
            "shifts_px": np.round(self.shifts_px, 3).tolist(),
            "ramp_removed_rad_per_px_max": round(float(np.abs(self.ramps_rad_per_px).max(initial=0.0)), 6),
            "offsets_rad": np.round(self.offsets_rad, 4).tolist(),
            "seconds": dict(self.seconds),
        }


def _check_views(objects: Any, angles_deg: Any) -> tuple[np.ndarray, np.ndarray]:
    """Objects as complex64 ``(V, H, W)`` and angles as float64 ``(V,)``, or a clear error."""
    try:
        stack = np.stack([np.asarray(o) for o in objects]) if not isinstance(objects, np.ndarray) else objects
    except ValueError as err:
        raise BadInputError(f"objects: every view's object must have the same shape ({err})") from err
    if stack.ndim != 3 or not np.iscomplexobj(stack):
        raise BadInputError(
            f"objects: expected complex views (V, H, W); got dtype {stack.dtype} and shape {stack.shape!r}"
        )
    if not np.isfinite(stack).all():
        raise BadInputError("objects: NaN or inf in the views' objects; reconstruct those views again")
    angles = np.asarray(angles_deg, dtype=np.float64).ravel()
    if len(angles) != len(stack) or not np.isfinite(angles).all():
        raise BadInputError(f"angles_deg: expected {len(stack)} finite angles (one per view); got {angles_deg!r}")
    if len(stack) < 2:
        raise BadInputError(f"objects: a 3D volume needs at least 2 views; got {len(stack)}")
    return stack.astype(np.complex64, copy=False), angles


def _cropped(stack: np.ndarray, crop: tuple[int, int, int, int]) -> np.ndarray:
    """``stack`` without ``crop = (top, bottom, left, right)`` pixels at its sides."""
    top, bottom, left, right = (int(n) for n in crop)
    _, height, width = stack.shape
    if min(top, bottom, left, right) < 0 or height - top - bottom < 8 or width - left - right < 8:
        raise BadInputError(f"crop: expected 4 margins >= 0 leaving at least 8x8 of {height}x{width}; got {crop!r}")
    return stack[:, top : height - bottom, left : width - right]


def air_mask(shape: tuple[int, int], air: str | np.ndarray = "edges", edge_px: int = 4) -> np.ndarray:
    """The pixels that see no sample, where a view's phase offset and ramp are measured.

    Parameters
    ----------
    shape : (H, W)
        One view's shape.
    air : {"edges", "whole"} or ndarray of bool
        ``"edges"``: the ``edge_px`` columns at each side (the sample sits inside the field as
        it rotates); ``"whole"``: every pixel (for a thin sample, the fit then treats the sample
        as part of the ramp); or a boolean ``(H, W)`` mask of your own.
    edge_px : int
        Width of each side band for ``"edges"``.
    """
    if isinstance(air, np.ndarray):
        if air.shape != tuple(shape) or air.dtype != bool or air.sum() < 3:
            raise BadInputError(f"air: expected a bool mask of shape {tuple(shape)!r} with >= 3 pixels set")
        return air
    mask = np.zeros(shape, dtype=bool)
    if air == "whole":
        mask[:] = True
    elif air == "edges":
        if not 1 <= edge_px <= shape[1] // 4:
            raise BadInputError(f"edge_px: expected 1..{shape[1] // 4} for views {shape[1]} wide; got {edge_px!r}")
        mask[:, :edge_px] = mask[:, -edge_px:] = True
    else:
        raise BadInputError(f"air: expected 'edges', 'whole' or a bool mask; got {air!r}")
    return mask


def _ramp_and_offset(obj: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, float, tuple[float, float]]:
    """``obj``'s phase minus its linear ramp and offset on ``mask`` (rad), the offset and (d/drow, d/dcol)."""
    grid = np.indices(obj.shape, dtype=np.float64)
    rows, cols = grid[0], grid[1]
    # first guess, wrap-free: the mean phase step between neighbours in the mask, from complex products
    pair_c, pair_r = mask[:, 1:] & mask[:, :-1], mask[1:] & mask[:-1]
    slope_c = float(np.angle(np.sum((obj[:, 1:] * np.conj(obj[:, :-1]))[pair_c])))
    slope_r = float(np.angle(np.sum((obj[1:] * np.conj(obj[:-1]))[pair_r]))) if pair_r.any() else 0.0
    flat = obj * np.exp(-1j * (slope_r * rows + slope_c * cols))
    offset = float(np.angle(np.sum(flat[mask])))
    phase: np.ndarray = np.angle(flat * np.exp(-1j * offset))
    # then an exact least-squares plane on what is left in the air (small, so unwrapped)
    design = np.stack([np.ones(int(mask.sum())), rows[mask], cols[mask]], axis=1)
    coef, *_ = np.linalg.lstsq(design, phase[mask], rcond=None)
    if pair_r.sum() == 0:
        coef[1] = 0.0
    phase = phase - (coef[0] + coef[1] * rows + coef[2] * cols)
    return phase, offset + float(coef[0]), (slope_r + float(coef[1]), slope_c + float(coef[2]))


def view_phases(
    objects: np.ndarray, air: str | np.ndarray = "edges", *, edge_px: int = 4, unwrap: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each view's phase (float32 ``(V, H, W)``) with its offset and linear ramp removed on ``air``.

    Returns the phases, the offsets ``(V,)`` and the ramps ``(V, 2)`` (rad per pixel along rows
    and columns) that were removed. ``unwrap=True`` unwraps each view's phase (scikit-image)
    for samples whose projected phase exceeds pi.
    """
    mask = air_mask(objects.shape[1:], air, edge_px)
    phases = np.empty(objects.shape, dtype=np.float32)
    offsets, ramps = np.empty(len(objects)), np.empty((len(objects), 2))
    for i, obj in enumerate(objects):
        phase, offsets[i], ramps[i] = _ramp_and_offset(obj.astype(np.complex128), mask)
        if unwrap:
            from skimage.restoration import unwrap_phase

            phase = unwrap_phase(phase)
            phase -= np.mean(phase[mask])
        phases[i] = phase
    return phases, offsets, ramps


def _subpixel_peak(corr: np.ndarray) -> float:
    """Lag of a full cross-correlation's maximum (index minus its centre), refined by a parabola."""
    k = int(np.argmax(corr))
    peak = float(k)
    if 0 < k < len(corr) - 1:
        a, b, c = corr[k - 1], corr[k], corr[k + 1]
        denom = a - 2 * b + c
        peak += 0.5 * (a - c) / denom if denom != 0 else 0.0
    return peak - (len(corr) - 1) / 2


def _vertical_shifts(phases: np.ndarray, iterations: int = 3) -> np.ndarray:
    """Each view's row offset against the mean row-sum profile (cross-correlation, sub-pixel)."""
    profiles = phases.sum(axis=2).astype(np.float64)
    n = profiles.shape[1]
    window = np.hanning(n)
    rows = np.arange(n, dtype=np.float64)
    shifts = np.zeros(len(profiles))
    for _ in range(iterations):
        moved = np.stack([np.interp(rows + s, rows, p) for s, p in zip(shifts, profiles)])
        ref = moved.mean(axis=0)
        ref = (ref - ref.mean()) * window
        for i, p in enumerate(moved):
            # a view whose profile is the reference moved by +e rows peaks at lag e
            shifts[i] += _subpixel_peak(np.correlate((p - p.mean()) * window, ref, mode="full"))
        shifts -= shifts.mean()
    return shifts


MIN_NET_PHASE = 0.2
"""Horizontal alignment needs each view's net phase over its air level to be at least this
fraction of its absolute phase; below it the centre of mass is ill-conditioned (no air in
the field: the offset removed is the sample's own level)."""


def _horizontal_shifts(phases: np.ndarray, angles_rad: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Each view's column offset from the sinusoid its phase centre of mass must follow, and
    the centre; None when a view's net phase is too small to locate it (see :data:`MIN_NET_PHASE`)."""
    weights = phases.sum(axis=1).astype(np.float64)  # (V, W): the phase "mass" per column
    weights *= np.sign(weights.sum()) or 1.0  # phase shifts may be negative: the mass is its magnitude
    cols = np.arange(weights.shape[1], dtype=np.float64)
    mass = weights.sum(axis=1)
    if np.any(mass < MIN_NET_PHASE * np.abs(weights).sum(axis=1)) or not np.all(mass > 0):
        return None
    com = weights @ cols / mass
    design = np.stack([np.ones_like(angles_rad), np.cos(angles_rad), np.sin(angles_rad)], axis=1)
    coef, *_ = np.linalg.lstsq(design, com, rcond=None)
    return com - design @ coef, float(coef[0])


def align_views(phases: np.ndarray, angles_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, dict[str, str]]:
    """Shift each view onto a common rotation axis; (aligned phases, shifts ``(V, 2)`` removed,
    centre, how each direction was aligned).

    Shifts are ``(rows, cols)`` in pixels, as found in the views; the aligned phases have them
    taken out (cubic spline, edge values extended). Where the views have too little net phase
    over air to locate them (:data:`MIN_NET_PHASE`), columns are left as they are, the centre is
    the field's middle, and the returned description says so.
    """
    vertical = _vertical_shifts(phases)
    how = {"vertical": "row-sum cross-correlation", "horizontal": "centre-of-mass sinusoid fit"}
    found = _horizontal_shifts(phases, np.deg2rad(angles_deg))
    if found is None:
        found = np.zeros(len(phases)), (phases.shape[2] - 1) / 2
        how["horizontal"] = (
            "none: too little net phase over the air level to align on (does the sample fill the field?)"
        )
    horizontal, center = found
    shifts = np.stack([vertical, horizontal], axis=1)
    aligned = np.stack([ndimage.shift(p, -s, order=3, mode="nearest") for p, s in zip(phases, shifts)])
    return aligned.astype(np.float32), shifts, center, how


def assemble_phase_volume(
    objects: Any,
    angles_deg: Any,
    *,
    crop: tuple[int, int, int, int] = (0, 0, 0, 0),
    air: str | np.ndarray = "edges",
    edge_px: int = 4,
    unwrap: bool = False,
    align: bool = True,
    center: float | None = None,
    method: str = "auto",
    filter: str = "ramp",
    ncore: int | None = None,
) -> tuple[np.ndarray, TomoReport]:
    """Per-view complex objects at ``angles_deg`` -> 3D phase volume ``(H, W, W)`` and a report.

    Parameters
    ----------
    objects : sequence of complex ndarray, or complex ndarray (V, H, W)
        Each view's reconstructed object, cropped to the same field (rows are the rotation
        axis direction).
    crop : (top, bottom, left, right)
        Pixels to drop at each side of every view first (e.g. the unscanned border).
    angles_deg : array-like (V,)
        Rotation angle of each view in degrees; they must cover 180 degrees.
    air, edge_px, unwrap
        Where each view's phase offset and ramp are measured (see :func:`air_mask`) and whether
        to unwrap the phase.
    align : bool
        Find and remove per-view shifts (see :func:`align_views`); False keeps the views as
        they are (and uses ``center`` or the detector middle).
    center : float, optional
        Rotation-axis column; default: the one alignment fits, else ``(W - 1) / 2``.
    method, filter, ncore
        Passed to :func:`tomolive.recon.reconstruct` (``"auto"``, ``"gridrec"``, ``"fbp"``, ...).

    Returns
    -------
    volume : ndarray float32 (H, W, W)
        Phase per voxel (rad), indexed ``[z, y, x]`` as tomography's ``recon``.
    report : TomoReport

    Raises
    ------
    BadInputError
        Views not complex ``(V, H, W)``, NaN/inf, angles not one per view or not covering
        180 degrees, an unknown ``air``/``method``/``filter``.
    """
    stack, angles = _check_views(objects, angles_deg)
    stack = _cropped(stack, crop)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    phases, offsets, ramps = view_phases(stack, air, edge_px=edge_px, unwrap=unwrap)
    seconds["phase"] = round(time.perf_counter() - start, 4)
    start = time.perf_counter()
    shifts = np.zeros((len(stack), 2))
    fitted = (stack.shape[2] - 1) / 2
    alignment = {"vertical": "none", "horizontal": "none"}
    if align:
        phases, shifts, fitted, alignment = align_views(phases, angles)
    seconds["align"] = round(time.perf_counter() - start, 4)
    axis = fitted if center is None else float(center)
    start = time.perf_counter()
    volume = reconstruct(phases, np.deg2rad(angles), center=axis, method=method, filter=filter, ncore=ncore)
    seconds["recon"] = round(time.perf_counter() - start, 4)
    report = TomoReport(angles, offsets, ramps, shifts, axis, method, alignment, seconds)
    return volume, report


def register_volume(volume: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``volume`` translated so its centre of mass (of positive values) meets ``reference``'s.

    Alignment fixes the views relative to each other, not the volume's absolute place (a
    rigid translation is invisible to it); compare with a ground truth after this.
    """
    if volume.shape != reference.shape:
        raise BadInputError(f"volume has shape {volume.shape!r} but reference has {reference.shape!r}; they must match")
    moved = np.subtract(
        ndimage.center_of_mass(np.clip(reference, 0, None)), ndimage.center_of_mass(np.clip(volume, 0, None))
    )
    return ndimage.shift(volume, moved, order=1, mode="nearest")


class PtychoTomoStage:
    """The rotation series' ``phase_volume``: per-view objects -> aligned phases -> tomography.

    A single view (a plain scan) is skipped and says so. Reads ``ctx.results["objects"]`` (one complex object per view, the per-view stage's
    output) and ``ctx.results["angles"]`` (degrees); its keyword parameters come from
    ``ctx.params_of("ptycho_tomo")`` (see :func:`assemble_phase_volume`). Writes
    ``processed/<uid>/phase_volume`` and the report under the ``ptycho_tomo`` metadata key.
    """

    name = "ptycho_tomo"
    rows_per_block = 16

    def run(self, ctx: StageContext) -> None:
        if "objects" not in ctx.results or "angles" not in ctx.results:
            raise BadInputError("ptycho_tomo: needs the per-view 'objects' and 'angles' from the reconstruction stage")
        if len(ctx.results["objects"]) < 2:
            ctx.metadata["ptycho_tomo"] = {"skipped": "a single view: no rotation series"}
            return
        ctx.report(self.name)
        with ctx.provenance.stage(self.name):
            volume, report = assemble_phase_volume(
                ctx.results["objects"], ctx.results["angles"], **ctx.params_of(self.name)
            )
            rows = min(self.rows_per_block, volume.shape[0])
            target = ctx.store.new_volume(
                "phase_volume", volume.shape, rows, metadata={"units": "rad per voxel", "center": report.center}
            )
            blocks = [(start, min(start + rows, volume.shape[0])) for start in range(0, volume.shape[0], rows)]
            for index, (first, stop) in enumerate(blocks):
                target.write_block(index, volume[first:stop])
        ctx.volumes["phase_volume"] = VolumeRef(target, tuple(volume.shape), blocks)
        ctx.results["phase_volume"] = volume
        ctx.metadata["ptycho_tomo"] = report.summary()
