"""The server process creates its profile's databases itself (tomolive.server.tiled_serve)."""

from __future__ import annotations

import sqlite3

import pytest
from tiled.authn_database import core as authn_schema
from tiled.catalog import core as catalog_schema

from tomolive.config import Settings
from tomolive.server import config_path, server_command
from tomolive.server.tiled_serve import create_databases, main


def test_databases_are_created_once_and_stamped(tmp_path, monkeypatch):
    settings = Settings(data_dir=tmp_path)
    _, env = server_command(settings, admin_password="unused")
    for name, value in env.items():
        if name.startswith("TOMOLIVE_"):
            monkeypatch.setenv(name, value)
    profile = config_path(settings)

    assert create_databases(profile) == ["auth", "catalog"]
    assert create_databases(profile) == []  # a restart finds both
    for path, schema in ((tmp_path / "auth.db", authn_schema), (tmp_path / "catalog.db", catalog_schema)):
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(schema.REQUIRED_REVISION,)]


def test_the_profile_comes_first():
    with pytest.raises(SystemExit, match="usage: python -m tomolive.server.tiled_serve PROFILE"):
        main(["--port", "8000"])
