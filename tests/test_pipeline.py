"""The Dask pipeline: identical volumes whatever the number of workers; frame preparation."""

from __future__ import annotations

import numpy as np
import pytest
from bluesky import RunEngine
from distributed import Client, LocalCluster
from tiled.client import from_uri

from tomolive.callbacks import TomoPipeline
from tomolive.devices import make_sim_beamline
from tomolive.errors import BadInputError
from tomolive.phantoms import make_foam
from tomolive.pipeline import PaganinParams, PipelineParams, prepare_projection, row_blocks
from tomolive.plans import tomo_scan


def scan_and_read(tiled_server, dask, tmp_path, beamline, params):
    with TomoPipeline.from_uri(
        tiled_server.uri, api_key=tiled_server.api_key, dask=dask, params=params,
        scratch_dir=tmp_path, progress=False,
    ) as pipe:  # fmt: skip
        RE = RunEngine()
        RE.subscribe(pipe)
        b = beamline
        (uid,) = RE(tomo_scan(b.detector, b.rotation, np.linspace(0, 180, 90, endpoint=False), 2, 2,
                              shutter=b.shutter, sample_x=b.sample_x, sample_out=b.sample_out))  # fmt: skip
        assert pipe.wait(uid, timeout=300).status == "complete"
    return from_uri(tiled_server.uri, api_key=tiled_server.api_key)["processed"][uid]


def test_one_and_two_workers_give_the_same_volume(tiled_server, dask_client, tmp_path):
    params = PipelineParams(rows_per_block=4)  # 5 blocks, an odd tail: uneven work split
    phantom = make_foam((18, 64, 64), seed=5)
    two = scan_and_read(tiled_server, dask_client, tmp_path, make_sim_beamline(phantom, photons=None), params)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as one_worker:  # fmt: skip
        one = scan_and_read(tiled_server, one_worker, tmp_path, make_sim_beamline(phantom, photons=None), params)
    a, b = one["recon"].read(), two["recon"].read()
    assert a.shape == b.shape == (18, 64, 64)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.ptp(a))
    assert one.metadata["provenance"]["dask"]["workers"] == 1
    assert two.metadata["provenance"]["dask"]["workers"] == 2


def test_row_blocks_cover_every_row_once():
    blocks = row_blocks(18, 4)
    assert blocks[0] == (0, 4) and blocks[-1] == (16, 18)
    assert sum(stop - start for start, stop in blocks) == 18


def test_rows_per_block_must_be_even():
    with pytest.raises(BadInputError, match="even"):
        PipelineParams(rows_per_block=5)


def test_prepare_projection_matches_normalise_and_log():
    rng = np.random.default_rng(0)
    dark = np.full((8, 10), 100.0, np.float32)
    flat = dark + 1000.0
    transmission = rng.uniform(0.2, 0.9, (8, 10))
    image = (dark + 1000.0 * transmission).astype(np.float32)
    out = prepare_projection(image, flat, dark, PipelineParams())
    np.testing.assert_allclose(out, -np.log(transmission), rtol=1e-5)


def test_prepare_projection_removes_zingers_and_applies_paganin():
    dark = np.zeros((32, 32), np.float32)
    flat = np.full((32, 32), 1000.0, np.float32)
    image = np.full((32, 32), 500.0, np.float32)
    image[10, 10] = 4000.0  # a zinger
    cleaned = prepare_projection(image, flat, dark, PipelineParams(zinger_threshold=0.3))
    np.testing.assert_allclose(cleaned, np.log(2.0), rtol=1e-5)
    paganin = PaganinParams(pixel_size=1e-6, distance=0.1, energy=20.0, delta_beta=300.0)
    smooth = prepare_projection(image, flat, dark, PipelineParams(paganin=paganin))
    raw = prepare_projection(image, flat, dark, PipelineParams())
    assert smooth.max() < raw.max()  # the spike is spread out by the low-pass filter
    assert abs(np.mean(np.exp(-smooth)) - np.mean(np.exp(-raw))) < 0.01  # mean transmission kept
