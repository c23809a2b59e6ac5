"""``tomolive export``: a processed scan from Tiled to files that users' own tools open.

Formats (volumes are ``(z, y, x)``; each is read slab by slab through the Tiled client,
so memory stays bounded by one slab, about 64 MB, whatever the volume size):

``tiff``  a folder: one TIFF per slice, ``<array>_<z>.tif``, in the array's dtype
          (32-bit float for recon/denoised, 8-bit labels for segmented) + ``metadata.json``
``hdf5``  a DXchange-style file: the first array at ``/exchange/data``, others at
          ``/exchange/<array>``, ``/measurement/sample/name``, and ``/process/tomolive/``
          holding the provenance and the rest of the metadata as JSON
``zarr``  a Zarr v3 group: one array per name, the container metadata as group attributes

An export is written under ``<out>.partial`` and renamed when complete, so a file at
``out`` is never half written.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr
from tiled.client.base import BaseClient
from tqdm import tqdm

from ..errors import BadInputError, MissingDataError
from ..store import fetched_here, jsonable, now
from .writers import write_dxchange

FORMATS = ("tiff", "hdf5", "zarr")
SUFFIXES = {"tiff": "-tiff", "hdf5": ".h5", "zarr": ".zarr"}
SLAB_BYTES = 64 * 2**20

SlabWriter = Callable[[int, np.ndarray], None]


@dataclass(frozen=True)
class Exported:
    """Where an export went, how many bytes of array data it holds and how long it took."""

    path: Path
    nbytes: int
    seconds: float


def export_scan(
    node: BaseClient,
    fmt: str,
    out: str | Path | None = None,
    arrays: Sequence[str] = ("recon",),
    *,
    force: bool = False,
    progress: bool = True,
) -> Exported:
    """Write arrays of the processed scan ``node`` (``processed/<uid>``) to ``out`` as ``fmt``.

    Refuses a scan whose status is not ``complete`` (its arrays may be partial) unless
    ``force``; never overwrites an existing ``out``.
    """
    uid = node.item["id"]
    if fmt not in FORMATS:
        raise BadInputError(f"export format {fmt!r}: expected one of {', '.join(FORMATS)}")
    md = node.metadata
    if md.get("status") != "complete" and not force:
        reason = f" ({md['reason']})" if md.get("reason") else ""
        raise BadInputError(
            f"processed scan {uid} is {md.get('status')!r}{reason}, not 'complete': its arrays may be "
            "partial; pass --force (force=True) to export it anyway"
        )
    sources = {name: _volume(node, uid, name) for name in dict.fromkeys(arrays)}
    out = Path(out) if out is not None else Path(uid[:8] + SUFFIXES[fmt])
    if out.exists():
        raise BadInputError(f"export target {out} already exists; remove it or choose another --out")
    partial = out.with_name(out.name + ".partial")
    _remove(partial)
    metadata = {**jsonable(md), "tiled_uri": node.uri, "exported": now(), "arrays": list(sources)}
    started = time.perf_counter()
    try:
        nbytes = WRITERS[fmt](partial, sources, metadata, progress)
    except BaseException:
        _remove(partial)
        raise
    partial.rename(out)
    return Exported(out, nbytes, time.perf_counter() - started)


def _volume(node: BaseClient, uid: str, name: str) -> BaseClient:
    if name not in node:
        raise MissingDataError(f"processed scan {uid} has no array {name!r}; it has {sorted(node)}")
    array = node[name]
    if len(array.shape) != 3:
        raise BadInputError(f"{uid}/{name}: export writes (z, y, x) volumes; its shape is {array.shape}")
    return array


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def slab_rows(array: BaseClient, slab_bytes: int = SLAB_BYTES) -> int:
    """Rows per slab: whole server chunks along z, about ``slab_bytes`` in all."""
    chunk = array.chunks[0][0]
    slice_bytes = int(np.prod(array.shape[1:])) * array.dtype.itemsize
    return max(chunk, slab_bytes // slice_bytes // chunk * chunk)


def slabs(array: BaseClient, rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(z0, array[z0:z0 + rows])`` over the volume, one request per slab."""
    with fetched_here():
        for z0 in range(0, array.shape[0], rows):
            yield z0, array[z0 : z0 + rows]


def _copy(
    sources: dict[str, BaseClient], open_target: Callable[[str, BaseClient, int], SlabWriter], progress: bool
) -> int:
    """Stream every source array slab by slab into the writer ``open_target`` returns for it."""
    total = sum(int(a.nbytes) for a in sources.values())
    with tqdm(total=total, unit="B", unit_scale=True, desc="export", disable=not progress) as bar:
        for name, array in sources.items():
            rows = slab_rows(array)
            write = open_target(name, array, rows)
            for z0, slab in slabs(array, rows):
                write(z0, slab)
                bar.update(slab.nbytes)
    return total


def _array_attrs(array: BaseClient) -> dict[str, Any]:
    return {**jsonable(array.metadata), "dims": list(array.dims or ("z", "y", "x"))}


def _write_tiff(out: Path, sources: dict[str, BaseClient], metadata: dict, progress: bool) -> int:
    """One TIFF per slice, ``<array>_<zzzzz>.tif``, and ``metadata.json`` in folder ``out``."""
    out.mkdir(parents=True)
    metadata = {**metadata, "array_metadata": {n: _array_attrs(a) for n, a in sources.items()}}
    (out / "metadata.json").write_text(json.dumps(metadata, indent=1))

    def open_target(name: str, array: BaseClient, rows: int) -> SlabWriter:
        digits = max(5, len(str(array.shape[0] - 1)))

        def write(z0: int, slab: np.ndarray) -> None:
            for i, image in enumerate(slab):
                tifffile.imwrite(out / f"{name}_{z0 + i:0{digits}d}.tif", image, photometric="minisblack")

        return write

    return _copy(sources, open_target, progress)


class _Slabs:
    """A Tiled volume as a frame source for :func:`~tomolive.io.writers.write_dxchange`: whole slabs."""

    def __init__(self, array: BaseClient):
        self.array = array
        self.shape, self.dtype = array.shape, array.dtype

    def batches(self) -> Iterator[np.ndarray]:
        for _, slab in slabs(self.array, slab_rows(self.array)):
            yield slab


def _dxchange_attrs(name: str, array: BaseClient) -> dict[str, Any]:
    attrs = _array_attrs(array)
    return {**attrs, "axes": ":".join(attrs["dims"]), "tomolive_array": name}


def _write_hdf5(out: Path, sources: dict[str, BaseClient], metadata: dict, progress: bool) -> int:
    """A DXchange file: ``/exchange/data`` is the first array (see the module docstring)."""
    total = sum(int(a.nbytes) for a in sources.values())
    with tqdm(total=total, unit="B", unit_scale=True, desc="export", disable=not progress) as bar:
        write_dxchange(
            out,
            volumes={name: _Slabs(array) for name, array in sources.items()},
            attrs={name: _dxchange_attrs(name, array) for name, array in sources.items()},
            sample=str(metadata.get("sample") or ""),
            process=metadata,
            on_write=bar.update,
        )
    return total


def _write_zarr(out: Path, sources: dict[str, BaseClient], metadata: dict, progress: bool) -> int:
    """A Zarr v3 group: arrays chunked as in Tiled, metadata as attributes."""
    group = zarr.open_group(out, mode="w-")
    group.attrs.update(metadata)

    def open_target(name: str, array: BaseClient, rows: int) -> SlabWriter:
        chunks = (array.chunks[0][0], *array.shape[1:])
        target = group.create_array(name, shape=array.shape, dtype=array.dtype, chunks=chunks)
        target.attrs.update(_array_attrs(array))

        def write(z0: int, slab: np.ndarray) -> None:
            target[z0 : z0 + len(slab)] = slab

        return write

    return _copy(sources, open_target, progress)


WRITERS: dict[str, Callable[[Path, dict[str, BaseClient], dict, bool], int]] = {
    "tiff": _write_tiff,
    "hdf5": _write_hdf5,
    "zarr": _write_zarr,
}
