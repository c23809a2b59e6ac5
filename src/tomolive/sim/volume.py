"""A user's own sample for the simulator: any 3D attenuation volume, projected by ray sampling.

The foam and rock phantoms project exactly (sums of chords); a voxel volume cannot, so
:class:`VolumePhantom` samples each ray at one-pixel steps with trilinear interpolation.
Geometry is the phantoms' (see :mod:`tomolive.sim.phantoms`): the volume is ``[z, y, x]``,
the point ``(x, y)`` (pixels from the rotation axis at the middle of the slice) lands on
detector column ``u = center + x cos(theta) + y sin(theta)``, and detector row ``v`` sees
slice ``z = v``. Values are linear attenuation per pixel (a line integral of a few, at
most, keeps the detector out of photon starvation).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
from scipy import ndimage

from ..errors import BadInputError

__all__ = ["Sample", "VolumePhantom", "as_sample"]


@runtime_checkable
class Sample(Protocol):
    """What the simulated detector images: a volume ``shape`` ``(n_slices, ny, nx)``, its
    line integrals ``(n_slices, nx)`` at an angle in radians, and its attenuation volume
    (the ground truth): the phantoms and :class:`VolumePhantom`."""

    @property
    def shape(self) -> tuple[int, int, int]: ...

    def project(self, theta: float) -> np.ndarray: ...

    def attenuation(self) -> np.ndarray: ...


class VolumePhantom:
    """A 3D attenuation volume as a sample for :class:`~tomolive.sim.devices.SimTomoDetector`.

    Parameters
    ----------
    attenuation : array-like
        ``(n_slices, ny, nx)`` finite, non-negative linear attenuation per pixel. Slices that
        are not square are padded with zeros to ``max(ny, nx)`` across, the detector's width.

    Raises
    ------
    BadInputError
        Not 3D, not real numbers, NaN/inf or negative values, or fewer than 2 columns.

    Examples
    --------
    >>> import numpy as np
    >>> cube = np.zeros((2, 8, 8), dtype=np.float32)
    >>> cube[:, 3:5, 3:5] = 0.1
    >>> round(float(VolumePhantom(cube).project(0.0)[0].sum()), 3)  # 4 voxels of 0.1 per slice, 2 rows
    0.8
    """

    def __init__(self, attenuation: Any):
        volume = check_attenuation(attenuation)
        nz, ny, nx = volume.shape
        n = max(ny, nx)
        pad_y, pad_x = n - ny, n - nx
        self.volume = np.pad(volume, ((0, 0), (pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2)))
        self.shape = (int(nz), int(n), int(n))

    @property
    def n_cols(self) -> int:
        return self.shape[2]

    def attenuation(self) -> np.ndarray:
        """The (padded) attenuation volume, float32 ``[z, y, x]``: the ground truth of a reconstruction."""
        return self.volume

    def project(self, theta: float) -> np.ndarray:
        """Line integrals (float32, ``(n_slices, n_cols)``) at ``theta`` radians, rays sampled each pixel."""
        nz, n, _ = self.shape
        half = (n - 1) / 2.0
        u = np.arange(n) - half  # detector columns, from the axis
        s = np.arange(-np.ceil(half * np.sqrt(2)), np.ceil(half * np.sqrt(2)) + 1)  # along the ray, whole diagonal
        x = u[:, None] * np.cos(theta) - s[None, :] * np.sin(theta) + half
        y = u[:, None] * np.sin(theta) + s[None, :] * np.cos(theta) + half
        out = np.empty((nz, n), dtype=np.float32)
        for z in range(nz):  # one slice at a time: ~n^2 sample points each
            samples = ndimage.map_coordinates(self.volume[z], [y, x], order=1, mode="constant", cval=0.0)
            out[z] = samples.sum(axis=1)
        return out

    def sinogram(self, angles: np.ndarray) -> np.ndarray:
        """Projections ``(n_angles, n_slices, n_cols)`` at ``angles`` radians (float32)."""
        return np.stack([self.project(theta) for theta in np.asarray(angles, dtype=float)])


def check_attenuation(attenuation: Any, name: str = "attenuation volume") -> np.ndarray:
    """``attenuation`` as float32 ``(n_slices, ny, nx)`` after checking it can be imaged."""
    try:
        volume = np.asarray(attenuation)
    except Exception as err:
        raise BadInputError(f"{name}: expected a 3D numeric array; got {type(attenuation).__name__}.") from err
    if volume.ndim != 3:
        raise BadInputError(
            f"{name}: expected a 3D array (n_slices, ny, nx) of attenuation per pixel; got shape {volume.shape!r}. "
            "Stack 2D slices with np.stack, or add an axis with volume[np.newaxis] for one slice."
        )
    if volume.dtype == bool:
        volume = volume.astype(np.float32)
    if not (np.issubdtype(volume.dtype, np.integer) or np.issubdtype(volume.dtype, np.floating)):
        raise BadInputError(f"{name}: expected real numbers; got dtype {volume.dtype}.")
    if min(volume.shape) < 1 or max(volume.shape[1:]) < 2:
        raise BadInputError(f"{name}: expected at least 1 slice and 2 pixels across; got shape {volume.shape!r}.")
    volume = volume.astype(np.float32)
    bad = ~np.isfinite(volume)
    if bad.any():
        raise BadInputError(f"{name}: {int(bad.sum())} voxels are NaN or inf; expected finite attenuation values.")
    if volume.min() < 0:
        raise BadInputError(
            f"{name}: {int((volume < 0).sum())} voxels are negative (minimum {float(volume.min()):.4g}); "
            "attenuation is >= 0 (0 for vacuum/air)."
        )
    return volume


def as_sample(sample: Any) -> Sample:
    """What the simulator images: a phantom (anything with ``shape``, ``project(theta)`` and
    ``attenuation()``) as it is; an object with an ``attenuation()`` or ``volume()`` method, or
    a 3D array, as a :class:`VolumePhantom`."""
    if isinstance(sample, Sample) and len(getattr(sample, "shape", ())) == 3:
        return sample
    for method in ("attenuation", "volume"):
        if callable(getattr(sample, method, None)):
            return VolumePhantom(check_attenuation(getattr(sample, method)(), f"{type(sample).__name__}.{method}()"))
    if isinstance(sample, (np.ndarray, list, tuple)) or hasattr(sample, "__array__"):
        return VolumePhantom(sample)
    raise BadInputError(
        f"sample: expected a 3D attenuation array (n_slices, ny, nx), a phantom with shape and project(theta), "
        f"or an object with an attenuation() method returning the volume; got {type(sample).__name__}."
    )
