"""The data directory is its owner's alone: fixed at every server start, whatever it was before.

``DATA_DIR`` becomes 700, each file directly in it (``catalog.db``, ``auth.db``, the key files,
the DuckDB tables, the server log, SQLite's journals) 600 and each directory in it (``zarr/``)
700. Deeper entries are not walked: a directory of mode 700 already keeps other users out
of everything below it, and the server process creates new files 600 and directories 700
(umask 077, :mod:`tomolive.server.tiled_serve`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

DIRECTORY_MODE = 0o700
FILE_MODE = 0o600
SERVER_UMASK = 0o077


def mode_of(path: Path) -> int:
    """The permission bits of ``path`` (e.g. ``0o600``)."""
    return stat.S_IMODE(path.stat().st_mode)


def secure_data_dir(data_dir: Path) -> dict[str, int]:
    """Create ``data_dir`` and ``data_dir/zarr`` if missing and make both, and everything directly
    in ``data_dir``, private to their owner; return each entry's mode afterwards, by name.

    Symbolic links are left alone (their mode is their target's business).
    """
    data_dir.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
    (data_dir / "zarr").mkdir(mode=DIRECTORY_MODE, exist_ok=True)
    os.chmod(data_dir, DIRECTORY_MODE)
    modes = {".": mode_of(data_dir)}
    for entry in os.scandir(data_dir):
        if entry.is_symlink():
            continue
        os.chmod(entry.path, DIRECTORY_MODE if entry.is_dir() else FILE_MODE)
        modes[entry.name] = mode_of(Path(entry.path))
    return modes
