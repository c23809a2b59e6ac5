"""Read detector frames that documents point at instead of carrying them.

Detectors that write files announce their frames with asset documents: the older
Resource + Datum (an event holds a datum id, ``filled: {key: False}``) or event-model's
StreamResource + StreamDatum (the event holds no image; a StreamDatum names the event
``seq_nums`` and the frame ``indices`` it covers). :class:`AssetResolver` keeps those
documents for one run and reads the frames with h5py or numpy, nothing else: no pickles,
no imports named by documents, only the paths the documents give.

Readers open the file for each read and close it, in SWMR mode when the writer uses it, so
they see frames as they are written and never hold the file against its writer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import h5py
import numpy as np

from ..errors import BadInputError, MissingDataError

HDF5_MIMETYPE = "application/x-hdf5"
AD_HDF5_DATASET = "/entry/data/data"  # areaDetector's HDF5 plugin layout


@dataclass(frozen=True)
class StreamFrames:
    """Frames of one StreamDatum: ``frames[i]`` belongs to event ``seq_nums[0] + i``."""

    descriptor: str
    data_key: str
    seq_nums: tuple[int, int]
    frames: np.ndarray


class AssetResolver:
    """Keeps one run's asset documents and reads the frames they point at.

    Feed it every ``resource``, ``datum``, ``stream_resource`` and ``stream_datum`` document
    of a run, in order. Old-style frames are read with :meth:`fill` from an event's datum id;
    new-style frames come back from :meth:`stream_datum`.

    Known Resource specs: ``AD_HDF5`` (areaDetector HDF5 plugin) and ``NPY_SEQ`` (ophyd.sim).
    Known StreamResource mimetype: ``application/x-hdf5``.

    Examples
    --------
    >>> resolver = AssetResolver()
    >>> resolver.stream_resource(stream_resource_doc)  # doctest: +SKIP
    >>> batch = resolver.stream_datum(stream_datum_doc, data_key="sim_det_image")  # doctest: +SKIP
    >>> batch.frames.shape  # doctest: +SKIP
    (1, 64, 128)
    """

    def __init__(self) -> None:
        self._resources: dict[str, dict] = {}
        self._datums: dict[str, dict] = {}
        self._stream_resources: dict[str, dict] = {}

    def resource(self, doc: dict) -> None:
        """Keep a Resource document (its spec is checked when a frame is read)."""
        self._resources[doc["uid"]] = doc

    def datum(self, doc: dict) -> None:
        """Keep a Datum document."""
        self._datums[doc["datum_id"]] = doc

    def stream_resource(self, doc: dict) -> None:
        """Keep a StreamResource document."""
        self._stream_resources[doc["uid"]] = doc

    def fill(self, datum_id: str) -> np.ndarray:
        """The data an event's datum id stands for: one frame ``(rows, cols)`` for AD_HDF5
        with ``frame_per_point`` 1, else ``(frame_per_point, rows, cols)``.

        Raises
        ------
        MissingDataError
            The datum, its resource, the file, the dataset or the frame is absent.
        BadInputError
            The resource's spec is not one tomolive reads.
        """
        datum = self._datums.get(datum_id)
        if datum is None:
            raise MissingDataError(
                f"datum {datum_id!r} was never received; an event refers to it, so its datum "
                "document must reach the resolver first."
            )
        resource = self._resources.get(datum["resource"])
        if resource is None:
            raise MissingDataError(
                f"datum {datum_id!r} refers to resource {datum['resource']!r}, which was never received."
            )
        reader = _RESOURCE_READERS.get(resource["spec"])
        if reader is None:
            raise BadInputError(
                f"resource {resource['uid']!r} has spec {resource['spec']!r}; tomolive reads "
                f"{sorted(_RESOURCE_READERS)!r}."
            )
        return reader(resource, datum)

    def stream_datum(self, doc: dict, *, data_key: str | None = None) -> StreamFrames | None:
        """Read the frames a StreamDatum points at.

        Parameters
        ----------
        doc : dict
            The StreamDatum document.
        data_key : str, optional
            Only read frames of this data key; for another key return None without reading.

        Raises
        ------
        MissingDataError
            The stream resource, the file, the dataset or the frames are absent.
        BadInputError
            The stream resource's mimetype or URI is not one tomolive reads.
        """
        resource = self._stream_resources.get(doc["stream_resource"])
        if resource is None:
            raise MissingDataError(
                f"stream_datum {doc['uid']!r} refers to stream_resource "
                f"{doc['stream_resource']!r}, which was never received."
            )
        if data_key is not None and resource["data_key"] != data_key:
            return None
        if resource["mimetype"] != HDF5_MIMETYPE:
            raise BadInputError(
                f"stream_resource {resource['uid']!r} has mimetype {resource['mimetype']!r}; "
                f"tomolive reads {HDF5_MIMETYPE!r}."
            )
        path = _file_path(resource)
        dataset = resource["parameters"].get("dataset", AD_HDF5_DATASET)
        start, stop = doc["indices"]["start"], doc["indices"]["stop"]
        frames = _read_hdf5(path, dataset, start, stop, f"stream_datum {doc['uid']!r}")
        seq_nums = (doc["seq_nums"]["start"], doc["seq_nums"]["stop"])
        return StreamFrames(doc["descriptor"], resource["data_key"], seq_nums, frames)


def _file_path(resource: dict) -> Path:
    """The local path of a StreamResource's ``file://`` URI."""
    uri = urlparse(resource["uri"])
    if uri.scheme != "file" or uri.netloc not in ("", "localhost"):
        raise BadInputError(
            f"stream_resource {resource['uid']!r} has uri {resource['uri']!r}; tomolive reads "
            "local files, 'file://localhost/<absolute path>' or 'file:///<absolute path>'."
        )
    return Path(unquote(uri.path))


def _read_hdf5(path: Path, dataset: str, start: int, stop: int, who: str) -> np.ndarray:
    """Frames ``start:stop`` of ``dataset`` in ``path``; ``who`` names the asking document."""
    if not path.is_file():
        raise MissingDataError(f"{who} points at {str(path)!r}, which is not a file.")
    try:
        file = h5py.File(path, "r", swmr=True)
    except OSError as err:
        message = f"{who} points at {str(path)!r}, which h5py cannot open: {err}"
        raise BadInputError(message) from err
    with file:
        data = file.get(dataset)
        if not isinstance(data, h5py.Dataset):
            raise MissingDataError(f"{who}: {str(path)!r} has no dataset {dataset!r}.")
        if not 0 <= start < stop <= data.shape[0]:
            raise MissingDataError(
                f"{who} asks for frames [{start}, {stop}) of {str(path)!r}:{dataset}, which "
                f"holds {data.shape[0]} frames."
            )
        return data[start:stop]


def _read_ad_hdf5(resource: dict, datum: dict) -> np.ndarray:
    """AD_HDF5: ``frame_per_point`` frames from ``/entry/data/data`` per ``point_number``."""
    per_point = int(resource["resource_kwargs"].get("frame_per_point", 1))
    start = int(datum["datum_kwargs"]["point_number"]) * per_point
    path = Path(resource["root"]) / resource["resource_path"]
    who = f"datum {datum['datum_id']!r} (resource {resource['uid']!r}, spec 'AD_HDF5')"
    frames = _read_hdf5(path, AD_HDF5_DATASET, start, start + per_point, who)
    return frames[0] if per_point == 1 else frames


def _read_npy_seq(resource: dict, datum: dict) -> np.ndarray:
    """NPY_SEQ (ophyd.sim ``SynSignalWithRegistry``): one ``<stem>_<index>.npy`` per datum."""
    stem = Path(resource["root"]) / resource["resource_path"]
    path = stem.with_name(f"{stem.name}_{int(datum['datum_kwargs']['index'])}.npy")
    if not path.is_file():
        raise MissingDataError(
            f"datum {datum['datum_id']!r} (resource {resource['uid']!r}, spec 'NPY_SEQ') points "
            f"at {str(path)!r}, which is not a file."
        )
    return np.load(path, allow_pickle=False)


_RESOURCE_READERS: dict[str, Callable[[dict, dict], np.ndarray]] = {
    "AD_HDF5": _read_ad_hdf5,
    "NPY_SEQ": _read_npy_seq,
}
