"""Filtered back-projection in PyTorch (CPU or CUDA): the accuracy reference backend.

Each row block is padded, filtered by FFT and weighted per angle, then back-projected
with linear interpolation (``torch.nn.functional.grid_sample``, rows as channels) on the
padded detector, angles in chunks so memory stays bounded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from ..errors import BadInputError
from .filters import angle_weights, filter_response, pad_projections, padded_width
from .settings import ReconSettings

if TYPE_CHECKING:
    import torch

#: Elements of the (rows x angles x pixels) interpolation buffer per chunk (~64 MiB float32).
_CHUNK_ELEMENTS = 1 << 24


def torch_device(device: str | None) -> torch.device:
    """The torch device to run on: ``device`` if given, else CUDA when available, else CPU.

    Parameters
    ----------
    device : str or None
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``... or None for automatic.

    Returns
    -------
    torch.device
    """
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise BadInputError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError(f"device: {device!r} requested but torch sees no CUDA device")
    return dev


@contextlib.contextmanager
def torch_threads(ncore: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (process-wide; restored on exit)."""
    import torch

    if ncore is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(ncore))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def fbp(
    projections: np.ndarray,
    angles: np.ndarray,
    center: float,
    settings: ReconSettings,
    *,
    rows_per_batch: int = 8,
) -> np.ndarray:
    """Filtered back-projection of validated inputs (see :func:`tomolive.recon.reconstruct`).

    Parameters
    ----------
    projections, angles, center
        Validated inputs as :class:`tomolive.recon.Backend` receives them.
    settings : ReconSettings
        Filter and padding (:func:`~tomolive.recon.filters.padded_width`,
        :func:`~tomolive.recon.filters.fill_pad`, as in every backend); ``ncore`` sets torch's CPU threads (process-wide while this
        runs, default torch's setting); ``device`` the torch device (default CUDA when
        available, else CPU).
    rows_per_batch : int, optional
        Sinogram rows filtered and back-projected together.

    Returns
    -------
    numpy.ndarray
        float32 (n_rows, n_cols, n_cols), indexed [row, y, x].
    """
    import torch

    dev = torch_device(settings.device)
    _n_angles, n_rows, n = projections.shape
    width = padded_width(n, center)
    if int(rows_per_batch) < 1:
        raise BadInputError(f"rows_per_batch: expected an integer >= 1, got {rows_per_batch!r}")
    resp = filter_response(settings.filter, width, settings.filter_cutoff)[: width // 2 + 1]
    h = torch.as_tensor(resp, dtype=torch.float32, device=dev)
    w = torch.as_tensor(angle_weights(angles), dtype=torch.float32, device=dev)
    cos = torch.as_tensor(np.cos(angles), dtype=torch.float32, device=dev)
    sin = torch.as_tensor(np.sin(angles), dtype=torch.float32, device=dev)
    coord = torch.arange(n, dtype=torch.float32, device=dev) - (n - 1) / 2.0
    out = np.empty((n_rows, n, n), dtype=np.float32)
    with torch_threads(settings.ncore), torch.inference_mode():
        for r0 in range(0, n_rows, int(rows_per_batch)):
            r1 = min(n_rows, r0 + int(rows_per_batch))
            block = np.ascontiguousarray(projections[:, r0:r1, :].transpose(1, 0, 2))
            t = torch.from_numpy(pad_projections(block, width, settings.padding)).to(dev)
            q = torch.fft.irfft(torch.fft.rfft(t, dim=-1) * h, n=width, dim=-1)
            q = q * w[:, None]
            img = _backproject(q, cos, sin, coord, float(center))
            out[r0:r1] = img.reshape(r1 - r0, n, n).cpu().numpy()
    return out


def _backproject(
    q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, coord: torch.Tensor, center: float
) -> torch.Tensor:
    """Sum over angles of ``q[:, a, u]`` at ``u = center + x cos(a) + y sin(a)`` (linear).

    ``grid_sample`` does the interpolation: the rows of the block are its channels, so each
    sample position and weight is computed once for all rows. The padded detector is rolled
    so the real one sits in its middle; positions beyond the pad (far corners with an axis
    near a detector edge) read zero.
    """
    import torch
    import torch.nn.functional as F

    batch, n_angles, width = q.shape
    n = coord.shape[0]
    shift = (width - n) // 2
    img = torch.roll(q, shifts=shift, dims=-1)[None]  # (1, rows, angles, width)
    acc = torch.zeros(batch, n * n, dtype=q.dtype, device=q.device)
    chunk = max(1, _CHUNK_ELEMENTS // (n * n * max(batch, 2)))
    x = coord[None, None, :]
    y = coord[None, :, None]
    scale_u = 2.0 / (width - 1)
    scale_a = 2.0 / (n_angles - 1)
    for a0 in range(0, n_angles, chunk):
        a1 = min(n_angles, a0 + chunk)
        u = (center + shift) + cos[a0:a1, None, None] * x + sin[a0:a1, None, None] * y
        grid = torch.empty((1, a1 - a0, n * n, 2), dtype=q.dtype, device=q.device)
        grid[..., 0] = (u * scale_u - 1.0).reshape(1, a1 - a0, n * n)
        rows = torch.arange(a0, a1, dtype=q.dtype, device=q.device) * scale_a - 1.0
        grid[..., 1] = rows[None, :, None]
        vals = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        acc += vals[0].sum(dim=1)
    return acc
