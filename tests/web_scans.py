"""A thin foam scan processed from a DXchange file with ``tomolive process``: what the web tests look at."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tomolive.config import Settings
from tomolive.sim.phantoms import make_foam

THIN_ROWS = (3, 5)  # two detector rows of an 8-slice foam: a 2-slice volume
FILE_ANGLES = np.linspace(0.0, 180.0, 90, endpoint=False)


def process_thin_file(server: Settings, scheduler: str, folder: Path) -> str:
    """Write the thin scan, process it through the CLI into ``server``; the processed uid."""
    from tomolive.cli import main
    from tomolive.io.offline import open_source
    from tomolive.io.writers import write_dxchange

    from .test_replay import _counts

    counts = _counts(make_foam((8, 64, 64), seed=3), FILE_ANGLES)
    frames = {kind: stack[:, slice(*THIN_ROWS)] for kind, stack in counts.items()}
    path = write_dxchange(folder / "thin.h5", **frames, angles_deg=FILE_ANGLES)
    argv = ["process", str(path), "--uri", server.uri, "--api-key", server.api_key or ""]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TOMOLIVE_OUTBOX", str(folder / "outbox"))
        assert main([*argv, "--dask", scheduler, "--sample", "thin-file"]) == 0
    scan, uid = open_source(str(path))  # the uid a file's result is filed under
    scan.close()
    return uid
