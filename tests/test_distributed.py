"""The pipeline on an existing Dask cluster started as separate processes, as at a facility.

A ``dask scheduler`` and nanny'd ``dask worker`` processes on loopback: a scan reconstructs
through them, the pipeline leaves the cluster running, a worker killed mid-reconstruction
changes nothing in the volume, and torch stages go to workers tagged ``--resources GPU=1``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import numpy as np
import pytest
from distributed import Client, get_task_stream
from tiled.client import from_uri

from tomolive.callbacks import TomoPipeline
from tomolive.config import Settings
from tomolive.engine.cluster import gpu_resources
from tomolive.sim.devices import make_sim_beamline
from tomolive.sim.phantoms import make_foam
from tomolive.techniques.tomo import PipelineParams

from .conftest import SAME_VOLUME, free_port
from .test_end_to_end import assert_matches_phantom
from .test_pipeline import scan_and_read

BIN = Path(sys.executable).parent
TORCH_PARAMS = PipelineParams(method="fbp", rows_per_block=2)
"""torch FBP on CPU: 0.2 s per 2-row block of 128 px x 180 angles on an idle core, slow
enough that a worker killed after the first of 24 blocks lands mid-reconstruction."""


@contextmanager
def dask_cluster(log_dir: Path, *workers: list[str]) -> Iterator[str]:
    """A ``dask scheduler`` and one ``dask worker`` process per argument list; yields its address."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    with ExitStack() as stack:
        scheduler = ["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]
        stack.enter_context(_process(log_dir / "scheduler.log", scheduler))
        for i, extra in enumerate(workers):
            worker = [
                "worker",
                address,
                "--nthreads",
                "1",
                "--nworkers",
                "1",
                "--host",
                "127.0.0.1",
                "--no-dashboard",
                "--local-directory",
                str(log_dir / f"worker-{i}"),
                *extra,
            ]
            stack.enter_context(_process(log_dir / f"worker-{i}.log", worker))
        with Client(address, timeout=60) as client:
            client.wait_for_workers(len(workers), timeout=120)
        yield address


@contextmanager
def _process(log: Path, args: list[str]) -> Iterator[subprocess.Popen]:
    """``dask <args>`` with output to ``log``; terminated (killed after 30 s) on exit, always."""
    with log.open("w") as out, subprocess.Popen([str(BIN / "dask"), *args], stdout=out, stderr=out) as process:
        try:
            yield process
        finally:
            process.terminate()
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
            process.kill()  # a no-op once it has exited


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Scheduler + two single-threaded nanny'd workers (a killed worker is restarted)."""
    with dask_cluster(tmp_path_factory.mktemp("dask"), [], []) as address:
        yield address


@pytest.fixture
def pipeline(tiled_server: Settings, cluster: str, tmp_path: Path) -> Iterator[TomoPipeline]:
    """Overrides conftest's: the pipeline is given the external scheduler's address."""
    with TomoPipeline.from_uri(
        tiled_server.uri,
        api_key=tiled_server.api_key,
        dask=cluster,
        params=TORCH_PARAMS,
        scratch_dir=tmp_path,
        outbox_dir=tmp_path / "outbox",
        progress=False,
    ) as pipe:
        yield pipe


def test_scan_runs_on_an_external_cluster_and_leaves_it_running(tiled_server, cluster, pipeline, beamline, run_scan):
    uid = run_scan(beamline, sample="foam-distributed")
    outcome = pipeline.wait(uid, timeout=300)
    assert outcome.status == "complete", outcome.reason
    assert pipeline.engine.dask_client().cluster is None  # connected to the scheduler, started nothing
    pipeline.close()

    with Client(cluster, timeout=10) as client:  # the cluster outlives the pipeline
        assert len(client.scheduler_info()["workers"]) == 2
    scan = from_uri(tiled_server.uri, api_key=tiled_server.api_key)["processed"][uid]
    dask_record = scan.metadata["provenance"]["dask"]
    assert dask_record["scheduler"] == cluster and dask_record["workers"] == 2
    assert dask_record["blocks"] == 8 and not dask_record["gpu_resource"]
    assert_matches_phantom(scan["recon"], beamline.phantom)


def test_worker_killed_mid_reconstruction_gives_the_same_volume(tiled_server, cluster, pipeline, run_scan):
    def scan() -> str:
        beamline = make_sim_beamline(make_foam((48, 128, 128), seed=3), photons=None, seed=3)
        return run_scan(beamline, sample="foam-kill", n_angles=180)  # 24 blocks

    clean = scan()
    assert pipeline.wait(clean, timeout=300).status == "complete"
    killed = scan()  # returns at the stop document; the blocks run from now on
    root = from_uri(tiled_server.uri, api_key=tiled_server.api_key)
    with Client(cluster, timeout=10) as client:
        victim, pid = _busy_recon_worker(client)
        os.kill(pid, signal.SIGKILL)
        outcome = pipeline.wait(killed, timeout=300)
        assert outcome.status == "complete", outcome.reason
        # The kill landed mid-run: the scheduler lost recon blocks that were on that worker.
        removed = [msg for _, msg in client.get_events(victim) if msg.get("action") == "remove-worker"]
        lost = {str(k) for msg in removed for k in (*msg["processing-tasks"], *msg["lost-computed-tasks"])}
        assert any(k.startswith("recon-block") for k in lost), removed
        client.wait_for_workers(2, timeout=120)  # the nanny restarted it

    a, b = (root["processed"][uid]["recon"].read() for uid in (clean, killed))
    assert a.shape == b.shape == (48, 128, 128)
    difference = float(np.max(np.abs(a - b)))
    assert difference <= SAME_VOLUME * float(np.ptp(a)), f"max |clean - killed| = {difference}"


def _busy_recon_worker(client: Client, timeout: float = 120.0) -> tuple[str, int]:
    """The address and process id of the first worker seen running a recon block: asked of
    the scheduler every 10 ms (Tiled's progress, sent at most every 2 s, can lag a run of
    small blocks by all of it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = [w for w, keys in client.processing().items() if any(str(k).startswith("recon-block") for k in keys)]
        if busy:
            return busy[0], client.run(os.getpid, workers=busy[:1])[busy[0]]
        time.sleep(0.01)
    raise AssertionError(f"no worker ran a recon block within {timeout} s")


def test_torch_stages_run_on_gpu_tagged_workers(tiled_server, tmp_path, cluster):
    with Client(cluster, timeout=10) as plain:
        assert gpu_resources(plain) is None  # no worker has the resource: torch tasks run anywhere
    with dask_cluster(tmp_path, ["--resources", "GPU=1"], []) as address, Client(address) as client:
        assert gpu_resources(client) == {"GPU": 1}
        gpu_worker = next(a for a, w in client.scheduler_info()["workers"].items() if w["resources"])
        params = PipelineParams(method="fbp", segment="unet", rows_per_block=4)
        beamline = make_sim_beamline(make_foam((16, 96, 96), seed=11), photons=None, seed=11)
        with get_task_stream(client) as stream:
            scan = scan_and_read(tiled_server, address, tmp_path, beamline, params)
    ran_on: dict[str, set[str]] = {}
    for task in stream.data:
        ran_on.setdefault(str(task["key"]).split("-block-")[0], set()).add(task["worker"])
    assert ran_on["recon"] == ran_on["segment"] == {gpu_worker}, ran_on
    assert scan.metadata["provenance"]["dask"]["gpu_resource"]
    assert scan["segmented"].shape == (16, 96, 96)
