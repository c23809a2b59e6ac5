"""Cutting slices into overlapping tiles, so network memory does not grow with the slice size.

Two ways to join tiles back: :func:`blend_ramp` weights average overlapping predictions
(smooth outputs, e.g. denoised grey values); :func:`tile_core` keeps each tile's centre
(discrete outputs, e.g. labels).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of tiles of ``tile`` pixels covering ``length``, neighbours sharing ``overlap``."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    return [*starts, length - tile]


def tile_corners(height: int, width: int, tile: int, overlap: int) -> Iterator[tuple[int, int]]:
    """``(y0, x0)`` of the tiles of a ``height`` x ``width`` slice, row by row."""
    for y0 in tile_starts(height, min(tile, height), overlap):
        for x0 in tile_starts(width, min(tile, width), overlap):
            yield y0, x0


def blend_ramp(tile: int, overlap: int) -> np.ndarray:
    """Blending weights along one tile axis: ramps over ``overlap`` pixels at both ends."""
    t = np.arange(tile, dtype=np.float32)
    edge = np.minimum(t + 0.5, tile - t - 0.5) / max(overlap, 1)
    return np.clip(edge, 1e-3, 1.0)


def tile_core(start: int, tile: int, length: int, margin: int) -> tuple[int, int]:
    """The part of tile ``[start, start + tile)`` kept: less ``margin`` at inner edges."""
    lo = start + margin if start > 0 else 0
    hi = start + tile - margin if start + tile < length else length
    return lo, hi


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "replicate") -> torch.Tensor:
    """``x`` (..., h, w) padded at the bottom and right up to multiples of ``multiple``.

    ``mode`` is ``"replicate"`` or ``"reflect"``; reflect falls back to replicate on
    slices too small to reflect.
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if not (pad_h or pad_w):
        return x
    if mode == "reflect" and min(h, w) <= max(pad_h, pad_w):
        mode = "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
