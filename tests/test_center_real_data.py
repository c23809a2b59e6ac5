"""Rotation-centre finding on real beamline scans from ../shared/data (skipped when absent).

tooth.h5 (APS micro-CT, tomopy's demo data, BSD-3): 181 projections over [0, 180) degrees,
2 rows x 640 px. Its upstream demos give a centre of about 295-296 px (Vo's method 295.0,
entropy search 296.3). tomolive measures 295.96 (registration, returned by "auto") and
295.08 (Vo); a ramp-filtered reconstruction of row 0 has the least negative mass and total
variation at 295.75-296.0.

Hard cases (issue 26): tooth.h5's angles already span only 179.0 degrees (181 steps of
180/181 degrees), so no projection has a 180-degree partner; cropping its columns to 220 px
makes the tooth wider than the field of view on both sides. Its reference centre is that of
the whole detector, 295.88 (a 0.1 px entropy scan of both rows, Hann filter; registration
295.96, least TV/negative mass 295.73-295.75), minus the crop's first column.

sarepy_sino360_neutron.tif (Vo's sarepy, Apache-2.0): one row, 459 angles over 0-360
degrees inclusive (first and last rows equal), 503 px, raw counts with stripe artefacts.
Reference centre 244.66: the median of the registrations of all 229 exact 180-degree
pairs (std 0.28 px); entropy scans give 244.5 (whole row) and 244.8 (cropped to 260 px).
Its first 229 angles span 179.2 degrees: again no partner.

k11_diad/k11-18014.nxs is not used here: its 22 x 26 px crop lies inside the sample (no
air on either side), so neither method's assumptions hold and no independent centre is
known to test against.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tomolive.preprocess import find_center
from tomolive.preprocess.center.common import check_center_inputs
from tomolive.preprocess.center.quality import quality_scan

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


TOOTH_REFERENCE = 295.88  # see the module docstring
NEUTRON_REFERENCE = 244.66


@pytest.fixture(scope="module")
def neutron(shared_data: Path) -> tuple[np.ndarray, np.ndarray]:
    tifffile = pytest.importorskip("tifffile")
    path = shared_data / "sarepy_sino360_neutron.tif"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    raw = tifffile.imread(path).astype(np.float32)
    air = raw[:, list(range(15)) + list(range(488, 503))].mean(axis=1, keepdims=True)  # open beam at both edges
    sino = -np.log(np.maximum(raw / air, 1e-3))
    return sino.astype(np.float32), np.linspace(0.0, 2.0 * np.pi, raw.shape[0])


@pytest.mark.parametrize(("first", "stop"), [(186, 406), (176, 416)])
def test_tooth_wider_than_the_field_of_view(tooth: tuple[np.ndarray, np.ndarray], first: int, stop: int) -> None:
    projections, theta = tooth
    crop = projections[:, :, first:stop]
    assert crop[:, :, 0].max() > 0.5 and crop[:, :, -1].max() > 0.5  # the tooth crosses both edges
    reference = TOOTH_REFERENCE - first
    result = find_center(crop, theta)  # registration trusted: 109.88 and 119.91 measured
    assert abs(result.center - reference) < 0.5, result
    assert result.confidence > 0.9
    refused = find_center(crop, theta, max_residual=1e-4)  # as if registration failed (issue 26)
    # measured: 109.61 and 119.70 (Vo alone 108.91 and 119.09: 0.97 and 0.79 px off)
    assert refused.method == "quality"
    assert abs(refused.center - reference) < 0.5, refused
    assert refused.confidence > 0.7  # measured 0.90, 0.91


def test_neutron_reference_is_independently_confirmed(neutron: tuple[np.ndarray, np.ndarray]) -> None:
    sino, theta = neutron
    assert sino.shape == (459, 503)
    # 0..360 inclusive: the last row repeats the first (to noise: max 0.17; 5 steps on, 1.43)
    assert np.abs(sino[0] - sino[-1]).max() < 0.25 < np.abs(sino[0] - sino[5]).max()
    data, angles = check_center_inputs(sino, theta)
    scan = quality_scan(data, angles, np.arange(242.0, 247.1, 0.25), [0])
    assert abs(scan.center - NEUTRON_REFERENCE) < 0.3  # measured 244.46
    assert abs(find_center(sino, theta).center - NEUTRON_REFERENCE) < 0.3  # registration, 244.84


@pytest.mark.parametrize(("first", "stop"), [(0, 503), (120, 380)])
def test_neutron_half_turn_without_partner(neutron: tuple[np.ndarray, np.ndarray], first: int, stop: int) -> None:
    sino, theta = neutron
    half = sino[:229, first:stop]  # 0 .. 179.2 degrees
    reference = NEUTRON_REFERENCE - first
    result = find_center(half, theta[:229])
    assert abs(result.center - reference) < 0.5, result  # registration: 244.84, 124.80
    refused = find_center(half, theta[:229], max_residual=1e-4)
    # measured: 244.57 and 124.34 (Vo alone 246.24 and 126.27: 1.6 px off)
    assert refused.method == "quality"
    assert abs(refused.center - reference) < 0.5, refused
