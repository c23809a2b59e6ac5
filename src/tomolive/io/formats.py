"""Stored tomography scans: read DXchange and NeXus/NXtomo HDF5 files lazily.

:func:`open_scan` recognises two layouts and returns a :class:`StoredScan` whose frames stay
in the file until asked for, so a 2048^3 scan can be replayed or processed frame by frame:

- DXchange (APS, e.g. 2-BM): ``/exchange/data``, ``/exchange/data_white`` (flats),
  ``/exchange/data_dark`` and ``/exchange/theta`` (degrees; if absent, uniform over
  [0, 180) is assumed, logged and recorded in ``metadata``).
- NeXus NXtomo: one ``NXentry`` whose ``instrument/<detector>`` holds ``data`` (all frames)
  and ``image_key`` (0 projection, 1 flat, 2 dark), with angles in ``sample/rotation_angle``
  or ``data/rotation_angle``; also Diamond DIAD files, whose angles are in
  ``imaging/gts_theta_value`` and whose frames sit in other files behind external links.

Angles are returned in degrees; a dataset whose ``units`` attribute says radians is converted.
:mod:`tomolive.io.writers` writes both layouts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import BadInputError, MissingDataError

logger = logging.getLogger(__name__)

IMAGE_KEYS = {"projection": 0, "flat": 1, "dark": 2}
"""NXtomo ``image_key`` value of each frame kind."""
NEXUS_ANGLE_PATHS = ("sample/rotation_angle", "data/rotation_angle", "imaging/gts_theta_value")
"""Where NeXus files keep rotation angles, relative to the entry, in order of preference."""
RADIAN_UNITS = {"rad", "radian", "radians"}
BATCH_BYTES = 64 * 2**20
"""Largest read of :meth:`FrameStack.batches`: few requests, bounded memory."""
EXPECTED_LAYOUTS = (
    "DXchange (/exchange/data, /exchange/data_white, /exchange/data_dark, /exchange/theta) or "
    "NeXus NXtomo (/entry/instrument/<detector>/data and image_key, angles in "
    "/entry/sample/rotation_angle, /entry/data/rotation_angle or /entry/imaging/gts_theta_value)"
)


@dataclass(frozen=True)
class FrameStack:
    """The frames of one kind (projections, flats or darks), read from their file on demand.

    Parameters
    ----------
    source : h5py.Dataset or ndarray
        All frames of the file, shape ``(n_frames, rows, cols)``.
    index : ndarray of int
        Positions of this stack's frames in ``source``, in acquisition order.
    """

    source: Any
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.frame(i)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.index), *self.source.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.source.dtype)

    def frame(self, i: int, rows: slice | None = None) -> np.ndarray:
        """Frame ``i`` (only detector ``rows`` if given) as an array."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"frame {i} out of range for a stack of {len(self)} frames.")
        return np.asarray(self.source[int(self.index[i]), rows or slice(None)])

    def read(self, rows: slice | None = None) -> np.ndarray:
        """All frames ``(n, rows, cols)`` in memory: for flats, darks and small scans."""
        return np.asarray(self.source[_selection(self.index), rows or slice(None)])

    def batches(self, max_bytes: int = BATCH_BYTES) -> Iterator[np.ndarray]:
        """Every frame in order, read as ``(k, rows, cols)`` arrays of at most ``max_bytes``
        (one frame when a frame is larger); a batch ends where the stack's frames stop being
        adjacent in the source (flats between projections), so each is one slice read: from
        Tiled one request, which costs about the same whatever its size (docs/measurements/moves.md).
        """
        frame_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        step = max(1, max_bytes // max(frame_bytes, 1))
        for run in np.split(self.index, np.flatnonzero(np.diff(self.index) != 1) + 1):
            for start in range(0, len(run), step):
                part = run[start : start + step]
                yield np.asarray(self.source[int(part[0]) : int(part[-1]) + 1])


@dataclass
class StoredScan:
    """A tomography scan in a file: frames (lazy), angles in degrees, and where it came from.

    Use it as a context manager (or call :meth:`close`) to release the file.

    Attributes
    ----------
    projections, flats, darks : FrameStack
        The frames of each kind, each ``(n, rows, cols)``.
    angles_deg : ndarray
        Rotation angle of each projection in degrees (float64), in acquisition order.
    metadata : dict
        JSON-safe facts about the file: ``paths`` read, ``angles_assumed``, ``sample`` if named.
    source : Path
        The file.
    format : {"dxchange", "nxtomo"}
        The layout recognised.
    """

    projections: FrameStack
    flats: FrameStack
    darks: FrameStack
    angles_deg: np.ndarray
    metadata: dict[str, Any]
    source: Path | str
    format: str
    file: h5py.File | None = field(default=None, repr=False)

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self.projections.shape[1:]

    def stack(self, kind: str) -> FrameStack:
        """The frames of ``kind``: ``"projection"``, ``"flat"`` or ``"dark"``."""
        stacks = {"projection": self.projections, "flat": self.flats, "dark": self.darks}
        if kind not in stacks:
            raise BadInputError(f"frame kind must be one of {list(stacks)!r}; got {kind!r}.")
        return stacks[kind]

    def close(self) -> None:
        """Close the file; the frame stacks cannot be read afterwards."""
        if self.file is not None:
            self.file.close()

    def __enter__(self) -> StoredScan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_scan(path: str | Path) -> StoredScan:
    """Open a stored scan, recognising DXchange or NeXus/NXtomo (see the module docstring).

    Raises
    ------
    MissingDataError
        The file does not exist, or lacks projections, flats or darks.
    BadInputError
        The file is not HDF5, matches neither layout, or its shapes and angles disagree.

    Examples
    --------
    >>> with open_scan("tooth.h5") as scan:  # doctest: +SKIP
    ...     first = scan.projections.frame(0)
    """
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"scan file {str(path)!r} does not exist; expected {EXPECTED_LAYOUTS}.")
    try:
        file = h5py.File(path, "r")
    except OSError as err:
        raise BadInputError(f"{str(path)!r} is not a readable HDF5 file ({err}); expected {EXPECTED_LAYOUTS}.") from err
    try:
        return _read(file, path)
    except BaseException:
        file.close()
        raise


def _read(file: h5py.File, path: Path) -> StoredScan:
    if "exchange/data" in file:
        return _read_dxchange(file, path)
    for entry in _nexus_entries(file):
        found = _find_nxtomo(entry)
        if found is not None:
            return _read_nxtomo(file, path, entry, *found)
    raise BadInputError(
        f"{str(path)!r} is not a tomography scan tomolive can read: expected {EXPECTED_LAYOUTS}; "
        f"its top-level objects are {sorted(file)!r}."
    )


def _read_dxchange(file: h5py.File, path: Path) -> StoredScan:
    exchange = file["exchange"]
    data = _frames(exchange, "data", path)
    flats = _frames(exchange, "data_white", path, data.shape[1:])
    darks = _frames(exchange, "data_dark", path, data.shape[1:])
    angles, note = _dxchange_angles(exchange, len(data), path)
    metadata = {
        "paths": {
            "projections": "/exchange/data",
            "flats": "/exchange/data_white",
            "darks": "/exchange/data_dark",
            "angles": "/exchange/theta" if note is None else None,
        },
        "angles_assumed": note is not None,
        **({"angles_note": note} if note else {}),
        **_sample(file, "measurement/sample/name"),
    }
    return StoredScan(_whole(data), _whole(flats), _whole(darks), angles, metadata, path, "dxchange", file)


def _dxchange_angles(exchange: h5py.Group, n: int, path: Path) -> tuple[np.ndarray, str | None]:
    """Angles in degrees from ``theta``, or uniform over [0, 180) with a note saying so."""
    if "theta" not in exchange:
        note = f"no /exchange/theta: assumed {n} angles uniform over [0, 180) degrees"
        logger.warning("%s: %s", path, note)
        return np.linspace(0.0, 180.0, n, endpoint=False), note
    angles = _degrees(exchange["theta"])
    if len(angles) != n:
        raise BadInputError(
            f"{str(path)!r}: /exchange/theta holds {len(angles)} angles but /exchange/data "
            f"{n} projections; they must match."
        )
    return angles, None


def _nexus_entries(file: h5py.File) -> list[h5py.Group]:
    """Top-level NXentry groups (or groups named ``entry*``)."""
    return [
        obj
        for name, obj in file.items()
        if isinstance(obj, h5py.Group) and (_nx_class(obj) == "NXentry" or name.startswith("entry"))
    ]


def _find_nxtomo(entry: h5py.Group) -> tuple[h5py.Group, str] | None:
    """(detector group holding frames and image_key, path of the angles) if ``entry`` is a scan."""
    instrument = entry.get("instrument")
    if not isinstance(instrument, h5py.Group):
        return None
    candidates = [
        group
        for group in instrument.values()
        if isinstance(group, h5py.Group) and "data" in group and "image_key" in group
    ]
    detectors = [group for group in candidates if isinstance(group.get("data"), h5py.Dataset)]
    if candidates and not detectors:
        links = [str(group.get("data", getlink=True)) for group in candidates]
        raise MissingDataError(
            f"{entry.file.filename!r}: the frames of {[g.name for g in candidates]!r} cannot be "
            f"opened ({links!r}); external files must sit where the links say, beside the file."
        )
    angles = [p for p in NEXUS_ANGLE_PATHS if isinstance(entry.get(p), h5py.Dataset)]
    if not detectors or not angles:
        return None
    return detectors[0], f"{entry.name}/{angles[0]}"


def _read_nxtomo(file: h5py.File, path: Path, entry: h5py.Group, detector: h5py.Group, angles_path: str) -> StoredScan:
    data = _frames(detector, "data", path)
    keys_path = f"{detector.name}/image_key"
    keys = np.asarray(file[keys_path][()])
    if keys.shape != (len(data),):
        raise BadInputError(
            f"{str(path)!r}: {keys_path} has shape {keys.shape!r} but {detector.name}/data "
            f"holds {len(data)} frames; expected one key per frame."
        )
    stacks = {kind: FrameStack(data, np.flatnonzero(keys == k)) for kind, k in IMAGE_KEYS.items()}
    for kind, key in IMAGE_KEYS.items():
        if not len(stacks[kind]):
            raise MissingDataError(
                f"{str(path)!r} has no {kind} frames (image_key {key}) in {keys_path}; "
                "a scan needs projections, and flats and darks to normalise them."
            )
    angles = _projection_angles(_degrees(file[angles_path]), keys, angles_path, path)
    metadata = {
        "paths": {"frames": f"{detector.name}/data", "image_key": keys_path, "angles": angles_path},
        "angles_assumed": False,
        **_sample(entry, "sample/name"),
    }
    return StoredScan(stacks["projection"], stacks["flat"], stacks["dark"], angles, metadata, path, "nxtomo", file)


def _projection_angles(angles: np.ndarray, keys: np.ndarray, name: str, path: Path) -> np.ndarray:
    """Angles of the projections, from one angle per frame or one per projection."""
    is_projection = keys == IMAGE_KEYS["projection"]
    if len(angles) == len(keys):
        return angles[is_projection]
    if len(angles) == is_projection.sum():
        return angles
    raise BadInputError(
        f"{str(path)!r}: {name} holds {len(angles)} angles; expected one per frame "
        f"({len(keys)}) or one per projection ({is_projection.sum()})."
    )


def _frames(group: h5py.Group, name: str, path: Path, frame_shape: tuple[int, ...] | None = None) -> h5py.Dataset:
    """The 3D dataset ``name`` of ``group``: present, not empty, frames of ``frame_shape``."""
    label = f"{group.name}/{name}".replace("//", "/")
    if name not in group:
        raise MissingDataError(f"{str(path)!r} has no {label}; expected {EXPECTED_LAYOUTS}.")
    data = group[name]
    if data.ndim == 3 and not len(data):
        raise MissingDataError(f"{str(path)!r}: {label} holds no frames.")
    if data.ndim != 3 or (frame_shape is not None and data.shape[1:] != frame_shape):
        expected = "(n, rows, cols)" if frame_shape is None else f"(n, *{frame_shape!r})"
        raise BadInputError(f"{str(path)!r}: {label} has shape {data.shape!r}; expected {expected}.")
    return data


def _whole(data: h5py.Dataset) -> FrameStack:
    return FrameStack(data, np.arange(len(data)))


def _selection(index: np.ndarray) -> slice | np.ndarray:
    """A slice when ``index`` is a contiguous run (HDF5 reads those fastest), else the index."""
    if len(index) == 0:
        return slice(0, 0)
    if index[-1] - index[0] == len(index) - 1 and np.all(np.diff(index) == 1):
        return slice(int(index[0]), int(index[-1]) + 1)
    return index


def _degrees(dataset: h5py.Dataset) -> np.ndarray:
    """A 1D angle dataset in degrees (converted when its ``units`` attribute says radians)."""
    angles = np.asarray(dataset[()], dtype=np.float64).ravel()
    units = _text(dataset.attrs.get("units", "deg")).strip().lower()
    return np.rad2deg(angles) if units in RADIAN_UNITS else angles


def _sample(group: h5py.Group, name: str) -> dict[str, str]:
    """``{"sample": name}`` from a sample-name dataset, or nothing."""
    node = group.get(name)
    return {"sample": _text(node[()])} if isinstance(node, h5py.Dataset) else {}


def _nx_class(group: h5py.Group) -> str:
    return _text(group.attrs.get("NX_class", ""))


def _text(value: Any) -> str:
    if isinstance(value, np.ndarray):
        value = value.ravel()[0] if value.size else ""
    return value.decode() if isinstance(value, bytes) else str(value)
