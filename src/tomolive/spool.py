"""A Zarr scratch array that collects normalised projections as they arrive.

Projections arrive one angle at a time but are reconstructed in blocks of detector rows,
so the scratch array is chunked ``(1, rows_per_block, n_cols)``: appending a frame writes
one chunk per row block, and a worker reading a row block touches only its own chunks.
Memory stays bounded by one frame, whatever the scan length.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import zarr

from .errors import BadInputError

GROWTH = 256


class ProjectionSpool:
    """Append-only store of float32 frames ``(n_angles, n_rows, n_cols)`` plus their angles."""

    def __init__(self, path: Path, array: zarr.Array, rows_per_block: int):
        self.path = path
        self.array = array
        self.rows_per_block = rows_per_block
        self.angles: list[float] = []

    @classmethod
    def create(
        cls, path: Path, frame_shape: tuple[int, int], rows_per_block: int, expected: int = GROWTH
    ) -> ProjectionSpool:
        """A new, empty spool at ``path`` (replacing any left from an earlier attempt)."""
        rows, cols = frame_shape
        array = zarr.create_array(
            store=str(path),
            shape=(max(expected, 1), rows, cols),
            chunks=(1, min(rows_per_block, rows), cols),
            dtype="float32",
            compressors=None,
            fill_value=0.0,
            overwrite=True,
        )
        return cls(Path(path), array, rows_per_block)

    @property
    def frame_shape(self) -> tuple[int, int]:
        return tuple(self.array.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.angles)

    def append(self, frame: np.ndarray, angle: float) -> None:
        """Store one normalised frame taken at ``angle``."""
        if frame.shape != self.frame_shape:
            raise BadInputError(
                f"projection {len(self)} has shape {frame.shape!r} but earlier frames had "
                f"{self.frame_shape!r}; the detector ROI or binning changed mid-scan."
            )
        index = len(self.angles)
        if index >= self.array.shape[0]:
            self.array.resize((index + GROWTH, *self.frame_shape))
        self.array[index] = frame
        self.angles.append(float(angle))

    def finish(self) -> None:
        """Trim the spare capacity so the array holds exactly the frames received."""
        self.array.resize((len(self), *self.frame_shape))

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def read_rows(path: str, start: int, stop: int) -> np.ndarray:
    """Rows ``[start, stop)`` of every frame of a finished spool, ``(n_angles, rows, cols)``."""
    return zarr.open_array(str(path), mode="r")[:, start:stop, :]
