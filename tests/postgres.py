"""A throwaway PostgreSQL server on 127.0.0.1 from Debian's ``postgresql`` package, for tests.

PostgreSQL refuses to run as root, so under root the server runs as the ``postgres`` system
user (created if missing) in a directory it owns. Clients connect over TCP with a password.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SERVER_USER = "postgres"
ROLE = "tomolive"
PASSWORD = "tomolive-test-password"


def find_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding ``initdb``, or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else None


def _as_server_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", SERVER_USER], check=True)
    return ["runuser", "-u", SERVER_USER, "--"]


@dataclass(frozen=True)
class PostgresServer:
    bin_dir: Path
    port: int

    def uri(self, database: str) -> str:
        return f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def psql(self, database: str, sql: str) -> str:
        """Run ``sql`` in ``database``; return unaligned, tuples-only output."""
        return subprocess.run(
            [str(self.bin_dir / "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql, self.uri(database)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    def create_database(self, name: str) -> str:
        self.psql("postgres", f'CREATE DATABASE "{name}"')
        return self.uri(name)


@contextmanager
def running_postgres(bin_dir: Path, port: int) -> Iterator[PostgresServer]:
    """initdb into a fresh directory, start the server on ``port``, stop and delete it afterwards."""
    runner = _as_server_user()
    root = Path(tempfile.mkdtemp(prefix="tomolive-pg-"))  # /tmp, reachable by the server user
    data, pwfile = root / "data", root / "pwfile"
    pwfile.write_text(PASSWORD + "\n")
    if runner:
        shutil.chown(root, SERVER_USER, SERVER_USER)
        shutil.chown(pwfile, SERVER_USER, SERVER_USER)

    def run(*args: str) -> None:
        done = subprocess.run([*runner, *args], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}): {done.stderr or done.stdout}")

    try:
        run(
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            ROLE,
            f"--pwfile={pwfile}",
            "--auth-local=scram-sha-256",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
        )
        options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={root}"
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-o", options, "-w", "start")
        try:
            yield PostgresServer(bin_dir, port)
        finally:
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)
