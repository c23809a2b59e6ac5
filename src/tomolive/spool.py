"""A Zarr scratch array that collects normalised projections as they arrive.

Projections arrive one angle at a time but are reconstructed in blocks of detector rows.
The scratch array is chunked ``(frames_per_chunk, rows_per_block, n_cols)``: frames are
buffered in memory until a chunk's worth has arrived, then written as one slab, so a
worker reading a row block opens ``n_angles / frames_per_chunk`` files rather than one
per angle. Memory stays bounded by the buffer (at most ``BUFFER_BYTES``), whatever the
scan length.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BytesCodec
from zarr.codecs.bytes import Endian

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
    """Rows ``[start, stop)`` of every frame of a finished spool, ``(n_angles, rows, cols)``.

    The spool's chunks are raw little-endian float32 (see :meth:`ProjectionSpool.create`),
    so they are read from their files straight into the result, with Zarr's metadata naming
    the files: one copy from the page cache. Zarr's own read path took 11-17 ms per
    16-row block of a 512^3 scan, this 2-3 ms; it is the first step of every block task.
    A chunk Zarr did not store (all fill value) reads as the fill value.
    """
    array = zarr.open_array(str(path), mode="r")
    _check_raw_float32(array, path)
    n_angles, n_rows, n_cols = array.shape
    if not 0 <= start < stop <= n_rows:
        raise BadInputError(f"rows [{start}, {stop}) of spool {path}: expected 0 <= start < stop <= {n_rows} (its rows).")
    depth, height, _ = array.chunks
    out = np.empty((n_angles, stop - start, n_cols), dtype="<f4")
    chunk = None  # scratch for chunks only partly wanted
    for r0 in range(start - start % height, stop, height):
        lo, hi = max(start, r0), min(stop, r0 + height)
        whole = (start, stop) == (r0, r0 + height)  # the target is exactly this row chunk
        for a0 in range(0, n_angles, depth):
            frames = min(depth, n_angles - a0)
            target = out[a0 : a0 + frames, lo - start : hi - start]
            file = Path(path) / array.metadata.encode_chunk_key((a0 // depth, r0 // height, 0))
            try:
                with open(file, "rb", buffering=0) as f:
                    if whole:  # the first `frames` frames of the chunk are exactly the target
                        _read_exactly(f, target, file)
                    else:
                        chunk = np.empty(array.chunks, dtype="<f4") if chunk is None else chunk
                        _read_exactly(f, chunk[:frames], file)
                        target[:] = chunk[:frames, lo - r0 : hi - r0]
            except FileNotFoundError:
                target[:] = array.fill_value
    return out


def _check_raw_float32(array: zarr.Array, path: str) -> None:
    """Raise unless ``array`` is laid out as :meth:`ProjectionSpool.create` makes spools."""
    codecs = getattr(array.metadata, "codecs", ())  # Zarr v2 metadata has none: not a spool
    raw = len(codecs) == 1 and isinstance(codecs[0], BytesCodec) and codecs[0].endian in (Endian.little, None)
    if not (raw and array.dtype == np.float32 and array.ndim == 3 and array.chunks[2] == array.shape[2]):
        raise BadInputError(
            f"{path} is not a projection spool: expected uncompressed little-endian float32 "
            f"(angles, rows, columns) chunks of whole frame rows; got dtype {array.dtype}, chunks "
            f"{array.chunks}, codecs {codecs!r}."
        )


def _read_exactly(f: io.RawIOBase, target: np.ndarray, file: Path) -> None:
    """Fill the C-contiguous ``target`` from the start of ``f``."""
    view = memoryview(target).cast("B")
    done = 0
    while done < len(view):
        n = f.readinto(view[done:])
        if not n:
            raise BadInputError(f"spool chunk {file} is shorter than its frames: {done} of {len(view)} bytes.")
        done += n
