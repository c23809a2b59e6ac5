"""Noise2Inverse inference: a trained network over a volume of split reconstructions.

The denoised slice is the network's prediction averaged over the ``k`` choices of held-out
split; a few slices are read and written at a time, so volumes on disk (Zarr) need not fit
in memory. Any module mapping ``(batch, 2n + 1, y, x)`` to ``(batch, 1, y, x)`` works,
e.g. a user's TorchScript file (:func:`load_torchscript`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import BadInputError
from ..recon.fbp import torch_threads
from .device import choose_device
from .noise2inverse import DenoiseConfig, check_splits, neighbour_index, read_rows
from .tiling import blend_ramp, pad_to_multiple, tile_corners


def load_torchscript(path: str | os.PathLike, device: str | None = None) -> torch.jit.ScriptModule:
    """Load a user-supplied TorchScript denoiser for :func:`denoise`.

    The module must map float32 ``(batch, 2n + 1, y, x)`` slices in attenuation units to
    ``(batch, 1, y, x)``; give ``n`` to :func:`denoise` as ``neighbours=`` unless the module
    has a ``neighbours`` attribute. Slices are padded to multiples of ``2**depth`` (the
    module's ``depth`` attribute, else ``DenoiseConfig.depth``). (TorchScript is deprecated
    in torch; it is still how most users ship a model file.)

    Raises
    ------
    BadInputError
        The file is missing or is not a TorchScript archive.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"path: TorchScript file {str(path)!r} does not exist")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            module = torch.jit.load(str(path), map_location=choose_device(device))
        except RuntimeError as err:
            raise BadInputError(f"path: {str(path)!r} is not a TorchScript archive ({err})") from err
    return module.eval()


def _forward(model: nn.Module, x: np.ndarray, multiple: int, device: torch.device, amp: bool) -> np.ndarray:
    """``model`` on (b, c, h, w) float32, reflect-padded up to a multiple of ``multiple``."""
    h, w = x.shape[-2:]
    tensor = pad_to_multiple(torch.from_numpy(np.ascontiguousarray(x)).to(device), multiple, mode="reflect")
    with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
        out = model(tensor)
    return out[:, 0, :h, :w].float().cpu().numpy()


def _predict_slices(
    model: nn.Module, x: np.ndarray, config: DenoiseConfig, multiple: int, device: torch.device, amp: bool
) -> np.ndarray:
    """Prediction for (b, c, y, x) inputs, tiled with blended overlaps when larger than ``config.tile``."""
    ny, nx = x.shape[-2:]
    tile, overlap = config.tile, config.overlap
    if ny <= tile and nx <= tile:
        return _forward(model, x, multiple, device, amp)
    total = np.zeros((x.shape[0], ny, nx), dtype=np.float32)
    weight = np.zeros((ny, nx), dtype=np.float32)
    ty, tx = min(tile, ny), min(tile, nx)
    w = blend_ramp(ty, overlap)[:, None] * blend_ramp(tx, overlap)[None, :]
    for y0, x0 in tile_corners(ny, nx, tile, overlap):
        out = _forward(model, x[..., y0 : y0 + ty, x0 : x0 + tx], multiple, device, amp)
        total[:, y0 : y0 + ty, x0 : x0 + tx] += out * w
        weight[y0 : y0 + ty, x0 : x0 + tx] += w
    return total / weight


def _neighbours_of(model: nn.Module, neighbours: int | None) -> int:
    if neighbours is not None:
        return int(neighbours)
    value = getattr(model, "neighbours", None)
    if value is None:
        raise BadInputError(
            "neighbours: this model has no 'neighbours' attribute; pass neighbours= "
            "(its input has 2 * neighbours + 1 channels)"
        )
    return int(value)


def _check_rows(rows: tuple[int, int] | None, nz: int) -> tuple[int, int]:
    if rows is None:
        return 0, nz
    start, stop = (int(r) for r in rows)
    if not 0 <= start < stop <= nz:
        raise BadInputError(f"rows: expected (start, stop) with 0 <= start < stop <= {nz}, got {rows!r}")
    return start, stop


def denoise(
    model: nn.Module,
    splits: Any,
    *,
    rows: tuple[int, int] | None = None,
    out: Any = None,
    neighbours: int | None = None,
    config: DenoiseConfig = DenoiseConfig(),
) -> Any:
    """Denoise a volume: the model's prediction averaged over the ``k`` held-out splits.

    Parameters
    ----------
    model : torch.nn.Module
        A trained :class:`~tomolive.ml.network.NormalisedUNet` (or a TorchScript module
        from :func:`load_torchscript`).
    splits : array-like
        ``[k, z, y, x]`` split reconstructions (numpy or zarr); read a few slices at a time.
    rows : (start, stop), optional
        Denoise only slices ``[start, stop)`` (neighbours outside are still read), e.g.
        one Dask block; default all.
    out : array-like, optional
        Where to write the (stop - start, y, x) result (numpy or zarr); default a new
        numpy array.
    neighbours : int, optional
        Slices on each side the model expects; default ``model.neighbours``.
    config : DenoiseConfig
        Uses ``tile``, ``overlap``, ``slices_per_batch``, ``depth``, ``device``, ``amp``.

    Returns
    -------
    numpy.ndarray or the given ``out``
        float32 (stop - start, y, x).
    """
    k, nz, ny, nx = check_splits(splits)
    start, stop = _check_rows(rows, nz)
    n = _neighbours_of(model, neighbours)
    if out is None:
        out = np.empty((stop - start, ny, nx), dtype=np.float32)
    elif tuple(out.shape) != (stop - start, ny, nx):
        raise BadInputError(f"out: expected shape {(stop - start, ny, nx)!r}, got {tuple(out.shape)!r}")
    device = choose_device(config.device)
    amp = config.amp and device.type == "cuda"
    model = model.to(device).eval()
    multiple = 2 ** int(getattr(model, "depth", config.depth))
    with torch_threads(config.threads):
        for z0 in range(start, stop, config.slices_per_batch):
            z1 = min(stop, z0 + config.slices_per_batch)
            first = max(0, z0 - n)
            slab = read_rows(splits, first, min(nz, z1 + n))
            index = neighbour_index(np.arange(z0, z1), n, nz, first)
            total = slab.sum(axis=0)
            prediction = np.zeros((z1 - z0, ny, nx), dtype=np.float32)
            for held_out in range(k):
                # the mean of the other splits, at each slice's neighbours: (b, 2n + 1, y, x)
                x = ((total - slab[held_out]) / (k - 1))[index]
                prediction += _predict_slices(model, x, config, multiple, device, amp)
            out[z0 - start : z1 - start] = prediction / k
    return out
