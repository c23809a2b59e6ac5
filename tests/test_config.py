"""Settings: environment, overrides, API key file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tomolive.config import ADMIN_KEY_FILE_NAME, DEFAULT_MAX_BODY_BYTES, KEY_FILE_NAME, Settings
from tomolive.errors import MissingDataError, TomoliveError

ENV = (
    "DATA_DIR",
    "HOST",
    "PORT",
    "TILED_URI",
    "API_KEY",
    "PUBLIC",
    "CATALOG_URI",
    "AUTH_DB_URI",
    "ADMIN_KEY",
    "MAX_BODY_BYTES",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(f"TOMOLIVE_{name}", raising=False)


def test_defaults() -> None:
    s = Settings.from_env()
    assert s == Settings()
    assert s.data_dir == Path("tomolive-data") and s.port == 8000 and s.public is False
    assert s.uri == "http://127.0.0.1:8000"
    assert s.key_file == Path("tomolive-data").absolute() / KEY_FILE_NAME


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TOMOLIVE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TOMOLIVE_HOST", "0.0.0.0")
    monkeypatch.setenv("TOMOLIVE_PORT", "8123")
    monkeypatch.setenv("TOMOLIVE_API_KEY", "secret")
    monkeypatch.setenv("TOMOLIVE_PUBLIC", "Yes")
    s = Settings.from_env()
    assert (s.data_dir, s.host, s.port, s.api_key, s.public) == (
        tmp_path,
        "0.0.0.0",
        8123,
        "secret",
        True,
    )
    assert isinstance(s.port, int)
    assert s.uri == "http://0.0.0.0:8123"
    assert s.resolved_api_key() == "secret"
    monkeypatch.setenv("TOMOLIVE_TILED_URI", "http://tiled.example:9000/api")
    assert Settings.from_env().uri == "http://tiled.example:9000/api"
    monkeypatch.setenv("TOMOLIVE_PUBLIC", "0")
    assert Settings.from_env().public is False


def test_keyword_overrides_win(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TOMOLIVE_PORT", "8123")
    monkeypatch.setenv("TOMOLIVE_PUBLIC", "1")
    monkeypatch.setenv("TOMOLIVE_DATA_DIR", "/nonexistent")
    s = Settings.from_env(port=9001, public=False, data_dir=str(tmp_path), host=None)
    assert s.port == 9001 and s.public is False
    assert s.data_dir == tmp_path and isinstance(s.data_dir, Path)
    assert s.host == "127.0.0.1"  # None means "not given"
    assert s.uri == "http://127.0.0.1:9001"


def test_save_api_key_writes_a_private_key_file(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path / "data")
    first = s.save_api_key("ab" * 36)
    key_file = tmp_path / "data" / KEY_FILE_NAME
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert key_file.read_text() == "ab" * 36 + "\n" and first.api_key == "ab" * 36
    assert s.resolved_api_key() == "ab" * 36
    s.save_api_key("cd" * 36)  # a re-issued key replaces the old one, still private
    assert s.resolved_api_key() == "cd" * 36 and stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert sorted(p.name for p in key_file.parent.iterdir()) == [KEY_FILE_NAME]


def test_catalog_and_auth_database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    assert s.catalog_uri is None and s.auth_db_uri == f"sqlite:///{tmp_path / 'auth.db'}"
    monkeypatch.setenv("TOMOLIVE_CATALOG_URI", "postgresql://tl:pw@db.example:5432/tomolive")
    monkeypatch.setenv("TOMOLIVE_AUTH_DB_URI", "postgresql://tl:pw@db.example:5432/tomolive_auth")
    s = Settings.from_env()
    assert s.catalog_uri == "postgresql://tl:pw@db.example:5432/tomolive"
    assert s.auth_db_uri == "postgresql://tl:pw@db.example:5432/tomolive_auth"
    short = Settings(catalog_uri="postgres://tl:pw@db/tomolive", auth_uri="postgres://tl:pw@db/auth")
    assert (short.catalog_uri, short.auth_db_uri) == ("postgresql://tl:pw@db/tomolive", "postgresql://tl:pw@db/auth")
    with pytest.raises(ValueError, match="mysql://x/y.*postgresql://"):
        Settings(catalog_uri="mysql://x/y")


def test_missing_key_is_a_lookup_error_naming_the_file(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    with pytest.raises(LookupError) as info:
        s.resolved_api_key()
    assert isinstance(info.value, MissingDataError) and isinstance(info.value, TomoliveError)
    assert str(tmp_path / KEY_FILE_NAME) in str(info.value)
    assert "TOMOLIVE_API_KEY" in str(info.value)
    assert not (tmp_path / KEY_FILE_NAME).exists()  # resolving never writes


def test_admin_key_lives_apart_and_keys_stay_out_of_reprs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, catalog_uri="postgresql://tl:pw@db/tomolive")
    with pytest.raises(MissingDataError, match="TOMOLIVE_ADMIN_KEY"):
        s.resolved_admin_key()
    saved = s.save_api_key("ab" * 36).save_admin_key("ef" * 36)
    assert stat.S_IMODE(os.stat(tmp_path / ADMIN_KEY_FILE_NAME).st_mode) == 0o600
    assert s.resolved_admin_key() == "ef" * 36 and s.resolved_api_key() == "ab" * 36
    assert "ab" * 4 not in repr(saved) and "ef" * 4 not in repr(saved) and ":pw@" not in repr(saved)
    monkeypatch.setenv("TOMOLIVE_ADMIN_KEY", "12" * 36)
    monkeypatch.setenv("TOMOLIVE_MAX_BODY_BYTES", "4096")
    from_env = Settings.from_env(data_dir=tmp_path)
    assert from_env.resolved_admin_key() == "12" * 36 and from_env.max_body_bytes == 4096
    assert Settings().max_body_bytes == DEFAULT_MAX_BODY_BYTES
