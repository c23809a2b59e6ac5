"""The PostgreSQL profile (``tiled_config/postgresql.yml``) on a real PostgreSQL server.

The same end-to-end, raw-run and read-only-key tests as on SQLite run here: importing them
collects them again in this module, where ``tiled_server`` is the PostgreSQL-backed server.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.plans import scan
from bluesky_tiled_plugins import TiledWriter

from tomolive.config import Settings
from tomolive.server import running_server
from tomolive.store import connect, raw_root

from .conftest import free_port
from .postgres import PostgresServer
from .test_end_to_end import test_scan_is_reconstructed_into_tiled  # noqa: F401
from .test_raw_runs import test_raw_run_is_saved_beside_the_result_and_reprocesses_from_tiled  # noqa: F401
from .test_security import test_read_only_key_reads_but_cannot_write  # noqa: F401


@pytest.fixture(scope="module")
def tiled_server(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """tomolive's Tiled server with catalog, tables and API keys in PostgreSQL, Zarr on disk."""
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("tiled-pg"),
        port=free_port(),
        catalog_uri=postgres.create_database("tomolive"),
        auth_uri=postgres.create_database("tomolive_auth"),
    )
    with running_server(settings) as running:
        yield running


def test_raw_run_rows_and_catalog_live_in_postgresql(tiled_server, postgres, beamline):
    client = connect(tiled_server.uri, api_key=tiled_server.api_key)
    RE = RunEngine()
    RE.subscribe(TiledWriter(raw_root(client)))
    (uid,) = RE(scan([beamline.sample_x], beamline.rotation, 0.0, 90.0, 7, md={"sample": "pg-table"}))

    fresh = connect(tiled_server.uri, api_key=tiled_server.api_key)
    primary = fresh["raw"][uid]["primary"].read()
    np.testing.assert_allclose(np.asarray(primary[beamline.rotation.name]), np.linspace(0.0, 90.0, 7))

    # Event rows are in PostgreSQL tables (tabular storage), nodes in the PostgreSQL catalog.
    assert postgres.psql("tomolive", f"SELECT count(*) FROM nodes WHERE key = '{uid}'") == "1"
    tables = postgres.psql(
        "tomolive",
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = 'public' AND table_name LIKE 'table\\_%'",
    ).split()
    rows = sum(int(postgres.psql("tomolive", f'SELECT count(*) FROM "{t}"')) for t in tables)
    assert tables and rows >= 7
    assert int(postgres.psql("tomolive", "SELECT count(*) FROM assets WHERE data_uri LIKE 'postgresql:%'")) >= 1
    assert int(postgres.psql("tomolive_auth", "SELECT count(*) FROM api_keys")) >= 1  # hashed keys
    assert not list(tiled_server.data_dir.glob("*.db")) and not list(tiled_server.data_dir.glob("*.duckdb"))
