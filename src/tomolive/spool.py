"""A Zarr scratch array that collects normalised projections as they arrive.

Projections arrive one angle at a time but are reconstructed in blocks of detector rows.
The scratch array is chunked ``(frames_per_chunk, rows_per_block, n_cols)``: frames are
buffered in memory until a chunk's worth has arrived, then written as one slab, so a
worker reading a row block opens ``n_angles / frames_per_chunk`` files rather than one
per angle. Memory stays bounded by the buffer (at most ``BUFFER_BYTES``), whatever the
scan length.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import zarr

from .errors import BadInputError

GROWTH = 256
BUFFER_BYTES = 32 * 1024**2
MAX_FRAMES_PER_CHUNK = 32


def frames_per_chunk(frame_shape: tuple[int, int]) -> int:
    """Frames buffered per chunk: up to 32, fewer for frames so large the buffer passes 32 MiB."""
    frame_bytes = 4 * frame_shape[0] * frame_shape[1]
    return max(1, min(MAX_FRAMES_PER_CHUNK, BUFFER_BYTES // frame_bytes))


class ProjectionSpool:
    """Append-only store of float32 frames ``(n_angles, n_rows, n_cols)`` plus their angles."""

    def __init__(self, path: Path, array: zarr.Array, rows_per_block: int):
        self.path = path
        self.array = array
        self.rows_per_block = rows_per_block
        self.angles: list[float] = []
        self._buffer: np.ndarray | None = np.empty((array.chunks[0], *array.shape[1:]), dtype=np.float32)
        self._flushed = 0

    @classmethod
    def create(
        cls, path: Path, frame_shape: tuple[int, int], rows_per_block: int, expected: int = GROWTH
    ) -> ProjectionSpool:
        """A new, empty spool at ``path`` (replacing any left from an earlier attempt)."""
        rows, cols = frame_shape
        depth = frames_per_chunk(frame_shape)
        array = zarr.create_array(
            store=str(path),
            shape=(_round_up(max(expected, 1), depth), rows, cols),
            chunks=(depth, min(rows_per_block, rows), cols),
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
        self._buffer[len(self) - self._flushed] = frame
        self.angles.append(float(angle))
        if len(self) - self._flushed == len(self._buffer):
            self._flush()

    def _flush(self) -> None:
        """Write the buffered frames as one slab of whole chunks (the last may be partial)."""
        start, stop = self._flushed, len(self)
        if stop == start:
            return
        if stop > self.array.shape[0]:
            self.array.resize((_round_up(stop + GROWTH, len(self._buffer)), *self.frame_shape))
        self.array[start:stop] = self._buffer[: stop - start]
        self._flushed = stop

    def finish(self) -> None:
        """Write what is buffered and trim the array to exactly the frames received.

        The buffer (up to ``BUFFER_BYTES``) is released: nothing is appended after this.
        """
        self._flush()
        self.array.resize((len(self), *self.frame_shape))
        self._buffer = None

    def remove(self) -> None:
        """Delete the scratch array and release the buffer."""
        shutil.rmtree(self.path, ignore_errors=True)
        self._buffer = None


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def read_rows(path: str, start: int, stop: int) -> np.ndarray:
    """Rows ``[start, stop)`` of every frame of a finished spool, ``(n_angles, rows, cols)``."""
    return zarr.open_array(str(path), mode="r")[:, start:stop, :]
