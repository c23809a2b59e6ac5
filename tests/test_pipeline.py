"""The Dask pipeline: identical volumes whatever the number of workers, QC beside the blocks; frame preparation."""

from __future__ import annotations

import time

import numpy as np
import pytest
import zarr
from bluesky import RunEngine
from distributed import Client, get_task_stream
from tiled.client import from_uri

from tomolive.callbacks import TomoPipeline
from tomolive.engine.blocks import blocks_holding, row_blocks, submit_blocks
from tomolive.engine.cluster import local_cluster
from tomolive.errors import BadInputError
from tomolive.plans import tomo_scan
from tomolive.qc import QCThresholds, qc_metrics, sampled_slices
from tomolive.sim.devices import make_sim_beamline
from tomolive.sim.phantoms import make_foam
from tomolive.store import VolumeTarget
from tomolive.techniques.tomo import PaganinParams, PipelineParams
from tomolive.techniques.tomo.analysis import measure_quality
from tomolive.techniques.tomo.reconstruction import BlockResult, prepare_projection

from .conftest import SAME_VOLUME


def scan_and_read(tiled_server, dask, tmp_path, beamline, params):
    with TomoPipeline.from_uri(
        tiled_server.uri,
        api_key=tiled_server.api_key,
        dask=dask,
        params=params,
        scratch_dir=tmp_path,
        progress=False,
    ) as pipe:
        RE = RunEngine()
        RE.subscribe(pipe)
        b = beamline
        (uid,) = RE(
            tomo_scan(
                b.detector,
                b.rotation,
                np.linspace(0, 180, 90, endpoint=False),
                2,
                2,
                shutter=b.shutter,
                sample_x=b.sample_x,
                sample_out=b.sample_out,
            )
        )
        assert pipe.wait(uid, timeout=300).status == "complete"
    return from_uri(tiled_server.uri, api_key=tiled_server.api_key)["processed"][uid]


def test_one_and_two_workers_give_the_same_volume(tiled_server, dask_client, tmp_path):
    params = PipelineParams(rows_per_block=4)  # 5 blocks, an odd tail: uneven work split
    phantom = make_foam((18, 64, 64), seed=5)
    two = scan_and_read(tiled_server, dask_client, tmp_path, make_sim_beamline(phantom, photons=None), params)
    with local_cluster(1) as cluster, Client(cluster) as one_worker:
        one = scan_and_read(tiled_server, one_worker, tmp_path, make_sim_beamline(phantom, photons=None), params)
    a, b = one["recon"].read(), two["recon"].read()
    assert a.shape == b.shape == (18, 64, 64)
    np.testing.assert_allclose(a, b, rtol=0, atol=SAME_VOLUME * np.ptp(a))
    assert one.metadata["provenance"]["dask"]["workers"] == 1
    assert two.metadata["provenance"]["dask"]["workers"] == 2


def test_row_blocks_cover_every_row_once():
    assert row_blocks(18, 4) == [(0, 4), (4, 8), (8, 12), (12, 16), (16, 18)]
    assert row_blocks(16, 4)[-1] == (12, 16) and row_blocks(3, 4) == [(0, 3)]


def test_rows_per_block_must_be_even():
    with pytest.raises(BadInputError, match="even"):
        PipelineParams(rows_per_block=5)


def test_finding_the_centre_needs_rows():
    with pytest.raises(BadInputError, match="center_rows must be >= 1 to find the centre; got 0"):
        PipelineParams(center_rows=0)
    PipelineParams(center=10.0, center_rows=0)  # a given centre needs none


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


def test_qc_starts_once_its_slices_are_written_and_runs_beside_the_other_blocks(tiled_server, tmp_path):
    """QC reads 8 slices: the blocks holding them go first, QC follows them on a one-worker
    cluster ahead of the remaining blocks, so on more workers it overlaps the reconstruction."""
    params = PipelineParams(rows_per_block=4)  # 16 blocks; QC's slices lie in 8 of them
    phantom = make_foam((64, 64, 64), seed=5)
    with local_cluster(1) as cluster, Client(cluster) as client, get_task_stream(client) as stream:
        node = scan_and_read(tiled_server, client, tmp_path, make_sim_beamline(phantom, photons=None), params)
    computed = {
        task["key"]: next(s for s in task["startstops"] if s["action"] == "compute")
        for task in stream.data
        if task["key"].startswith(("recon-block-", "qc-"))
    }
    qc = next(times for key, times in computed.items() if key.startswith("qc-"))
    recon = {int(key.split("-")[2]): times for key, times in computed.items() if key.startswith("recon-block-")}
    assert sorted(recon) == list(range(16))
    holding = blocks_holding(row_blocks(64, 4), sampled_slices(64))
    assert holding == [0, 2, 4, 6, 9, 11, 13, 15]
    assert all(recon[i]["stop"] <= qc["start"] for i in holding)
    later = sorted(recon[i]["start"] for i in recon if i not in holding)
    assert qc["start"] < later[len(later) // 2]  # it did not wait for the rest (a block or two may start first)
    metadata = node.metadata
    assert metadata["qc"]["slices_used"] == 8 and metadata["provenance"]["seconds_per_stage"]["qc"] > 0
    # QC measured the slices the blocks kept: the same numbers as the stored volume's
    stored = qc_metrics(node["recon"].read(), center_confidence=metadata["qc"]["center_confidence"])
    assert {k: metadata["qc"][k] for k in stored} == stored


def test_qc_measures_the_slices_its_blocks_kept_instead_of_reading_them_back(tmp_path):
    """One foam stored, another's slices kept by the blocks: QC's numbers are the kept foam's."""

    def noisy_foam(seed: int) -> np.ndarray:
        mu = make_foam((64, 64, 64), seed=seed).attenuation()
        return (mu + np.random.default_rng(seed).normal(0, 0.05 * np.ptp(mu), mu.shape)).astype(np.float32)

    kept_foam, stored_foam = noisy_foam(3), noisy_foam(4)
    path = tmp_path / "recon.zarr"
    zarr.create_array(str(path), shape=(64, 64, 64), chunks=(4, 64, 64), dtype="float32")[:] = stored_foam
    target = VolumeTarget("http://unused", None, rows_per_block=4, zarr_path=str(path))
    kept = [BlockResult(0.1, "zarr", {z: kept_foam[z].copy()}) for z in sampled_slices(64)]

    from_blocks = measure_quality(target, None, 3, None, QCThresholds(), after=kept)
    one_missing = measure_quality(target, None, 3, None, QCThresholds(), after=kept[1:])

    assert from_blocks["metrics"] == qc_metrics(kept_foam)
    assert one_missing["metrics"] == qc_metrics(stored_foam) != from_blocks["metrics"]  # not all kept: read


def _page_faults_of_second_reconstruction() -> int:
    """Minor page faults of one 16 x 256^2 block reconstruction after a first (warm-up) one."""
    import resource

    from tomolive.recon import reconstruct

    block = np.random.default_rng(0).random((256, 16, 256), dtype=np.float32)
    angles = np.linspace(0, np.pi, 256, endpoint=False)
    reconstruct(block, angles, center=127.5, ncore=1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    reconstruct(block, angles, center=127.5, ncore=1)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_local_cluster_workers_reuse_block_buffers_instead_of_faulting_in_fresh_pages():
    """Under Dask's default MALLOC_TRIM_THRESHOLD_=65536 every block buffer is a fresh mmap:
    ~8,300 page faults for this block (measured in a thread), 2 with tomolive's WORKER_ENVIRON."""
    with local_cluster(1, dashboard_address=None) as cluster, Client(cluster) as client:
        faults = client.submit(_page_faults_of_second_reconstruction, pure=False).result()
    assert faults < 1000, f"{faults} page faults: the worker's allocator returns block buffers to the OS"


def _block_that_fails_first(i: int) -> int:
    if i == 0:
        raise ValueError("block 0 is broken")
    time.sleep(0.2)
    return i


def test_a_failed_block_cancels_the_blocks_not_yet_run(dask_client):
    run = submit_blocks(dask_client, "failing", _block_that_fails_first, [(i,) for i in range(40)])
    with pytest.raises(ValueError, match="block 0 is broken"):
        run.wait(progress=False, on_progress=None)
    cancelled = [future.status == "cancelled" for future in run.futures.values()]
    assert sum(cancelled) >= 30  # 39 blocks of 0.2 s on 2 workers: only those started or done by then ran
