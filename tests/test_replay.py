"""Stored scans: DXchange and NeXus/NXtomo readers and writers, and replay through a RunEngine."""

from __future__ import annotations

import importlib
import logging
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from event_model import DocumentNames, schema_validators
from tiled.client import from_uri

from tomolive.errors import BadInputError, MissingDataError
from tomolive.io.formats import FrameStack, open_scan
from tomolive.io.writers import write_dxchange, write_nxtomo
from tomolive.plans import replay_scan
from tomolive.preprocess.stripes import remove_stripes
from tomolive.qc import circle_mask, psnr
from tomolive.recon import reconstruct
from tomolive.sim.phantoms import FoamPhantom, make_foam
from tomolive.techniques.tomo import PipelineParams

TOOTH_CENTER = 295.5  # "about 295-296 px" (shared data README), as in test_center_real_data.py
DARK, BEAM = 100.0, 10000.0  # counts of the simulated detector: dark offset, open beam
PSNR_FLOOR_DB = 23.0
"""Slice 8 of test_end_to_end's phantom (noise-free 16 x 96 x 96 foam, 120 angles): below what
exact line integrals give, far above any geometry error (docs/measurements/moves.md)."""
REPLAY_VS_MEMORY_DB = 60.0
"""Replay through RunEngine, callback and Dask against the in-memory reconstruction of the
exact sinogram at the same centre: only the uint16 rounding differs."""


def _counts(phantom: FoamPhantom, angles_deg: np.ndarray) -> dict[str, np.ndarray]:
    """Noise-free detector counts (uint16) of ``phantom``: projections, 3 flats, 3 darks."""
    line_integrals = phantom.sinogram(np.deg2rad(angles_deg))
    frame = line_integrals.shape[1:]
    return {
        "projections": np.rint(DARK + BEAM * np.exp(-line_integrals)).astype(np.uint16),
        "flats": np.full((3, *frame), DARK + BEAM, dtype=np.uint16),
        "darks": np.full((3, *frame), DARK, dtype=np.uint16),
    }


@pytest.fixture(scope="module")
def phantom() -> FoamPhantom:
    return make_foam((16, 96, 96), seed=11)


@pytest.fixture(scope="module")
def phantom_file(phantom: FoamPhantom, tmp_path_factory: pytest.TempPathFactory) -> Path:
    angles = np.linspace(0.0, 180.0, 120, endpoint=False)
    path = tmp_path_factory.mktemp("replay") / "foam.h5"
    return write_dxchange(path, **_counts(phantom, angles), angles_deg=angles, sample="foam-replay")


# --- formats ---------------------------------------------------------------------------------


def _small_scan(n_angles: int = 7) -> dict[str, np.ndarray]:
    """Random uint16 frames of 4 x 5 pixels: projections, 2 flats, 3 darks, and angles."""
    rng = np.random.default_rng(0)
    return {
        "projections": rng.integers(0, 4000, (n_angles, 4, 5), dtype=np.uint16),
        "flats": rng.integers(4000, 5000, (2, 4, 5), dtype=np.uint16),
        "darks": rng.integers(0, 100, (3, 4, 5), dtype=np.uint16),
        "angles_deg": np.linspace(0.0, 180.0, n_angles, endpoint=False),
    }


@pytest.mark.parametrize(("writer", "fmt"), [(write_dxchange, "dxchange"), (write_nxtomo, "nxtomo")])
def test_round_trip(tmp_path: Path, writer, fmt: str) -> None:
    scan = _small_scan()
    path = writer(tmp_path / "scan.h5", **scan, sample="s1")
    with open_scan(path) as stored:
        assert stored.format == fmt and stored.source == path
        assert stored.metadata["sample"] == "s1" and not stored.metadata["angles_assumed"]
        for name in ("projections", "flats", "darks"):
            stack = getattr(stored, name)
            assert stack.dtype == np.uint16 and stack.shape == scan[name].shape
            np.testing.assert_array_equal(stack.read(), scan[name])
            np.testing.assert_array_equal(np.concatenate(list(stack.batches(max_bytes=80))), scan[name])
        rows = stored.projections.frame(3, slice(1, 3))
        np.testing.assert_array_equal(rows, scan["projections"][3, 1:3])
        np.testing.assert_array_equal(stored.angles_deg, scan["angles_deg"])


def test_batches_read_every_frame_in_order_within_the_byte_limit() -> None:
    frames = np.arange(10 * 4 * 5, dtype=np.uint16).reshape(10, 4, 5)  # 40 bytes a frame
    index = np.array([0, 1, 2, 4, 5, 7, 8, 9])  # gaps, as flats between projections leave
    stack = FrameStack(frames, index)
    batches = list(stack.batches(max_bytes=3 * 40))
    assert [len(batch) for batch in batches] == [3, 2, 3]  # a batch ends at a gap: one slice each
    np.testing.assert_array_equal(np.concatenate(batches), frames[index])
    assert [len(batch) for batch in stack.batches(max_bytes=1)] == [1] * 8  # a frame over the limit: alone


def test_a_stored_scan_rewrites_frame_by_frame(tmp_path: Path) -> None:
    scan = _small_scan()
    with open_scan(write_nxtomo(tmp_path / "a.nxs", **scan)) as stored:
        copy = write_dxchange(tmp_path / "b.h5", stored.projections, stored.flats, stored.darks, stored.angles_deg)
    with open_scan(copy) as again:
        np.testing.assert_array_equal(again.flats.read(), scan["flats"])


def test_dxchange_of_volumes_puts_the_first_at_exchange_data(tmp_path: Path) -> None:
    recon = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    labels = (recon > 20).astype(np.uint8)
    written: list[int] = []
    path = write_dxchange(
        tmp_path / "volumes.h5",
        volumes={"recon": recon, "segmented": labels},
        attrs={"recon": {"dims": ["z", "y", "x"], "units": "1/pixel"}},
        sample="s1",
        process={"provenance": {"center": 2.0}, "status": "complete", "stages": ["recon"]},
        on_write=written.append,
    )
    with h5py.File(path) as f:
        assert f["implements"][()].decode() == "exchange:measurement:process"
        np.testing.assert_array_equal(f["exchange/data"][()], recon)
        np.testing.assert_array_equal(f["exchange/segmented"][()], labels)
        assert f["exchange/data"].attrs["units"] == "1/pixel" and f["exchange/data"].attrs["dims"] == '["z", "y", "x"]'
        assert f["exchange/data"].chunks == (1, 4, 5)
        assert f["process/tomolive"].attrs["status"] == "complete"
        assert '"center": 2.0' in f["process/tomolive/provenance"][()].decode()
    assert sum(written) == recon.nbytes + labels.nbytes


def test_dxchange_needs_a_whole_raw_scan_or_volumes(tmp_path: Path) -> None:
    scan = _small_scan()
    with pytest.raises(BadInputError, match="projections, flats and darks together"):
        write_dxchange(tmp_path / "a.h5", scan["projections"], scan["flats"])
    with pytest.raises(BadInputError, match="nothing to write"):
        write_dxchange(tmp_path / "b.h5")
    with pytest.raises(BadInputError, match="angles but no projections"):
        write_dxchange(tmp_path / "c.h5", angles_deg=scan["angles_deg"], volumes={"recon": scan["flats"]})
    with pytest.raises(BadInputError, match=r"flats must be frames .* of frame shape \(4, 5\)"):
        write_dxchange(tmp_path / "d.h5", scan["projections"], scan["flats"][:, :2], scan["darks"])


def test_dxchange_without_theta_assumes_half_turn(tmp_path: Path, caplog) -> None:
    scan = _small_scan()
    frames = (scan["projections"], scan["flats"], scan["darks"])
    path = write_dxchange(tmp_path / "no_theta.h5", *frames)
    with caplog.at_level(logging.WARNING, logger="tomolive.io.formats"), open_scan(path) as stored:
        np.testing.assert_allclose(stored.angles_deg, np.arange(7) * 180 / 7)
        assert stored.metadata["angles_assumed"] and "[0, 180)" in stored.metadata["angles_note"]
    assert "no /exchange/theta" in caplog.text and "no_theta.h5" in caplog.text


def test_tooth_dxchange(shared_data: Path) -> None:
    with open_scan(shared_data / "tooth.h5") as scan:
        assert scan.format == "dxchange" and scan.metadata["sample"] == "Tooth"
        assert scan.projections.shape == (181, 2, 640) and scan.projections.dtype == np.float32
        assert (len(scan.flats), len(scan.darks)) == (10, 10)
        assert scan.angles_deg[0] == 0.0 and 179.0 < scan.angles_deg[-1] < 179.01
        assert scan.projections.frame(0).shape == (2, 640)


def test_diad_nexus_through_external_links(shared_data: Path) -> None:
    with open_scan(shared_data / "k11_diad" / "k11-18014.nxs") as scan:
        assert scan.format == "nxtomo"
        assert scan.metadata["paths"]["angles"] == "/entry/imaging/gts_theta_value"
        assert (len(scan.projections), len(scan.flats), len(scan.darks)) == (3001, 100, 100)
        assert scan.frame_shape == (22, 26) and scan.projections.dtype == np.uint16
        assert 89.9 < scan.angles_deg.min() < 90.1 and 269.9 < scan.angles_deg.max() < 270.1
        assert np.all(np.diff(scan.angles_deg) > 0)
        # Flats sit before and after the projections (image_key 1 at frames 0-49, 3101-3150).
        flat, dark = scan.flats.read().mean(), scan.darks.read().mean()
        assert flat > scan.projections.frame(1500).mean() > dark


def test_clear_errors_for_files_that_are_not_scans(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError, match="missing.h5.*does not exist"):
        open_scan(tmp_path / "missing.h5")
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    with pytest.raises(BadInputError, match="notes.h5.*not a readable HDF5 file"):
        open_scan(text)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["spectrum"] = np.arange(10)
    with pytest.raises(BadInputError, match=r"other.h5.*expected DXchange.*NXtomo.*\['spectrum'\]"):
        open_scan(other)
    no_flats = tmp_path / "no_flats.h5"
    with h5py.File(no_flats, "w") as f:
        f["exchange/data"] = np.zeros((3, 2, 2))
    with pytest.raises(MissingDataError, match="no_flats.h5.*/exchange/data_white"):
        open_scan(no_flats)


# --- replay ----------------------------------------------------------------------------------


def test_replay_documents_pass_the_schema(tmp_path: Path, phantom: FoamPhantom) -> None:
    angles = np.linspace(0.0, 180.0, 6, endpoint=False)
    path = write_nxtomo(tmp_path / "foam.nxs", **_counts(phantom, angles), angles_deg=angles)
    documents: list[tuple[str, dict]] = []

    def validate(name: str, doc: dict) -> None:
        schema_validators[DocumentNames[name]].validate(doc)
        documents.append((name, doc))

    RE = RunEngine()
    RE.subscribe(validate)
    RE(replay_scan(path, rows=slice(4, 8), md={"sample": "foam-rows"}))
    names = Counter(name for name, _ in documents)
    assert names == {"start": 1, "descriptor": 3, "event": 3 + 3 + 6, "stop": 1}
    start = documents[0][1]
    assert start["sample"] == "foam-rows" and start["plan_name"] == "replay_scan"
    assert start["replay"]["source"] == str(path) and start["replay"]["format"] == "nxtomo"
    tomo = start["tomo"]
    assert tomo["angles"] == list(angles) and tomo["n_angles"] == 6 and tomo["angle_units"] == "deg"
    descriptors = {doc["uid"]: doc for name, doc in documents if name == "descriptor"}
    assert [d["name"] for d in descriptors.values()] == ["dark", "flat", "primary"]
    for descriptor in descriptors.values():
        key = descriptor["data_keys"][tomo["image_field"]]
        assert key["shape"] == [4, 96] and key["dtype_numpy"] == "<u2"
    primary = [
        doc for name, doc in documents if name == "event" and descriptors[doc["descriptor"]]["name"] == "primary"
    ]
    np.testing.assert_allclose([e["data"][tomo["angle_field"]] for e in primary], angles)
    expected = _counts(phantom, angles)["projections"][2, 4:8]
    np.testing.assert_array_equal(primary[2]["data"][tomo["image_field"]], expected)
    assert documents[-1][1]["exit_status"] == "success"


def test_frame_rate_is_held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Frame k leaves at k / rate after the first, whatever the time spent between frames."""
    replay_module = importlib.import_module("tomolive.plans.replay_scan")  # the module, not the plan

    clock = [100.0]
    sleeps: list[float] = []

    async def fake_sleep(msg):  # the RunEngine's "sleep", on the plan's clock
        sleeps.append(msg.args[0])
        clock[0] += msg.args[0]

    def busy_monotonic() -> float:  # each frame's own work takes 0.01 s of the clock
        clock[0] += 0.01
        return clock[0]

    monkeypatch.setattr(replay_module, "time", SimpleNamespace(monotonic=busy_monotonic))
    path = write_dxchange(tmp_path / "scan.h5", **_small_scan(n_angles=15))  # 20 frames in all
    with open_scan(path) as scan:
        RE = RunEngine()
        RE.register_command("sleep", fake_sleep)
        RE(replay_scan(scan, frame_rate=20.0))
        assert scan.projections.frame(0).shape == (4, 5)  # a scan passed in is left open
    # 19 waits after the first frame; each is the period less the 0.01 s the clock moved
    # since the previous frame left
    assert sleeps == pytest.approx([0.05 - 0.01] * 19)


def test_bad_replay_arguments(phantom_file: Path) -> None:
    RE = RunEngine()
    with pytest.raises(BadInputError, match="frame_rate"):
        RE(replay_scan(phantom_file, frame_rate=0))
    with pytest.raises(BadInputError, match=r"rows.*16 detector rows.*foam.h5"):
        RE(replay_scan(phantom_file, rows=slice(20, 30)))


def test_replay_of_a_phantom_reconstructs(tiled_server, pipeline, phantom, phantom_file) -> None:
    RE = RunEngine()
    RE.subscribe(pipeline)
    (uid,) = RE(replay_scan(phantom_file))
    outcome = pipeline.wait(uid, timeout=120)
    assert outcome.status == "complete", outcome.reason
    scan = from_uri(tiled_server.uri, api_key=tiled_server.api_key)["processed"][uid]
    assert scan.metadata["sample"] == "foam-replay"
    middle, mask = scan["recon"][8], circle_mask((96, 96))
    quality = psnr(middle, phantom.attenuation()[8], mask=mask, fit=True)
    assert quality >= PSNR_FLOOR_DB, quality
    angles = np.deg2rad(np.linspace(0.0, 180.0, 120, endpoint=False))
    center = scan.metadata["provenance"]["center"]["center"]
    sinograms = remove_stripes(phantom.sinogram(angles)[:, 8:10], PipelineParams().stripe_method)
    in_memory = reconstruct(sinograms, angles, center=center)[0]
    agreement = psnr(middle, in_memory, mask=mask)
    assert agreement >= REPLAY_VS_MEMORY_DB, agreement


def test_replay_of_tooth_finds_the_published_centre(tiled_server, pipeline, shared_data) -> None:
    RE = RunEngine()
    RE.subscribe(pipeline)
    (uid,) = RE(replay_scan(shared_data / "tooth.h5"))
    outcome = pipeline.wait(uid, timeout=120)
    assert outcome.status == "complete", outcome.reason
    scan = from_uri(tiled_server.uri, api_key=tiled_server.api_key)["processed"][uid]
    assert scan["recon"].shape == (2, 640, 640)
    center = scan.metadata["provenance"]["center"]["center"]
    assert abs(center - TOOTH_CENTER) <= 1.0, center
