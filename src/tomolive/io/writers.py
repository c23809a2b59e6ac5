"""Write scans and volumes as HDF5 files that other tools open: DXchange and NeXus/NXtomo.

Frames are written block by block (one HDF5 chunk per frame), so neither a raw scan read
lazily from a file nor a volume read slab by slab from Tiled has to fit in memory. A frame
source is an array-like ``(n, rows, cols)``, or anything with ``shape``, ``dtype`` and a
``batches()`` iterator of consecutive ``(k, rows, cols)`` blocks (a
:class:`~tomolive.io.formats.FrameStack`, or the Tiled slabs of :mod:`tomolive.io.export`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import BadInputError
from .formats import BATCH_BYTES, IMAGE_KEYS

ByteCounter = Callable[[int], None]
"""Told the bytes of each block written (a progress bar's ``update``)."""


def write_dxchange(
    path: str | Path,
    projections: Any = None,
    flats: Any = None,
    darks: Any = None,
    angles_deg: Any = None,
    *,
    volumes: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Mapping[str, Any]] | None = None,
    sample: str | None = None,
    process: Mapping[str, Any] | None = None,
    on_write: ByteCounter | None = None,
) -> Path:
    """Write a DXchange HDF5 file: a raw scan, processed volumes, or both.

    Parameters
    ----------
    path : path
        The file to create (replaced if present).
    projections, flats, darks : frame source, optional
        A raw scan's frames ``(n, rows, cols)``, written to ``/exchange/data``,
        ``/exchange/data_white`` and ``/exchange/data_dark``; all three or none.
    angles_deg : array-like, optional
        One angle per projection in degrees, written to ``/exchange/theta``.
    volumes : mapping of str to frame source, optional
        Processed ``(z, y, x)`` volumes by name, each at ``/exchange/<name>``; without
        projections the first one is ``/exchange/data``, as DXchange readers expect.
    attrs : mapping of str to mapping, optional
        HDF5 attributes per volume name; values that are not str, int or float go as JSON.
    sample : str, optional
        Written to ``/measurement/sample/name``.
    process : mapping, optional
        Processing record for ``/process/tomolive``: its ``provenance`` and the rest as JSON
        datasets, its scalar entries also as group attributes.
    on_write : callable, optional
        Called with the bytes of each block written (progress).

    Raises
    ------
    BadInputError
        Only some of projections, flats and darks are given, or none of them and no volume;
        frame shapes disagree; or angles are not one per projection.

    Examples
    --------
    >>> write_dxchange("scan.h5", projections, flats, darks, angles_deg)  # doctest: +SKIP
    """
    exchange = _exchange_arrays(projections, flats, darks, volumes or {}, attrs or {})
    if angles_deg is not None and projections is None:
        raise BadInputError("angles_deg are the projections' angles; got angles but no projections.")
    angles = None if angles_deg is None else _angles(angles_deg, len(projections))
    path = Path(path)
    with h5py.File(path, "w") as f:
        f["implements"] = "exchange:measurement" + (":process" if process is not None else "")
        for name, (frames, dataset_attrs) in exchange.items():
            _write_frames(f, f"exchange/{name}", frames, on_write=on_write).attrs.update(dataset_attrs)
        if angles is not None:
            f["exchange/theta"] = angles
            f["exchange/theta"].attrs["units"] = "degrees"
        if sample is not None:
            f["measurement/sample/name"] = sample
        if process is not None:
            _write_process(f.create_group("process/tomolive"), process)
    return path


def write_nxtomo(
    path: str | Path,
    projections: Any,
    flats: Any,
    darks: Any,
    angles_deg: Any,
    *,
    sample: str | None = None,
) -> Path:
    """Write a NeXus NXtomo file: darks, then flats, then projections in one frame stack.

    Frames go to ``/entry/instrument/detector/data`` with ``image_key`` beside them and
    ``/entry/sample/rotation_angle`` (degrees; flats and darks get the first angle);
    ``/entry/data`` links all three, as the NXtomo definition asks. Parameters as for
    :func:`write_dxchange`, but all four are required.
    """
    projections, flats, darks = _scan_stacks(projections, flats, darks)
    angles = _angles(angles_deg, len(projections))
    parts = ((darks, "dark"), (flats, "flat"), (projections, "projection"))
    keys = np.concatenate([np.full(len(frames), IMAGE_KEYS[k], np.int32) for frames, k in parts])
    frame_angles = np.concatenate([np.full(len(darks) + len(flats), angles[0]), angles])
    path = Path(path)
    with h5py.File(path, "w") as f:
        entry = _nx_group(f, "entry", "NXentry")
        entry["definition"] = "NXtomo"
        _nx_group(entry, "instrument", "NXinstrument")
        detector = _nx_group(entry, "instrument/detector", "NXdetector")
        _write_frames(detector, "data", *[frames for frames, _ in parts])
        detector["image_key"] = keys
        sample_group = _nx_group(entry, "sample", "NXsample")
        sample_group["rotation_angle"] = frame_angles
        sample_group["rotation_angle"].attrs["units"] = "degree"
        if sample is not None:
            sample_group["name"] = sample
        data = _nx_group(entry, "data", "NXdata")
        data.attrs["signal"] = "data"
        for name, target in (
            ("data", detector["data"]),
            ("image_key", detector["image_key"]),
            ("rotation_angle", sample_group["rotation_angle"]),
        ):
            data[name] = h5py.SoftLink(target.name)
    return path


def _exchange_arrays(
    projections: Any, flats: Any, darks: Any, volumes: Mapping[str, Any], attrs: Mapping[str, Mapping[str, Any]]
) -> dict[str, tuple[Any, dict[str, Any]]]:
    """(frame source, HDF5 attributes) by dataset name under ``/exchange``."""
    given = [frames is not None for frames in (projections, flats, darks)]
    if any(given) and not all(given):
        raise BadInputError("a raw scan needs projections, flats and darks together; got only some of them.")
    if not any(given) and not volumes:
        raise BadInputError("nothing to write: give projections, flats and darks, or volumes.")
    exchange: dict[str, tuple[Any, dict[str, Any]]] = {}
    if all(given):
        stacks = _scan_stacks(projections, flats, darks)
        exchange.update({name: (frames, {}) for name, frames in zip(("data", "data_white", "data_dark"), stacks)})
    for name, volume in volumes.items():
        _check_frames(name, volume)
        exchange[name if exchange else "data"] = (volume, _hdf5_attrs(attrs.get(name, {})))
    return exchange


def _scan_stacks(*stacks: Any) -> list[Any]:
    """Each input as something with shape, dtype and frames; frame shapes must agree."""
    out = [s if hasattr(s, "batches") else np.asarray(s) for s in stacks]
    for name, frames in zip(("projections", "flats", "darks"), out):
        _check_frames(name, frames, tuple(out[0].shape[1:]))
    return out


def _check_frames(name: str, frames: Any, frame_shape: tuple[int, ...] | None = None) -> None:
    shape = tuple(frames.shape)
    if len(shape) != 3 or (frame_shape is not None and shape[1:] != frame_shape):
        expected = "(n, rows, cols)" if frame_shape is None else f"(n, rows, cols) of frame shape {frame_shape!r}"
        raise BadInputError(f"{name} must be frames {expected}; got shape {shape!r}.")


def _angles(angles_deg: Any, n: int) -> np.ndarray:
    angles = np.asarray(angles_deg, dtype=np.float64)
    if angles.shape != (n,):
        raise BadInputError(f"angles_deg must hold one angle per projection, shape ({n},); got {angles.shape!r}.")
    return angles


def _blocks(frames: Any) -> Iterator[np.ndarray]:
    """Consecutive ``(k, rows, cols)`` blocks of ``frames``, each at most about ``BATCH_BYTES``."""
    if hasattr(frames, "batches"):
        yield from frames.batches()
        return
    frame_bytes = int(np.prod(frames.shape[1:])) * np.dtype(frames.dtype).itemsize
    step = max(1, BATCH_BYTES // max(frame_bytes, 1))
    for start in range(0, len(frames), step):
        yield np.asarray(frames[start : start + step])


def _write_frames(group: h5py.Group, name: str, *stacks: Any, on_write: ByteCounter | None = None) -> h5py.Dataset:
    """Concatenate ``stacks`` into dataset ``name``, block by block, one HDF5 chunk per frame."""
    n = sum(int(frames.shape[0]) for frames in stacks)
    shape = (n, *stacks[0].shape[1:])
    dtype = np.result_type(*[frames.dtype for frames in stacks])
    dataset = group.create_dataset(name, shape=shape, dtype=dtype, chunks=(1, *shape[1:]) if n else None)
    i = 0
    for frames in stacks:
        for block in _blocks(frames):
            dataset[i : i + len(block)] = block
            i += len(block)
            if on_write is not None:
                on_write(block.nbytes)
    return dataset


def _hdf5_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, (str, int, float)) else json.dumps(v) for k, v in attrs.items()}


def _write_process(group: h5py.Group, process: Mapping[str, Any]) -> None:
    """``provenance`` and the rest of ``process`` as JSON; scalar entries also as attributes."""
    rest = {k: v for k, v in process.items() if k != "provenance"}
    group.create_dataset("provenance", data=json.dumps(process.get("provenance", {})))
    group.create_dataset("metadata", data=json.dumps(rest))
    group.attrs.update({k: v for k, v in rest.items() if isinstance(v, (str, int, float, bool))})


def _nx_group(parent: h5py.Group, name: str, nx_class: str) -> h5py.Group:
    group = parent.require_group(name)
    group.attrs["NX_class"] = nx_class
    return group
