"""Settings: environment, overrides, API key file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tomolive.config import KEY_FILE_NAME, Settings
from tomolive.errors import MissingDataError, TomoliveError

ENV = ("DATA_DIR", "HOST", "PORT", "TILED_URI", "API_KEY", "PUBLIC")


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
        tmp_path, "0.0.0.0", 8123, "secret", True,
    )  # fmt: skip
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


def test_with_api_key_creates_a_private_key_file_once(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path / "data")
    first, how = s.with_api_key()
    key_file = tmp_path / "data" / KEY_FILE_NAME
    assert key_file.is_file() and str(key_file) in how and "generated" in how
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert first.api_key is not None and len(first.api_key) == 64
    int(first.api_key, 16)  # hex
    assert key_file.read_text() == first.api_key + "\n"
    again, how_again = s.with_api_key()
    assert again.api_key == first.api_key and how_again == f"from {key_file}"
    assert s.resolved_api_key() == first.api_key
    explicit, how_explicit = Settings(data_dir=tmp_path / "data", api_key="k").with_api_key()
    assert explicit.api_key == "k" and "TOMOLIVE_API_KEY" in how_explicit


def test_missing_key_is_a_lookup_error_naming_the_file(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    with pytest.raises(LookupError) as info:
        s.resolved_api_key()
    assert isinstance(info.value, MissingDataError) and isinstance(info.value, TomoliveError)
    assert str(tmp_path / KEY_FILE_NAME) in str(info.value)
    assert "TOMOLIVE_API_KEY" in str(info.value)
    assert not (tmp_path / KEY_FILE_NAME).exists()  # resolving never writes
