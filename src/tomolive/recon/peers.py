"""Backends that wrap other libraries (astra-toolbox, TomoPy) when they import.

Both are optional peers: registered always, available only where they import (astra's
CPU algorithms need no GPU). They
are given the same validated inputs and return the same orientation, centre convention and
scaling as tomolive's own backends (see :mod:`tomolive.recon`).
"""

from __future__ import annotations

import numpy as np

from ..errors import BadInputError
from .filters import angle_weights, pad_centered, padded_width
from .settings import ReconSettings

_ASTRA_FILTERS = {
    "ramp": "ram-lak",
    "shepp-logan": "shepp-logan",
    "cosine": "cosine",
    "hamming": "hamming",
    "hann": "hann",
    "parzen": "parzen",
}


def _astra_cuda_usable(astra) -> bool:
    """astra's GPU calls can kill a CPU-only interpreter (SIGFPE): ask before touching them."""
    try:
        return bool(astra.use_cuda())
    except Exception:
        return False


def _shift_to_middle(sino: np.ndarray, center: float) -> np.ndarray:
    """Shift (n_angles, n_cols) so the axis sits at (n_cols - 1) / 2 (cubic, edge values)."""
    import scipy.ndimage as ndi

    shift = (sino.shape[-1] - 1) / 2.0 - center
    if abs(shift) < 1e-6:
        return sino
    return ndi.shift(sino, (0, shift), order=3, mode="nearest")


def astra_fbp(
    projections: np.ndarray,
    angles: np.ndarray,
    center: float,
    settings: ReconSettings,
) -> np.ndarray:
    """astra-toolbox FBP (``FBP`` on CPU with the 'linear' projector, ``FBP_CUDA`` on GPU).

    Non-uniform angles are handled by pre-weighting each projection by its share of the
    arc; the centre by shifting the sinogram to the detector middle. The detector is padded
    as every backend pads it and the padded square reconstructed, then cropped (4x the
    pixels: astra is a reference here, not a workhorse); ``settings.ncore`` is ignored
    (its CPU FBP is single-threaded).

    Returns
    -------
    numpy.ndarray
        float32 (n_rows, n_cols, n_cols), indexed [row, y, x] like every backend.
    """
    import astra

    if settings.filter_cutoff != 1.0:
        raise BadInputError("filter_cutoff: the astra backend supports only 1.0")
    use_cuda = settings.device is not None and str(settings.device).startswith("cuda")
    if use_cuda and not _astra_cuda_usable(astra):
        raise BadInputError(f"device: {settings.device!r} requested but astra has no usable CUDA device")
    n_angles, n_rows, n = projections.shape
    weight = (angle_weights(angles) * n_angles / np.pi).astype(np.float32)[:, None]
    # tomolive's padding first (astra's own then adds zeros, which the taper reaches); an
    # even pad keeps the middle of the padded detector on the middle of the real one
    width = padded_width(n)
    width += (width - n) % 2
    vol = astra.create_vol_geom(width, width)
    geom = astra.create_proj_geom("parallel", 1.0, width, np.asarray(angles, dtype=np.float64))
    proj_id = None if use_cuda else astra.create_projector("linear", geom, vol)
    out = np.empty((n_rows, n, n), dtype=np.float32)
    try:
        for r in range(n_rows):
            sino, left = pad_centered(_shift_to_middle(projections[:, r, :] * weight, center), width, settings.padding)
            sid = astra.data2d.create("-sino", geom, sino)
            rid = astra.data2d.create("-vol", vol)
            cfg = astra.astra_dict("FBP_CUDA" if use_cuda else "FBP")
            cfg["ProjectionDataId"], cfg["ReconstructionDataId"] = sid, rid
            cfg["FilterType"] = _ASTRA_FILTERS[settings.filter]
            if proj_id is not None:
                cfg["ProjectorId"] = proj_id
            aid = astra.algorithm.create(cfg)
            try:
                astra.algorithm.run(aid)
                # astra's rows run along -y: flip to tomolive's [y, x].
                out[r] = astra.data2d.get(rid)[::-1][left : left + n, left : left + n]
            finally:
                astra.algorithm.delete(aid)
                astra.data2d.delete([sid, rid])
    finally:
        if proj_id is not None:
            astra.projector.delete(proj_id)
    return out


_TOMOPY_FILTERS = {
    "ramp": "ramlak",
    "shepp-logan": "shepp",
    "cosine": "cosine",
    "hamming": "hamming",
    "hann": "hann",
    "parzen": "parzen",
}


def tomopy_gridrec(
    projections: np.ndarray,
    angles: np.ndarray,
    center: float,
    settings: ReconSettings,
) -> np.ndarray:
    """TomoPy's gridrec on the detector padded as every backend pads it, to a power of two.

    Not verifiable on the machines this was written on (TomoPy is conda-only): the centre
    is passed in TomoPy's pixel units and the output is assumed [row, y, x]; check the
    orientation on a known phantom before trusting it.

    Returns
    -------
    numpy.ndarray
        float32 (n_rows, n_cols, n_cols).
    """
    import tomopy

    if settings.device not in (None, "cpu"):
        raise BadInputError(f"device: tomopy runs on the CPU only, got {settings.device!r}")
    _n_angles, _n_rows, n = projections.shape
    # tomolive's padding first (to a power of two, which TomoPy needs); TomoPy's own is then
    # a continuation of zeros, which the tapered pad already reaches
    width = 1 << int(np.ceil(np.log2(padded_width(n, center))))
    padded, left = pad_centered(projections, width, settings.padding)
    rec = tomopy.recon(
        padded,
        angles,
        center=center + left,
        algorithm="gridrec",
        filter_name=_TOMOPY_FILTERS[settings.filter],
        filter_par=[settings.filter_cutoff, 2],
        ncore=settings.ncore,
    )
    return np.ascontiguousarray(rec[:, left : left + n, left : left + n], dtype=np.float32)
