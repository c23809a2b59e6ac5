"""A Zarr scratch array that collects normalised projections as they arrive.

Projections arrive one angle at a time but are reconstructed in blocks of detector rows.
The scratch array is chunked ``(FRAMES_PER_CHUNK, rows_per_block, n_cols)`` and holds raw
little-endian float32 (no codec), so each frame is written as it arrives, row block by row
block, straight to its place in its chunks' files: nothing is buffered in memory, and when
the scan stops only its last frame is left to write. A worker reading a row
block opens ``n_angles / FRAMES_PER_CHUNK`` files. A chunk's file is whole, as Zarr reads
it, once its last frame is in or the spool is finished.
"""

from __future__ import annotations

import io
import math
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BytesCodec
from zarr.codecs.bytes import Endian

from ...errors import BadInputError

GROWTH = 256
FRAMES_PER_CHUNK = 32


class ProjectionSpool:
    """Append-only store of float32 frames ``(n_angles, n_rows, n_cols)`` plus their angles.

    While a chunk fills, the files of its row blocks stay open (one descriptor per row
    block), so each file is opened and closed once, as when it was written whole: on a
    network file system a close sends the file's data. :meth:`finish` or :meth:`remove`
    closes them; both wait for a frame being written.
    """

    def __init__(self, path: Path, array: zarr.Array, rows_per_block: int):
        self.path = path
        self.array = array
        self.rows_per_block = rows_per_block
        self.angles: list[float] = []
        self.finished = False
        self._files: dict[int, io.FileIO] = {}  # row block -> its file in the chunk filling
        self._lock = threading.Lock()

    @classmethod
    def create(
        cls, path: Path, frame_shape: tuple[int, int], rows_per_block: int, expected: int = GROWTH
    ) -> ProjectionSpool:
        """A new, empty spool at ``path`` (replacing any left from an earlier attempt)."""
        rows, cols = frame_shape
        blocks, open_limit = -(-rows // rows_per_block), _open_file_limit()
        if blocks > open_limit // 2:
            raise BadInputError(
                f"rows_per_block={rows_per_block} cuts {rows} detector rows into {blocks} blocks, and the "
                f"spool keeps a file per block open, but this process may open only {open_limit} files: "
                f"use a larger rows_per_block or raise the limit (ulimit -n)."
            )
        array = zarr.create_array(
            store=str(path),
            shape=(_round_up(max(expected, 1), FRAMES_PER_CHUNK), rows, cols),
            chunks=(FRAMES_PER_CHUNK, min(rows_per_block, rows), cols),
            dtype="float32",
            compressors=None,
            fill_value=0.0,  # what the bytes a chunk's file lacks read as (see finish)
            overwrite=True,
        )
        return cls(Path(path), array, rows_per_block)

    @property
    def frame_shape(self) -> tuple[int, int]:
        return tuple(self.array.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.angles)

    def append(self, frame: np.ndarray, angle: float) -> None:
        """Store one normalised frame taken at ``angle``: in its files (the page cache) on return."""
        with self._lock:
            if self.finished:
                raise BadInputError(f"spool {self.path} is finished or removed; it takes no more frames.")
            if frame.shape != self.frame_shape:
                raise BadInputError(
                    f"projection {len(self)} has shape {frame.shape!r} but earlier frames had "
                    f"{self.frame_shape!r}; the detector ROI or binning changed mid-scan."
                )
            index = len(self)
            if index >= self.array.shape[0]:
                self.array.resize((_round_up(index + GROWTH, FRAMES_PER_CHUNK), *self.frame_shape))
            depth, height, cols = self.array.chunks
            chunk, slot = divmod(index, depth)
            if slot == 0:
                self._close_files()  # the chunk before is whole
            frame = np.ascontiguousarray(frame, dtype="<f4")
            for block, r0 in enumerate(range(0, self.frame_shape[0], height)):
                rows = frame[r0 : r0 + height]
                if len(rows) < height:  # the last block, when rows_per_block does not divide the rows
                    rows = np.concatenate([rows, np.zeros((height - len(rows), cols), "<f4")])
                file = self._file(chunk, block)
                file.seek(slot * height * cols * 4)  # the frame's slot, wherever a failed write left off
                _write_all(file, rows)
            self.angles.append(float(angle))

    def finish(self) -> None:
        """Trim the array to exactly the frames received; nothing is appended after this.

        The files of a last, partial chunk are extended to a whole chunk: the frames it
        lacks read as the fill value, 0, as Zarr pads a partial chunk.
        """
        with self._lock:
            depth, height, cols = self.array.chunks
            for file in self._files.values():
                file.truncate(depth * height * cols * 4)
            self._close_files()
            self.array.resize((len(self), *self.frame_shape))
            self.finished = True

    def remove(self) -> None:
        """Delete the scratch array."""
        with self._lock:
            self._close_files()
            self.finished = True
            shutil.rmtree(self.path, ignore_errors=True)

    def _file(self, chunk: int, block: int) -> io.FileIO:
        """Row block ``block``'s file in ``chunk`` (the chunk filling), opened at its first frame."""
        file = self._files.get(block)
        if file is None:
            path = self.path / self.array.metadata.encode_chunk_key((chunk, block, 0))
            path.parent.mkdir(parents=True, exist_ok=True)
            file = self._files[block] = open(path, "wb", buffering=0)  # noqa: SIM115 (kept open while its chunk fills)
        return file

    def _close_files(self) -> None:
        files, self._files = self._files, {}
        for file in files.values():
            file.close()


def _write_all(file: io.FileIO, data: np.ndarray) -> None:
    """Write the C-contiguous ``data`` to ``file`` (unbuffered: in the file on return)."""
    view = data.data.cast("B")
    while view:
        view = view[file.write(view) :]


def _open_file_limit() -> float:
    """How many files this process may open (POSIX soft limit; Windows' C runtime: 8192)."""
    try:
        import resource
    except ImportError:  # Windows
        return 8192
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return math.inf if soft == resource.RLIM_INFINITY else soft


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def read_rows(path: str, start: int, stop: int) -> np.ndarray:
    """Rows ``[start, stop)`` of every frame of a finished spool, ``(n_angles, rows, cols)``.

    The spool's chunks are raw little-endian float32 (see :meth:`ProjectionSpool.create`),
    so they are read from their files straight into the result, with Zarr's metadata naming
    the files: one copy from the page cache, several times faster than Zarr's own read path
    (docs/measurements/engine.md); it is the first step of every block task.
    A chunk Zarr did not store (all fill value) reads as the fill value.
    """
    array = zarr.open_array(str(path), mode="r")
    _check_raw_float32(array, path)
    n_angles, n_rows, n_cols = array.shape
    if not 0 <= start < stop <= n_rows:
        raise BadInputError(
            f"rows [{start}, {stop}) of spool {path}: expected 0 <= start < stop <= {n_rows} (its rows)."
        )
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
    codecs: tuple[Any, ...] = tuple(getattr(array.metadata, "codecs", ()))  # Zarr v2 metadata has none: not a spool
    raw = len(codecs) == 1 and isinstance(codecs[0], BytesCodec) and codecs[0].endian in (Endian.little, None)
    if not (raw and array.dtype == np.float32 and array.ndim == 3 and array.chunks[-1] == array.shape[-1]):
        raise BadInputError(
            f"{path} is not a projection spool: expected uncompressed little-endian float32 "
            f"(angles, rows, columns) chunks of whole frame rows; got dtype {array.dtype}, chunks "
            f"{array.chunks}, codecs {codecs!r}."
        )


def _read_exactly(f: io.RawIOBase, target: np.ndarray, file: Path) -> None:
    """Fill the C-contiguous ``target`` from the start of ``f``."""
    view = target.data.cast("B")
    done = 0
    while done < len(view):
        n = f.readinto(view[done:])
        if not n:
            raise BadInputError(f"spool chunk {file} is shorter than its frames: {done} of {len(view)} bytes.")
        done += n
