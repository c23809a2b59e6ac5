"""External detector assets: the simulator writes HDF5 + asset documents, the resolver reads them.

Frames are read by a subscriber while the scan runs (the detector still holds its file open)
and must equal, bit for bit, the images the same seeded simulator puts inline in events.
The same runs also land in Tiled through bluesky-tiled-plugins' TiledWriter.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import bluesky.plans as bp
import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from event_model import DocumentNames, schema_validators
from ophyd.sim import SynSignalWithRegistry
from tiled.client import from_uri
from tiled.server import SimpleTiledServer

from tomolive.errors import BadInputError, MissingDataError
from tomolive.io.assets import AssetResolver
from tomolive.plans import tomo_scan
from tomolive.sim.devices import make_sim_beamline
from tomolive.sim.phantoms import make_foam

IMAGE = "sim_det_image"
ANGLES = np.linspace(0, 180, 10, endpoint=False)
N_DARKS, N_FLATS = 2, 3


class ScanLog:
    """A subscriber that validates every document and reads each frame as it is announced."""

    def __init__(self) -> None:
        self.resolver = AssetResolver()
        self.documents: list[tuple[str, dict]] = []
        self.streams: dict[str, str] = {}
        self.frames: dict[str, list[np.ndarray]] = {"dark": [], "flat": [], "primary": []}
        self.angles: list[float] = []
        self.uid = ""

    def __call__(self, name: str, doc: dict) -> None:
        schema_validators[DocumentNames[name]].validate(doc)
        self.documents.append((name, doc))
        getattr(self, name, lambda doc: None)(doc)

    def descriptor(self, doc: dict) -> None:
        self.streams[doc["uid"]] = doc["name"]

    def resource(self, doc: dict) -> None:
        self.resolver.resource(doc)

    def datum(self, doc: dict) -> None:
        self.resolver.datum(doc)

    def stream_resource(self, doc: dict) -> None:
        self.resolver.stream_resource(doc)

    def stream_datum(self, doc: dict) -> None:
        batch = self.resolver.stream_datum(doc, data_key=IMAGE)
        self.frames[self.streams[batch.descriptor]].extend(batch.frames)

    def event(self, doc: dict) -> None:
        stream = self.streams[doc["descriptor"]]
        if IMAGE in doc["data"]:
            value = doc["data"][IMAGE]
            image = self.resolver.fill(value) if doc["filled"].get(IMAGE) is False else value
            self.frames[stream].append(np.asarray(image))
        if stream == "primary":
            self.angles.append(doc["data"]["sim_rotation"])

    def names(self) -> list[str]:
        return [name for name, _ in self.documents]

    def docs(self, name: str) -> list[dict]:
        return [doc for n, doc in self.documents if n == name]


Subscriber = Callable[[str, dict], None]


def _scan(assets: str, asset_dir: Path | None, also: Subscriber | None = None) -> ScanLog:
    """A noisy seeded tomo_scan (the noise makes equal frames mean equal RNG draws)."""
    log = ScanLog()
    b = make_sim_beamline(make_foam((8, 32, 32), seed=2), photons=1000, seed=5, assets=assets, asset_dir=asset_dir)
    RE = RunEngine()
    RE.subscribe(log)
    if also is not None:
        RE.subscribe(also)
    (log.uid,) = RE(
        tomo_scan(
            b.detector,
            b.rotation,
            ANGLES,
            N_DARKS,
            N_FLATS,
            shutter=b.shutter,
            sample_x=b.sample_x,
            sample_out=b.sample_out,
        )
    )
    return log


@pytest.fixture(scope="module")
def inline() -> ScanLog:
    return _scan("inline", None)


def _check_frames_equal_inline(log: ScanLog, inline: ScanLog) -> None:
    for stream, frames in inline.frames.items():
        assert len(log.frames[stream]) == len(frames) > 0, stream
        for got, expected in zip(log.frames[stream], frames):
            assert got.dtype == np.uint16 and got.shape == (8, 32)
            np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(log.angles, ANGLES)


N_EVENTS = {"dark": N_DARKS, "flat": N_FLATS, "primary": len(ANGLES)}


def _check_one_file_per_stream(
    log: ScanLog, datums: list[dict], resource_key: str, index: Callable[[dict], int]
) -> None:
    """Each stream's frames sit in a file of their own, numbered from 0 in the order taken."""
    files: dict[str, list[tuple[str, int]]] = {}
    for datum, event in zip(datums, log.docs("event"), strict=True):
        files.setdefault(datum[resource_key], []).append((log.streams[event["descriptor"]], index(datum)))
    expected = [[(stream, i) for i in range(n)] for stream, n in N_EVENTS.items()]
    assert sorted(files.values()) == sorted(expected)
    assert all(doc["run_start"] == log.uid for doc in log.docs(resource_key))


def test_resource_mode(inline: ScanLog, tmp_path: Path) -> None:
    log = _scan("resource", tmp_path)
    n_events = N_DARKS + N_FLATS + len(ANGLES)
    assert Counter(log.names()) == {
        "start": 1,
        "descriptor": 3,
        "resource": 3,
        "datum": n_events,
        "event": n_events,
        "stop": 1,
    }
    for resource in log.docs("resource"):
        assert resource["spec"] == "AD_HDF5"
        assert resource["resource_kwargs"] == {"frame_per_point": 1}
        assert Path(resource["root"]) == tmp_path.resolve()
    for descriptor in log.docs("descriptor"):
        key = descriptor["data_keys"][IMAGE]
        assert key["external"] == "FILESTORE:" and key["dtype_numpy"] == "<u2"
    names = log.names()
    for event, datum in zip(log.docs("event"), log.docs("datum"), strict=True):
        assert event["data"][IMAGE] == datum["datum_id"] and event["filled"] == {IMAGE: False}
    # each datum arrives just before the event that refers to it
    assert [names[j + 1] for j, n in enumerate(names) if n == "datum"] == ["event"] * n_events
    _check_one_file_per_stream(log, log.docs("datum"), "resource", lambda d: d["datum_kwargs"]["point_number"])
    _check_frames_equal_inline(log, inline)


def test_stream_mode(inline: ScanLog, tmp_path: Path) -> None:
    log = _scan("stream", tmp_path)
    n_events = N_DARKS + N_FLATS + len(ANGLES)
    assert Counter(log.names()) == {
        "start": 1,
        "descriptor": 3,
        "stream_resource": 3,
        "stream_datum": n_events,
        "event": n_events,
        "stop": 1,
    }
    for resource in log.docs("stream_resource"):
        assert resource["mimetype"] == "application/x-hdf5" and resource["data_key"] == IMAGE
        assert resource["uri"].startswith(f"file://localhost{tmp_path.resolve()}/")
        assert resource["parameters"] == {"dataset": "/entry/data/data", "chunk_shape": [1, 8, 32]}
    for descriptor in log.docs("descriptor"):
        key = descriptor["data_keys"][IMAGE]
        assert key["external"] == "STREAM:" and key["dtype_numpy"] == "<u2"
    # each stream_datum arrives just before its event: same descriptor, seq_nums [seq_num, +1)
    names, docs = log.names(), [doc for _, doc in log.documents]
    for j in (j for j, n in enumerate(names) if n == "stream_datum"):
        datum, event = docs[j], docs[j + 1]
        assert names[j + 1] == "event" and IMAGE not in event["data"]
        assert datum["descriptor"] == event["descriptor"]
        assert datum["seq_nums"] == {"start": event["seq_num"], "stop": event["seq_num"] + 1}
    assert all(d["indices"]["stop"] == d["indices"]["start"] + 1 for d in log.docs("stream_datum"))
    _check_one_file_per_stream(log, log.docs("stream_datum"), "stream_resource", lambda d: d["indices"]["start"])
    _check_frames_equal_inline(log, inline)


def test_tiled_writer_registers_the_files(inline: ScanLog, tmp_path: Path) -> None:
    """TiledWriter (raw runs in Tiled) maps each file to its stream: frames read back exact."""
    plugins = pytest.importorskip(
        "bluesky_tiled_plugins", reason="bluesky-tiled-plugins (TiledWriter) is not installed"
    )
    with SimpleTiledServer(directory=tmp_path / "tiled", readable_storage=[tmp_path]) as server:
        client = from_uri(server.uri)
        for assets in ("resource", "stream"):
            log = _scan(assets, tmp_path / assets, also=plugins.TiledWriter(client))
            for stream, frames in inline.frames.items():
                stored = client[log.uid][stream][IMAGE].read()
                # TiledWriter gives AD_HDF5 (frame_per_point 1) a length-1 frame axis
                expected = np.stack(frames)[:, None] if assets == "resource" else np.stack(frames)
                np.testing.assert_array_equal(stored, expected, err_msg=f"{assets} {stream}")


READER = """
import json, sys
from tomolive.io.assets import AssetResolver
resource, datum = json.loads(sys.stdin.read())
resolver = AssetResolver()
resolver.stream_resource(resource)
print(json.dumps(resolver.stream_datum(datum).frames.tolist()))
"""


def test_another_process_reads_frames_during_the_scan(tmp_path: Path) -> None:
    """A worker process (`tomolive worker`) reads the file while the detector writes it."""
    resources: dict[str, dict] = {}
    read_elsewhere: list[np.ndarray] = []

    def reader(name: str, doc: dict) -> None:
        if name == "stream_resource":
            resources[doc["uid"]] = doc
        if name == "stream_datum" and len(resources) == 3 and doc["indices"]["start"] == 1:
            payload = json.dumps([resources[doc["stream_resource"]], doc])
            out = subprocess.run(
                [sys.executable, "-c", READER], input=payload, text=True, capture_output=True, check=True, timeout=60
            )
            read_elsewhere.append(np.array(json.loads(out.stdout), dtype=np.uint16))

    log = _scan("stream", tmp_path, also=reader)
    (frames,) = read_elsewhere
    np.testing.assert_array_equal(frames[0], log.frames["primary"][1])


def test_npy_seq_from_ophyd_sim(tmp_path: Path) -> None:
    calls = itertools.count()  # ophyd.sim also calls the function outside triggers
    det = SynSignalWithRegistry(lambda: np.full((3, 4), next(calls)), name="img", save_path=str(tmp_path))
    resolver, ids = AssetResolver(), []

    def feed(name: str, doc: dict) -> None:
        {"resource": resolver.resource, "datum": resolver.datum}.get(name, lambda d: None)(doc)
        if name == "event":
            ids.append(doc["data"]["img"])

    RE = RunEngine()
    RE.subscribe(feed)
    RE(bp.count([det], 2))
    first, second = (resolver.fill(datum_id) for datum_id in ids)
    assert first.shape == (3, 4) and np.all(first == first[0, 0])
    assert np.all(second == first[0, 0] + 1)  # two triggers, two files


# --- errors -----------------------------------------------------------------------------


def _h5(path: Path, frames: int = 2) -> Path:
    with h5py.File(path, "w") as f:
        f["entry/data/data"] = np.arange(frames * 6, dtype=np.uint16).reshape(frames, 2, 3)
    return path


def _resource(path: Path, spec: str = "AD_HDF5", uid: str = "res-1") -> dict:
    return {
        "uid": uid,
        "spec": spec,
        "root": str(path.parent),
        "resource_path": path.name,
        "resource_kwargs": {"frame_per_point": 1},
        "path_semantics": "posix",
    }


def _datum(point: int, resource: str = "res-1") -> dict:
    return {"datum_id": f"{resource}/{point}", "resource": resource, "datum_kwargs": {"point_number": point}}


def _stream_resource(uri: str, mimetype: str = "application/x-hdf5", dataset: str = "/entry/data/data") -> dict:
    return {"uid": "sres-1", "data_key": IMAGE, "mimetype": mimetype, "uri": uri, "parameters": {"dataset": dataset}}


def _stream_datum(start: int, stop: int, resource: str = "sres-1") -> dict:
    return {
        "uid": f"{resource}/{start}",
        "stream_resource": resource,
        "descriptor": "desc-1",
        "indices": {"start": start, "stop": stop},
        "seq_nums": {"start": start + 1, "stop": stop + 1},
    }


def test_fill_reads_frames_and_names_what_is_missing(tmp_path: Path) -> None:
    resolver = AssetResolver()
    with pytest.raises(MissingDataError, match="datum 'res-1/0' was never received"):
        resolver.fill("res-1/0")
    resolver.datum(_datum(0))
    with pytest.raises(MissingDataError, match="resource 'res-1', which was never received"):
        resolver.fill("res-1/0")
    path = tmp_path / "scan.h5"
    resolver.resource(_resource(path))
    with pytest.raises(MissingDataError, match=f"res-1.*'{path}', which is not a file"):
        resolver.fill("res-1/0")
    _h5(path)
    np.testing.assert_array_equal(resolver.fill("res-1/0"), [[0, 1, 2], [3, 4, 5]])
    resolver.datum(_datum(2))
    with pytest.raises(MissingDataError, match=r"'res-1/2'.*frames \[2, 3\).*holds 2 frames"):
        resolver.fill("res-1/2")


def test_unknown_spec_missing_dataset_and_non_hdf5_file(tmp_path: Path) -> None:
    resolver = AssetResolver()
    resolver.resource(_resource(_h5(tmp_path / "a.h5"), spec="TIFF", uid="tif"))
    resolver.datum(_datum(0, "tif"))
    with pytest.raises(BadInputError, match="resource 'tif' has spec 'TIFF'.*AD_HDF5"):
        resolver.fill("tif/0")
    with h5py.File(tmp_path / "b.h5", "w") as f:
        f["other"] = np.zeros((2, 2, 3))
    resolver.resource(_resource(tmp_path / "b.h5", uid="b"))
    resolver.datum(_datum(0, "b"))
    with pytest.raises(MissingDataError, match="has no dataset '/entry/data/data'"):
        resolver.fill("b/0")
    (tmp_path / "c.h5").write_bytes(b"not hdf5")
    resolver.resource(_resource(tmp_path / "c.h5", uid="c"))
    resolver.datum(_datum(0, "c"))
    with pytest.raises(BadInputError, match="c.h5'.*h5py cannot open"):
        resolver.fill("c/0")


def test_npy_seq_missing_file(tmp_path: Path) -> None:
    resolver = AssetResolver()
    resource = _resource(tmp_path / "stem", spec="NPY_SEQ", uid="n")
    resolver.resource({**resource, "resource_kwargs": {}})
    resolver.datum({"datum_id": "n/0", "resource": "n", "datum_kwargs": {"index": 0}})
    with pytest.raises(MissingDataError, match="spec 'NPY_SEQ'.*stem_0.npy"):
        resolver.fill("n/0")


def test_stream_datum_reads_ranges_and_names_what_is_wrong(tmp_path: Path) -> None:
    path = _h5(tmp_path / "s.h5", frames=4)
    resolver = AssetResolver()
    with pytest.raises(MissingDataError, match="'sres-1', which was never received"):
        resolver.stream_datum(_stream_datum(0, 1))
    resolver.stream_resource(_stream_resource(f"file://localhost{path}"))
    batch = resolver.stream_datum(_stream_datum(1, 3))
    assert (batch.descriptor, batch.data_key, batch.seq_nums) == ("desc-1", IMAGE, (2, 4))
    np.testing.assert_array_equal(batch.frames, np.arange(6, 18).reshape(2, 2, 3))
    assert resolver.stream_datum(_stream_datum(1, 3), data_key="other_key") is None
    with pytest.raises(MissingDataError, match=r"'sres-1/3'.*frames \[3, 5\).*holds 4 frames"):
        resolver.stream_datum(_stream_datum(3, 5))


@pytest.mark.parametrize(
    ("resource", "error", "match"),
    [
        (_stream_resource("file://beamline-nas/data/s.h5"), BadInputError, "local files"),
        (_stream_resource("file:///x.tiff", mimetype="image/tiff"), BadInputError, "'image/tiff'"),
        (_stream_resource("file:///no/such/file.h5"), MissingDataError, "/no/such/file.h5"),
    ],
)
def test_stream_resource_errors(resource: dict, error: type, match: str) -> None:
    resolver = AssetResolver()
    resolver.stream_resource(resource)
    with pytest.raises(error, match=match):
        resolver.stream_datum(_stream_datum(0, 1))


def test_stream_resource_with_missing_dataset(tmp_path: Path) -> None:
    resolver = AssetResolver()
    resolver.stream_resource(_stream_resource(f"file://{_h5(tmp_path / 's.h5')}", dataset="/x"))
    with pytest.raises(MissingDataError, match="has no dataset '/x'"):
        resolver.stream_datum(_stream_datum(0, 1))


def test_simulator_rejects_bad_asset_settings(tmp_path: Path) -> None:
    foam = make_foam((8, 16, 16), seed=1)
    with pytest.raises(BadInputError, match="assets must be one of"):
        make_sim_beamline(foam, assets="tiff", asset_dir=tmp_path)
    with pytest.raises(BadInputError, match="pass asset_dir"):
        make_sim_beamline(foam, assets="stream")
    b = make_sim_beamline(foam, assets="resource", asset_dir=tmp_path)
    with pytest.raises(BadInputError, match="stage it before trigger"):
        b.detector.trigger()
