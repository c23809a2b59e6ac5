"""Start tomolive's Tiled server from a profile in ``tiled_config/`` and issue its admin and writer keys.

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
from .keys import ADMIN_SCOPES, WRITER_SCOPES, admin_login, issue_key, key_scopes, principal_of, revoke_key
from .modes import FILE_MODE, secure_data_dir

SERVER_MODULE = "tomolive.server.tiled_serve"
"""What the server process runs (``python -m``): find it among child processes by this."""


def config_path(settings: Settings) -> Path:
    """The Tiled config (profile) shipped in ``tomolive.tiled_config`` that ``settings`` need."""
    name = "postgresql.yml" if settings.catalog_uri else "sqlite.yml"
    return Path(str(files("tomolive.tiled_config") / name))


def server_command(settings: Settings, admin_password: str) -> tuple[list[str], dict[str, str]]:
    """The server's command line (``tiled serve config`` by way of :mod:`tomolive.server.tiled_serve`) and environment."""
    data_dir = settings.data_dir.absolute()
    (data_dir / "zarr").mkdir(mode=0o700, parents=True, exist_ok=True)
    auth_uri, auth_password = split_password(settings.auth_db_uri)
    env = {
        **os.environ,
        "TOMOLIVE_DATA_DIR": str(data_dir),
        "TOMOLIVE_AUTH_DB_URI": auth_uri,
        "TOMOLIVE_ADMIN_PASSWORD": admin_password,
        "TOMOLIVE_MAX_BODY_BYTES": str(settings.max_body_bytes),
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


def server_keys(settings: Settings, admin_password: str) -> Settings:
    """Settings carrying the admin key and a writer key that the running server knows.

    Keys in the key files from an earlier start are reused while the server knows them with
    the expected scopes; a writer key with more (one issued before keys were scoped) is
    revoked and replaced. Otherwise a new key is issued and written to its file (mode 600).
    An explicit writer key (``TOMOLIVE_API_KEY`` / ``--api-key``) must be one the server issued.
    """
    headers = admin_login(settings.uri, admin_password)
    uri = settings.uri
    admin = _known_key(settings.admin_key_file, uri)
    if admin is None or admin[1] != frozenset(ADMIN_SCOPES):
        settings = settings.save_admin_key(issue_key(uri, headers, ADMIN_SCOPES, "tomolive admin"))
    else:
        settings = replace(settings, admin_key=admin[0])
    if settings.api_key:
        if principal_of(uri, settings.api_key) is None:
            raise TomoliveError(
                f"the API key from TOMOLIVE_API_KEY/--api-key is not known to the Tiled server at "
                f"{uri}: unset it to let tomolive issue one into {settings.key_file}"
            )
        return settings
    writer = _known_key(settings.key_file, uri)
    if writer is not None and writer[1] == frozenset(WRITER_SCOPES):
        return replace(settings, api_key=writer[0])
    if writer is not None:  # it may delete and administer: no longer
        revoke_key(uri, headers, writer[0])
    return settings.save_api_key(issue_key(uri, headers, WRITER_SCOPES, "tomolive writer"))


def _known_key(path: Path, uri: str) -> tuple[str, frozenset[str]] | None:
    """The key in the file at ``path`` and its scopes, if the file exists and the server knows the key."""
    if not path.exists():
        return None
    key = path.read_text().strip()
    scopes = key_scopes(uri, key) if key else None
    return None if scopes is None else (key, scopes)


@contextmanager
def running_server(settings: Settings, log_path: Path | None = None, *, console: bool = False) -> Iterator[Settings]:
    """Run the Tiled server in a child process for the ``with`` block; yields settings with its keys.

    The data directory is made private first (:func:`~tomolive.server.modes.secure_data_dir`).
    Output goes to ``log_path`` (default ``DATA_DIR/tiled-server.log``, mode 600), or to this
    process's own stdout/stderr when ``console`` is true.
    """
    password = os.environ.get("TOMOLIVE_ADMIN_PASSWORD") or secrets.token_hex(32)
    secure_data_dir(settings.data_dir.absolute())
    command, env = server_command(settings, password)
    log_path = log_path or settings.data_dir.absolute() / "tiled-server.log"
    if console:
        process = subprocess.Popen(command, env=env)
    else:
        with os.fdopen(os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE), "ab") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            wait_until_up(settings.uri, process=process)
        except TomoliveError as err:
            raise TomoliveError(f"{err}; its log: {'above' if console else log_path}") from err
        yield server_keys(settings, password)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
