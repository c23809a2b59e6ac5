"""``tomolive export``: TIFF slices, DXchange HDF5 and Zarr read back equal to the Tiled arrays."""

from __future__ import annotations

import json
import uuid

import h5py
import numpy as np
import pytest
import tifffile
import zarr

from tomolive.cli import main as tomolive_main
from tomolive.config import Settings
from tomolive.errors import BadInputError, MissingDataError
from tomolive.io.export import export_scan, slab_rows
from tomolive.store import TiledResult, connect, find_scan

SHAPE = (10, 12, 16)


def make_scan(settings: Settings, status: str = "complete", uid: str | None = None) -> tuple[str, dict]:
    """A processed scan with recon (float32) and segmented (uint8) written in 4-row blocks."""
    uid = uid or str(uuid.uuid4())
    client = connect(settings.uri, api_key=settings.api_key)
    record = TiledResult.create(client, uid, {"sample": "export-foam", "provenance": {"center": {"center": 7.5}}})
    rng = np.random.default_rng(3)
    volumes = {
        "recon": rng.normal(size=SHAPE).astype(np.float32),
        "segmented": rng.integers(0, 3, size=SHAPE, dtype=np.uint8),
    }
    for name, volume in volumes.items():
        target = record.new_volume(name, SHAPE, 4, volume.dtype, metadata={"units": "1/pixel"})
        for index, start in enumerate(range(0, SHAPE[0], 4)):
            target.write_block(index, volume[start : start + 4])
    record.set_status(status, **({"reason": "stopped by user"} if status != "complete" else {}))
    return uid, volumes


def export(settings: Settings, *args: str) -> int:
    return tomolive_main(["export", *args, "--uri", settings.uri, "--api-key", settings.api_key])


@pytest.mark.parametrize("fmt", ["tiff", "hdf5", "zarr"])
def test_round_trip_equals_the_tiled_arrays(tiled_server, tmp_path, capsys, fmt):
    uid, volumes = make_scan(tiled_server)
    out = tmp_path / f"scan.{fmt}"
    assert (
        export(tiled_server, uid[:13], "--format", fmt, "--out", str(out), "--array", "recon", "--array", "segmented")
        == 0
    ), capsys.readouterr().err
    assert f"exported {uid} to {out}" in capsys.readouterr().out
    assert not out.with_name(out.name + ".partial").exists()
    if fmt == "tiff":
        files = sorted(out.glob("recon_*.tif"))
        assert [f.name for f in files[:2]] == ["recon_00000.tif", "recon_00001.tif"]
        got = {name: np.stack([tifffile.imread(f) for f in sorted(out.glob(f"{name}_*.tif"))]) for name in volumes}
        assert tifffile.TiffFile(files[0]).pages[0].bitspersample == 32
        assert json.loads((out / "metadata.json").read_text())["raw_uid"] == uid
    elif fmt == "hdf5":
        with h5py.File(out) as f:
            got = {"recon": f["exchange/data"][()], "segmented": f["exchange/segmented"][()]}
    else:
        group = zarr.open_group(out, mode="r")
        got = {name: group[name][:] for name in volumes}
        assert group.attrs["sample"] == "export-foam" and group["recon"].attrs["units"] == "1/pixel"
    for name, volume in volumes.items():
        assert got[name].dtype == volume.dtype
        np.testing.assert_array_equal(got[name], volume)


def test_hdf5_has_the_dxchange_layout(tiled_server, tmp_path):
    uid, volumes = make_scan(tiled_server)
    node = connect(tiled_server.uri, api_key=tiled_server.api_key)["processed"][uid]
    done = export_scan(node, "hdf5", tmp_path / "scan.h5", progress=False)
    assert done.nbytes == volumes["recon"].nbytes
    with h5py.File(done.path) as f:
        assert f["implements"][()].decode() == "exchange:measurement:process"
        assert f["exchange/data"].shape == SHAPE and f["exchange/data"].dtype == np.float32
        assert f["exchange/data"].attrs["axes"] == "z:y:x"
        assert "segmented" not in f["exchange"]  # only the arrays asked for
        assert f["measurement/sample/name"][()].decode() == "export-foam"
        assert json.loads(f["process/tomolive/provenance"][()])["center"]["center"] == 7.5
        assert f["process/tomolive"].attrs["raw_uid"] == uid


def test_slabs_are_whole_chunks_within_the_budget(tiled_server):
    uid, _ = make_scan(tiled_server)
    recon = connect(tiled_server.uri, api_key=tiled_server.api_key)["processed"][uid]["recon"]
    assert slab_rows(recon, slab_bytes=1) == 4  # at least one chunk
    assert slab_rows(recon, slab_bytes=9 * 12 * 16 * 4) == 8  # whole chunks only


def test_incomplete_scan_is_refused_unless_forced(tiled_server, tmp_path, capsys):
    uid, volumes = make_scan(tiled_server, status="aborted")
    out = tmp_path / "aborted.zarr"
    assert export(tiled_server, uid, "--format", "zarr", "--out", str(out)) == 1
    err = capsys.readouterr().err
    assert uid in err and "'aborted' (stopped by user)" in err and "--force" in err
    assert not out.exists()
    assert export(tiled_server, uid, "--format", "zarr", "--out", str(out), "--force") == 0
    np.testing.assert_array_equal(zarr.open_group(out, mode="r")["recon"][:], volumes["recon"])
    assert export(tiled_server, uid, "--format", "zarr", "--out", str(out), "--force") == 1
    assert "already exists" in capsys.readouterr().err


def test_uid_prefix_must_be_unique_and_known(tiled_server):
    client = connect(tiled_server.uri, api_key=tiled_server.api_key)
    stem = uuid.uuid4().hex[:8]
    first, _ = make_scan(tiled_server, uid=f"{stem}-1")
    make_scan(tiled_server, uid=f"{stem}-2")
    assert find_scan(client, f"{stem}-1").item["id"] == first
    with pytest.raises(BadInputError, match=f"{stem}-1.*\n.*{stem}-2|{stem}-2.*\n.*{stem}-1"):
        find_scan(client, stem)
    with pytest.raises(MissingDataError, match="no processed scan has a uid starting with 'zzzz'"):
        find_scan(client, "zzzz")
    with pytest.raises(MissingDataError, match="no array 'denoised'"):
        export_scan(client["processed"][first], "zarr", arrays=["denoised"])
