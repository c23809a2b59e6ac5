"""Shared fixtures: a real Tiled server on loopback, a real Dask cluster, the simulator."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.utils import MsgGenerator
from bluesky_tiled_plugins import TiledWriter
from distributed import Client

from tomolive.callbacks import TomoPipeline
from tomolive.config import Settings
from tomolive.engine.cluster import local_cluster
from tomolive.plans import tomo_scan
from tomolive.server import running_server
from tomolive.sim.devices import SimBeamline, make_sim_beamline
from tomolive.sim.phantoms import make_foam
from tomolive.store import connect, raw_root

from .postgres import PostgresServer, find_bin_dir, running_postgres

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TOMOLIVE_SHARED_DATA", REPO.parent / "shared" / "data"))
SAME_VOLUME = 1e-5
"""Largest |difference| over the value range between two reconstructions of the same frames
in different worker processes: each process measures its own FFTW plans, whose float32
rounding differs (1.02e-6 of the range seen between a live and a reprocessed 16 x 96^2 scan)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _no_ambient_tiled_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiled clients read TILED_API_KEY even when given api_key=None; tests pass keys explicitly."""
    monkeypatch.delenv("TILED_API_KEY", raising=False)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real beamline data not found at {SHARED_DATA} (set TOMOLIVE_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiled_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """The embedded server (``tiled_config/sqlite.yml``) in a temp dir on a free port."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("tiled"), port=free_port())
    with running_server(settings) as running:
        yield running


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server on 127.0.0.1 (Debian's ``postgresql`` package; .ci/run installs it)."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin: "
            "install Debian's `postgresql` package (.ci/run does)"
        )
    with running_postgres(bin_dir, free_port()) as server:
        yield server


@pytest.fixture(scope="session")
def dask_client() -> Iterator[Client]:
    with local_cluster(2) as cluster, Client(cluster) as client:
        yield client


@pytest.fixture
def pipeline(tiled_server: Settings, dask_client: Client, tmp_path: Path) -> Iterator[TomoPipeline]:
    with TomoPipeline.from_uri(
        tiled_server.uri,
        api_key=tiled_server.api_key,
        dask=dask_client,
        scratch_dir=tmp_path,
        outbox_dir=tmp_path / "outbox",
        progress=False,
    ) as pipe:
        yield pipe


@pytest.fixture
def beamline() -> SimBeamline:
    """A small noise-free foam: 16 slices of 96 x 96 pixels."""
    return make_sim_beamline(make_foam((16, 96, 96), seed=11), photons=None, seed=11)


ScanRunner = Callable[..., str]


def sim_tomo_scan(
    beamline: SimBeamline,
    *,
    n_angles: int = 120,
    n_darks: int = 3,
    n_flats: int = 3,
    angles=None,
    md: dict | None = None,
) -> MsgGenerator[str]:
    """``tomo_scan`` of the simulated ``beamline`` at ``n_angles`` in [0, 180) degrees (or ``angles``)."""
    angles = np.linspace(0, 180, n_angles, endpoint=False) if angles is None else angles
    return tomo_scan(
        beamline.detector,
        beamline.rotation,
        angles,
        n_darks,
        n_flats,
        shutter=beamline.shutter,
        sample_x=beamline.sample_x,
        sample_out=beamline.sample_out,
        md=md,
    )


@pytest.fixture
def scan_plan() -> Callable[..., MsgGenerator[str]]:
    """:func:`sim_tomo_scan`, for tests that run their own RunEngine or pipeline."""
    return sim_tomo_scan


@pytest.fixture
def run_scan(pipeline: TomoPipeline) -> ScanRunner:
    """Run ``tomo_scan`` on a beamline in a fresh RunEngine with ``pipeline`` subscribed."""

    def run(
        beamline: SimBeamline,
        *,
        n_angles: int = 120,
        sample: str = "foam-test",
        n_darks: int = 3,
        n_flats: int = 3,
        angles=None,
        RE: RunEngine | None = None,
    ) -> str:
        RE = RE or RunEngine()
        RE.subscribe(pipeline)
        plan = sim_tomo_scan(
            beamline, n_angles=n_angles, n_darks=n_darks, n_flats=n_flats, angles=angles, md={"sample": sample}
        )
        (uid,) = RE(plan)
        return uid

    return run


@pytest.fixture
def scan_with_raw_run(tiled_server: Settings, pipeline: TomoPipeline, run_scan: ScanRunner) -> Callable[..., str]:
    """Run a scan with TiledWriter saving ``raw/<uid>`` beside the pipeline; wait until complete."""

    def run(beamline: SimBeamline, **kwargs: object) -> str:
        RE = RunEngine()
        RE.subscribe(TiledWriter(raw_root(connect(tiled_server.uri, api_key=tiled_server.api_key))))
        uid = run_scan(beamline, RE=RE, **kwargs)
        assert pipeline.wait(uid, timeout=300).status == "complete"
        return uid

    return run
