"""Per-view complex objects of a 3D phantom, as a ptycho-tomography series would reconstruct them.

Each view's object is ``exp(-0.1 p) * exp(-1j * p)`` for the phantom's exact projection ``p``
(its phase delay in rad; ``mu`` values read as phase per voxel), moved by a random shift (the
stage's run-out between views), with a random phase offset and linear ramp (what a
ptychographic reconstruction leaves undetermined) and complex Gaussian noise. Views are wider
than the phantom by ``pad`` columns of air at each side, as a ptychographic field of view is.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage

from ..errors import BadInputError
from .phantoms import FoamPhantom, make_foam


class PhantomViews(NamedTuple):
    """Simulated views: objects ``(V, H, W + 2 pad)`` complex64, their angles, true shifts ``(V, 2)``
    and the phantom's padded projections before shifts (phase delay, rad)."""

    objects: np.ndarray
    angles_deg: np.ndarray
    shifts_px: np.ndarray
    pad: int
    projections: np.ndarray


def phase_foam(n: int = 64, *, seed: int = 1) -> FoamPhantom:
    """An ``n``^3 foam whose values are phase per voxel: about 2 rad through its middle at n = 64."""
    return make_foam((n, n, n), seed=seed, mu_solid=1.9 / n, mu_inclusion=5.0 / n)


def phantom_views(
    phantom: FoamPhantom,
    angles_deg: np.ndarray,
    *,
    pad: int = 10,
    max_shift_px: float = 3.0,
    max_ramp_rad_per_px: float = 0.05,
    noise: float = 0.01,
    seed: int = 0,
) -> PhantomViews:
    """The complex objects of ``phantom`` at ``angles_deg`` (see the module docstring)."""
    if pad < max_shift_px + 4:
        raise BadInputError(f"pad: expected at least max_shift_px + 4 = {max_shift_px + 4} columns; got {pad!r}")
    rng = np.random.default_rng(seed)
    angles = np.asarray(angles_deg, dtype=np.float64)
    projections = np.pad(phantom.sinogram(np.deg2rad(angles)), ((0, 0), (0, 0), (pad, pad)))
    shifts = rng.uniform(-max_shift_px, max_shift_px, (len(angles), 2))
    rows, cols = np.indices(projections.shape[1:], dtype=np.float64)
    objects = np.empty(projections.shape, dtype=np.complex64)
    for i, (projection, shift) in enumerate(zip(projections, shifts)):
        moved = ndimage.shift(projection, shift, order=3, mode="nearest")
        slope = rng.uniform(-max_ramp_rad_per_px, max_ramp_rad_per_px, 2)
        phase = -moved + slope[0] * rows + slope[1] * cols + rng.uniform(-np.pi, np.pi)
        speckle = noise * (rng.standard_normal(moved.shape) + 1j * rng.standard_normal(moved.shape))
        objects[i] = np.exp(-0.1 * moved) * np.exp(1j * phase) + speckle
    return PhantomViews(objects, angles, shifts, pad, projections)
