"""Scans whose detector writes HDF5 (Resource/Datum or StreamResource/StreamDatum) give the
same volume as the same scan with images inline in the events."""

from __future__ import annotations

import numpy as np
import pytest

from tomolive.sim.devices import make_sim_beamline
from tomolive.sim.phantoms import make_foam
from tomolive.store import connect

from .conftest import SAME_VOLUME


def _volume(tiled_server, pipeline, run_scan, **beamline_options) -> np.ndarray:
    beamline = make_sim_beamline(make_foam((16, 96, 96), seed=11), photons=2000, seed=3, **beamline_options)
    uid = run_scan(beamline, n_angles=60)
    outcome = pipeline.wait(uid, timeout=300)
    assert outcome.status == "complete", outcome.reason
    return connect(tiled_server.uri, api_key=tiled_server.api_key)["processed"][uid]["recon"].read()


@pytest.fixture(scope="module")
def inline_volume():
    return {}


@pytest.mark.parametrize("assets", ["resource", "stream"])
def test_external_assets_reconstruct_like_inline_images(
    assets, tiled_server, pipeline, run_scan, tmp_path, inline_volume
):
    if "volume" not in inline_volume:
        inline_volume["volume"] = _volume(tiled_server, pipeline, run_scan)
    inline = inline_volume["volume"]
    external = _volume(tiled_server, pipeline, run_scan, assets=assets, asset_dir=tmp_path / "det")
    assert list((tmp_path / "det").glob("*.h5"))  # the frames really came from files
    np.testing.assert_allclose(external, inline, rtol=0, atol=SAME_VOLUME * np.ptp(inline))
