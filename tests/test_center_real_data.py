"""Rotation-centre finding on real beamline scans from ../shared/data (skipped when absent).

tooth.h5 (APS micro-CT, tomopy's demo data, BSD-3): 181 projections over [0, 180) degrees,
2 rows x 640 px. Its upstream demos give a centre of about 295-296 px (Vo's method 295.0,
entropy search 296.3). tomolive measures 295.96 (registration, returned by "auto") and
295.08 (Vo); a ramp-filtered reconstruction of row 0 has the least negative mass and total
variation at 295.75-296.0.

k11_diad/k11-18014.nxs is not used here: its 22 x 26 px crop lies inside the sample (no
air on either side), so neither method's assumptions hold and no independent centre is
known to test against.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tomolive.preprocess import find_center

TOOTH_CENTER = 295.5  # "about 295-296 px" (data README); tolerance 1 px


@pytest.fixture(scope="module")
def tooth(shared_data: Path) -> tuple[np.ndarray, np.ndarray]:
    h5py = pytest.importorskip("h5py")
    path = shared_data / "tooth.h5"
    if not path.is_file():
        pytest.skip(f"{path} not found (set TOMOLIVE_SHARED_DATA to the shared data folder)")
    with h5py.File(path, "r") as f:
        data = f["/exchange/data"][()].astype(np.float32)
        flat = f["/exchange/data_white"][()].astype(np.float32).mean(axis=0)
        dark = f["/exchange/data_dark"][()].astype(np.float32).mean(axis=0)
        theta = np.deg2rad(f["/exchange/theta"][()])
    transmission = (data - dark) / np.maximum(flat - dark, 1e-6)
    return -np.log(np.maximum(transmission, 1e-6)), theta


@pytest.mark.parametrize("method", ["auto", "registration", "vo"])
def test_tooth_center_within_one_pixel(tooth: tuple[np.ndarray, np.ndarray], method: str) -> None:
    projections, theta = tooth
    assert projections.shape == (181, 2, 640)
    result = find_center(projections, theta, method)
    # measured: auto/registration 295.96, vo 295.08
    assert abs(result.center - TOOTH_CENTER) <= 1.0, result
    assert result.confidence > 0.5


def test_tooth_center_consistent_across_rows(tooth: tuple[np.ndarray, np.ndarray]) -> None:
    projections, theta = tooth
    rows = [find_center(projections[:, r, :], theta, "registration").center for r in range(2)]
    assert abs(rows[0] - rows[1]) < 0.1  # measured 295.96 and 295.97
    vo_rows = [find_center(projections[:, r, :], theta, "vo").center for r in range(2)]
    assert abs(vo_rows[0] - vo_rows[1]) < 0.25  # measured 295.06 and 295.09
