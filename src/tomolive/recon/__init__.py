"""Tomographic reconstruction behind one function, :func:`reconstruct`.

Conventions (all backends):

* ``projections`` is float (n_angles, n_rows, n_cols): flat/dark-normalised and -log'd line
  integrals, in attenuation-per-pixel x pixels.
* ``angles`` in radians, any order, not necessarily uniform; 180 or 360 degree scans.
* ``center`` is the rotation-axis column, pixel j's centre being at j: an axis between the
  two middle columns of a 1024-wide detector is 511.5 (the default, ``(n_cols - 1) / 2``).
* Geometry: an object point (x, y) (pixels, origin on the rotation axis, x along detector
  columns at angle 0) projects at angle theta to column ``center + x cos(theta) +
  y sin(theta)``.
* Output: float32 (n_rows, n_cols, n_cols) indexed ``[row, y_index, x_index]`` with
  ``x = x_index - (n_cols - 1) / 2`` and ``y = y_index - (n_cols - 1) / 2``: the grid is
  centred on the rotation axis whatever ``center`` is.
* Scaling: values are attenuation coefficients per pixel (a disc of mu = 0.01 / px
  reconstructs to ~0.01 inside).
* Valid region: the disc inscribed in the n_cols x n_cols grid (seen at every angle).
  Pixels beyond it are extrapolated from the padded detector and may differ between
  backends.

Backends are registered by name in a table (:data:`BACKENDS`, :func:`register_backend`);
``method="auto"`` takes the fastest available one (:func:`available_methods` lists them,
fastest first).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import BadInputError
from ..validation import check_finite
from .filters import FILTERS, PADDINGS, angle_weights, filter_response, largest_gap
from .settings import ReconSettings

__all__ = [
    "BACKENDS",
    "FILTERS",
    "PADDINGS",
    "Backend",
    "ReconSettings",
    "angle_weights",
    "available_methods",
    "filter_response",
    "reconstruct",
    "register_backend",
]

#: Largest angular gap (modulo 180 degrees) beyond the median step that is still accepted.
MAX_MISSING_WEDGE_DEG = 1.0


@dataclass(frozen=True)
class Backend:
    """A reconstruction method: how to run it, whether it can run here, how fast it is.

    Parameters
    ----------
    name : str
        The ``method=`` name.
    run : callable
        ``run(projections, angles, center, settings, **options) -> ndarray``, given
        validated float32 projections (n_angles, n_rows, n_cols), float64 angles in
        radians (n_angles,), the rotation-axis column as a float (pixel j's centre at j)
        and the common :class:`ReconSettings`; returns float32 (n_rows, n_cols, n_cols)
        indexed [row, y, x].
    available : callable
        ``available() -> bool``: whether its libraries import (and its device exists).
    speed : float
        Rough slices/s (docs/measurements/kernels.md); ``auto`` picks the largest.
    description : str
        One line for ``available_methods`` users.
    options : tuple of str
        Backend-specific keyword options it accepts beyond the common ones.
    """

    name: str
    run: Callable[..., np.ndarray]
    available: Callable[[], bool]
    speed: float
    description: str = ""
    options: tuple[str, ...] = field(default_factory=tuple)


#: name -> Backend; add your own with :func:`register_backend`.
BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend, *, replace: bool = False) -> None:
    """Add a backend to :data:`BACKENDS` under ``backend.name``.

    Parameters
    ----------
    backend : Backend
        The method to register.
    replace : bool, optional
        Allow replacing an existing entry of the same name.

    Raises
    ------
    BadInputError
        The name is taken (and ``replace`` is False) or is ``"auto"``.
    """
    if backend.name == "auto" or (backend.name in BACKENDS and not replace):
        raise BadInputError(
            f"backend name {backend.name!r} is reserved or already registered; pass replace=True to override"
        )
    BACKENDS[backend.name] = backend


def available_methods() -> list[str]:
    """Names of the backends that can run here, fastest first (``auto`` takes the first).

    Returns
    -------
    list of str

    Examples
    --------
    >>> "fbp" in available_methods()
    True
    """
    ok = [b for b in BACKENDS.values() if b.available()]
    return [b.name for b in sorted(ok, key=lambda b: -b.speed)]


def _check_projections(projections: np.ndarray) -> np.ndarray:
    arr = np.asarray(projections)
    if arr.ndim != 3:
        hint = " (for one sinogram pass sino[:, None, :])" if arr.ndim == 2 else ""
        raise BadInputError(
            f"projections: expected a 3D array (n_angles, n_rows, n_cols), got shape {arr.shape!r}{hint}"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise BadInputError(
            f"projections: expected float32 line integrals, got dtype {arr.dtype!r}; "
            "normalise by flats/darks and take -log first (tomolive.preprocess)"
        )
    if min(arr.shape) < 1 or arr.shape[2] < 2:
        raise BadInputError(f"projections: expected a non-empty array with n_cols >= 2, got {arr.shape!r}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    check_finite(arr, "projections")
    return arr


def _check_angles(angles: np.ndarray, n_angles: int) -> np.ndarray:
    ang = np.asarray(angles, dtype=np.float64).reshape(-1)
    if np.asarray(angles).ndim != 1 or ang.shape[0] != n_angles:
        raise BadInputError(
            f"angles: expected a 1D array of {n_angles} angles (one per projection), got shape {np.shape(angles)!r}"
        )
    if not np.isfinite(ang).all():
        raise BadInputError("angles: expected finite values (radians), found NaN/inf")
    if n_angles < 2:
        raise BadInputError(f"angles: expected at least 2 projections, got {n_angles}")
    gap = largest_gap(ang)
    if np.degrees(gap.largest - gap.median) > MAX_MISSING_WEDGE_DEG:
        raise BadInputError(
            f"angles: expected views covering 180 degrees (modulo 180), but there is a "
            f"{np.degrees(gap.largest):.2f} degree gap starting at {np.degrees(gap.start):.2f} degrees "
            f"(typical step {np.degrees(gap.median):.3f}); limited-angle, half-acquisition and "
            "offset-axis scans are not supported yet (are the angles in radians?)"
        )
    return ang


def _check_center(center: float | None, n_cols: int) -> float:
    if center is None:
        return (n_cols - 1) / 2.0
    try:
        c = float(center)
    except (TypeError, ValueError) as err:
        raise BadInputError(f"center: expected a number (pixels), got {center!r}") from err
    if not np.isfinite(c) or not 0.0 <= c <= n_cols - 1:
        raise BadInputError(
            f"center: expected the rotation-axis column within the detector [0, {n_cols - 1}], "
            f"got {center!r}; offset-axis (half-acquisition) scans are not supported yet"
        )
    return c


def _auto_method(device: str | None) -> str:
    """Fastest backend for ``device``: torch FBP on CUDA, else the fastest CPU backend."""
    names = available_methods()
    if device is not None and str(device).startswith("cuda"):
        return "fbp"
    if device is None and "fbp" in names:
        import torch

        if torch.cuda.is_available():
            return "fbp"
    return names[0]


def reconstruct(
    projections: np.ndarray,
    angles: np.ndarray,
    center: float | None = None,
    method: str = "auto",
    *,
    filter: str = "ramp",
    filter_cutoff: float = 1.0,
    padding: str = "edge",
    ncore: int | None = None,
    device: str | None = None,
    **options: object,
) -> np.ndarray:
    """Reconstruct slices from parallel-beam projections.

    Parameters
    ----------
    projections : numpy.ndarray
        float32 (n_angles, n_rows, n_cols), normalised and -log'd (other float dtypes are
        converted).
    angles : numpy.ndarray
        (n_angles,) radians; any order, need not be uniform; must cover 180 degrees modulo
        180 (0-180 and 0-360 scans both work).
    center : float, optional
        Rotation-axis column in pixels, pixel j's centre at j; default ``(n_cols - 1) / 2``.
    method : str, optional
        ``"auto"`` (fastest available: ``"fbp"`` on CUDA, else ``"gridrec"``; see
        :func:`available_methods`) or a key of :data:`BACKENDS`: ``"gridrec"`` (finufft
        direct Fourier, CPU), ``"fbp"`` (torch, CPU/CUDA), ``"tomopy"``, ``"astra"`` when
        those libraries import.
    filter : {"ramp", "shepp-logan", "cosine", "hamming", "hann", "parzen"}, optional
        Window applied to the ramp filter.
    filter_cutoff : float, optional
        Fraction of Nyquist (0, 1] where the filter ends.
    padding : {"edge", "zero"}, optional
        How the detector is padded before filtering, the same in every backend: to
        ``padded_width`` (>= 2 n_cols + twice the axis's offset from the middle), with each
        edge's value brought to zero by a half-cosine (``"edge"``, for samples wider than the
        field of view) or with zeros (:func:`tomolive.recon.filters.fill_pad`).
    ncore : int, optional
        CPU threads for the backend; default: the backend's own (gridrec: every CPU this
        process may use). Pass 1 inside single-threaded Dask workers.
    device : str, optional
        ``"cpu"`` or ``"cuda[:N]"`` for torch backends; default CUDA when available.
    **options
        Backend-specific options (``Backend.options``), e.g. ``rows_per_batch``.

    Returns
    -------
    numpy.ndarray
        float32 (n_rows, n_cols, n_cols), indexed ``[row, y_index, x_index]`` with
        ``x = x_index - (n_cols - 1) / 2``, ``y = y_index - (n_cols - 1) / 2`` relative to
        the rotation axis; attenuation per pixel.

    Raises
    ------
    BadInputError
        Wrong shapes or dtypes, NaN/inf, fewer than 2 angles, less than 180 degrees of
        coverage, centre off the detector, unknown method/filter/padding/option.

    Examples
    --------
    >>> angles = np.linspace(0, np.pi, 90, endpoint=False)
    >>> s = np.arange(32) - 15.5
    >>> disc = 2 * 0.01 * np.sqrt(np.clip(10.0**2 - s**2, 0, None))   # mu = 0.01 / px, r = 10
    >>> proj = np.broadcast_to(disc, (90, 1, 32)).astype(np.float32)
    >>> img = reconstruct(proj, angles, method="fbp")
    >>> img.shape
    (1, 32, 32)
    >>> bool(abs(img[0, 14:18, 14:18].mean() - 0.01) < 0.001)
    True
    """
    proj = _check_projections(projections)
    ang = _check_angles(angles, proj.shape[0])
    c = _check_center(center, proj.shape[2])
    settings = ReconSettings(filter, filter_cutoff, padding, ncore, device)
    if method == "auto":
        method = _auto_method(device)
    if method not in BACKENDS:
        raise BadInputError(f"method: expected 'auto' or one of {sorted(BACKENDS)}, got {method!r}")
    backend = BACKENDS[method]
    if not backend.available():
        raise BadInputError(
            f"method: {method!r} is registered but cannot run here (library or device missing); "
            f"available: {available_methods()}"
        )
    unknown = sorted(set(options) - set(backend.options))
    if unknown:
        raise BadInputError(f"options: {method!r} does not accept {unknown!r}; it accepts {list(backend.options)!r}")
    out = backend.run(proj, ang, c, settings, **options)
    return np.asarray(out, dtype=np.float32)


def _importable(module: str) -> Callable[[], bool]:
    """An ``available()`` for :class:`Backend`: whether ``module`` imports (its shared library loads)."""

    def available() -> bool:
        try:
            importlib.import_module(module)
        except (ImportError, OSError):
            return False
        return True

    return available


def _register_builtin() -> None:
    from .fbp import fbp
    from .gridrec import gridrec
    from .peers import astra_fbp, tomopy_gridrec

    register_backend(
        Backend(
            "gridrec",
            gridrec,
            _importable("finufft"),
            speed=20.0,
            description="direct Fourier inversion by finufft type-1 NUFFT (CPU), two slices per transform",
            options=("interpolation", "eps", "upsampfac", "pairs_per_batch", "fft_plan", "overlap"),
        )
    )
    register_backend(
        Backend(
            "fbp",
            fbp,
            _importable("torch"),
            speed=0.08,
            description="filtered back-projection in torch (CPU or CUDA), linear interpolation",
            options=("rows_per_batch",),
        )
    )
    register_backend(
        Backend(
            "tomopy",
            tomopy_gridrec,
            _importable("tomopy"),
            speed=8.4,
            description="TomoPy gridrec (padded to a power of two)",
        )
    )
    register_backend(
        Backend(
            "astra",
            astra_fbp,
            _importable("astra"),
            speed=0.09,
            description="astra-toolbox FBP (CPU 'linear' projector, or FBP_CUDA)",
        )
    )


_register_builtin()
