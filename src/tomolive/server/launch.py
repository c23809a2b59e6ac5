"""Start tomolive's Tiled server from a profile in ``tiled_config/`` and issue its writer key.

Profiles: ``sqlite.yml`` (embedded default: catalog, tables and arrays under the data dir) and
``postgresql.yml`` (catalog and tables in PostgreSQL, arrays under the data dir), picked by
``Settings.catalog_uri``.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from importlib.resources import files
from pathlib import Path

import httpx

from ..config import Settings, split_password
from ..errors import TomoliveError
from .keys import issue_writer_key, principal_of

SERVER_MODULE = "tomolive.server.tiled_serve"
"""What the server process runs (``python -m``): find it among child processes by this."""


def config_path(settings: Settings) -> Path:
    """The Tiled config (profile) shipped in ``tomolive.tiled_config`` that ``settings`` need."""
    name = "postgresql.yml" if settings.catalog_uri else "sqlite.yml"
    return Path(str(files("tomolive.tiled_config") / name))


def server_command(settings: Settings, admin_password: str) -> tuple[list[str], dict[str, str]]:
    """The server's command line (``tiled serve config`` by way of :mod:`tomolive.server.tiled_serve`) and environment."""
    data_dir = settings.data_dir.absolute()
    (data_dir / "zarr").mkdir(parents=True, exist_ok=True)
    auth_uri, auth_password = split_password(settings.auth_db_uri)
    env = {
        **os.environ,
        "TOMOLIVE_DATA_DIR": str(data_dir),
        "TOMOLIVE_AUTH_DB_URI": auth_uri,
        "TOMOLIVE_ADMIN_PASSWORD": admin_password,
    }
    if auth_password is not None:
        env["PGPASSWORD"] = auth_password
    if settings.catalog_uri:
        env["TOMOLIVE_CATALOG_URI"] = settings.catalog_uri
    command = [
        sys.executable,
        "-m",
        SERVER_MODULE,
        str(config_path(settings)),
        "--host",
        settings.host,
        "--port",
        str(settings.port),
    ]
    if settings.public:
        command.append("--public")
    return command, env


def wait_until_up(uri: str, timeout: float = 180.0, process: subprocess.Popen | None = None) -> None:
    """Poll the server's API root until it answers, the process dies, or ``timeout`` passes.

    One client serves every poll: a new one per poll builds a TLS context each time, which
    is costly in CPU (docs/measurements/moves.md).
    """
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as http:
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise TomoliveError(f"Tiled server exited with code {process.returncode} while starting")
            try:
                if http.get(f"{uri}/api/v1/").status_code < 500:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    raise TomoliveError(f"Tiled server at {uri} did not answer within {timeout:.0f} s")


def writer_key(settings: Settings, admin_password: str) -> Settings:
    """Settings carrying a writer key that the running server knows.

    An explicit key (``TOMOLIVE_API_KEY`` / ``--api-key``) must be one the server issued; a
    key file from an earlier start is reused while the server still knows it; otherwise a new
    key is issued and written to the key file (mode 600).
    """
    if settings.api_key:
        if principal_of(settings.uri, settings.api_key) is None:
            raise TomoliveError(
                f"the API key from TOMOLIVE_API_KEY/--api-key is not known to the Tiled server at "
                f"{settings.uri}: unset it to let tomolive issue one into {settings.key_file}"
            )
        return settings
    path = settings.key_file
    if path.exists() and principal_of(settings.uri, key := path.read_text().strip()) is not None:
        return replace(settings, api_key=key)
    return settings.save_api_key(issue_writer_key(settings.uri, admin_password))


@contextmanager
def running_server(settings: Settings, log_path: Path | None = None, *, console: bool = False) -> Iterator[Settings]:
    """Run the Tiled server in a child process for the ``with`` block; yields settings with its key.

    Output goes to ``log_path`` (default ``DATA_DIR/tiled-server.log``), or to this process's
    own stdout/stderr when ``console`` is true.
    """
    password = os.environ.get("TOMOLIVE_ADMIN_PASSWORD") or secrets.token_hex(32)
    command, env = server_command(settings, password)
    log_path = log_path or settings.data_dir.absolute() / "tiled-server.log"
    if console:
        process = subprocess.Popen(command, env=env)
    else:
        with open(log_path, "ab") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            wait_until_up(settings.uri, process=process)
        except TomoliveError as err:
            raise TomoliveError(f"{err}; its log: {'above' if console else log_path}") from err
        yield writer_key(settings, password)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
