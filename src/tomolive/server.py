"""Start the embedded Tiled server (SQLite catalog + Zarr storage) from ``tiled_config/``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path

import httpx

from .config import Settings
from .errors import TomoliveError

CONFIG_NAME = "sqlite.yml"


def config_path(name: str = CONFIG_NAME) -> Path:
    """Path of a Tiled config shipped in ``tomolive.tiled_config``."""
    return Path(str(files("tomolive.tiled_config") / name))


def server_command(settings: Settings) -> tuple[list[str], dict[str, str]]:
    """The ``tiled serve config`` command line and environment for ``settings``.

    ``settings`` must carry an API key (see :meth:`Settings.with_api_key`).
    """
    data_dir = settings.data_dir.absolute()
    (data_dir / "zarr").mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "TOMOLIVE_DATA_DIR": str(data_dir),
        "TILED_SINGLE_USER_API_KEY": settings.api_key or "",
    }
    command = [
        sys.executable, "-m", "tiled", "serve", "config", str(config_path()),
        "--host", settings.host, "--port", str(settings.port),
    ]  # fmt: skip
    if settings.public:
        command.append("--public")
    return command, env


def wait_until_up(uri: str, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    """Poll the server's API root until it answers, the process dies, or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise TomoliveError(f"Tiled server exited with code {process.returncode} while starting")
        try:
            if httpx.get(f"{uri}/api/v1/", timeout=2.0).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TomoliveError(f"Tiled server at {uri} did not answer within {timeout:.0f} s")


@contextmanager
def running_server(settings: Settings, log_path: Path | None = None) -> Iterator[Settings]:
    """Run the embedded server in a child process for the duration of the ``with`` block."""
    settings, _ = settings.with_api_key()
    command, env = server_command(settings)
    log_path = log_path or settings.data_dir.absolute() / "tiled-server.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_up(settings.uri, process=process)
        yield settings
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
