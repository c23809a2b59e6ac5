"""The simulator images a user's own attenuation volume or phantom object, end to end."""

from __future__ import annotations

import numpy as np
import pytest
from bluesky import RunEngine
from tiled.client import from_uri

from tomolive.errors import BadInputError
from tomolive.plans import tomo_scan
from tomolive.qc import circle_mask, psnr
from tomolive.sim import VolumePhantom, as_sample, make_sim_beamline
from tomolive.sim.phantoms import make_foam
from tomolive.techniques.tomo.params import PipelineParams


def _user_volume() -> np.ndarray:
    """A cylinder of 0.01/pixel holding a denser bar and an empty cube: 8 slices of 48 x 48."""
    y, x = np.mgrid[0:48, 0:48] - 23.5
    volume = np.repeat(np.where(x**2 + y**2 < 18**2, 0.01, 0.0).astype(np.float32)[None], 8, axis=0)
    volume[:, 10:16, 20:34] = 0.03
    volume[2:6, 28:36, 26:34] = 0.0
    return volume


def test_a_voxel_volume_projects_like_the_exact_phantom():
    foam = make_foam((8, 48, 48), seed=4)
    voxels = VolumePhantom(foam.attenuation())
    for theta in (0.0, 0.7, 2.0):
        exact, sampled = foam.project(theta), voxels.project(theta)
        assert np.abs(sampled - exact).mean() < 0.03 * exact.max()  # voxelised edges only


class MySample:
    """A user's phantom object: anything with a method returning its volume."""

    def attenuation(self) -> np.ndarray:
        return _user_volume()


def test_samples_are_arrays_objects_or_phantoms():
    foam = make_foam((8, 32, 32), seed=1)
    assert as_sample(foam) is foam
    assert as_sample(MySample()).shape == (8, 48, 48)
    assert as_sample(np.ones((2, 10, 6))).shape == (2, 10, 10)  # padded square: the detector's width


@pytest.mark.parametrize(
    ("volume", "match"),
    [
        (np.ones((16, 16)), "expected a 3D array"),
        (np.ones((2, 2, 8, 8)), "expected a 3D array"),
        (np.full((2, 8, 8), np.nan), "NaN or inf"),
        (-np.ones((2, 8, 8)), "negative"),
        (np.ones((2, 8, 8), dtype=complex), "real numbers"),
        ("foam", "expected a 3D"),
    ],
)
def test_unusable_volumes_are_named(volume, match):
    with pytest.raises(BadInputError, match=match):
        make_sim_beamline(volume)


def test_a_user_volume_end_to_end(tiled_server, pipeline):
    pipeline.params = PipelineParams(center=23.5, preview_rows=())
    b = make_sim_beamline(MySample(), photons=None, seed=2)
    RE = RunEngine()
    RE.subscribe(pipeline)
    plan = tomo_scan(
        b.detector,
        b.rotation,
        np.linspace(0, 180, 60, endpoint=False),
        2,
        2,
        shutter=b.shutter,
        sample_x=b.sample_x,
        sample_out=b.sample_out,
        md={"sample": "my-volume"},
    )
    (uid,) = RE(plan)
    outcome = pipeline.wait(uid, timeout=120)
    assert outcome.status == "complete", outcome.reason
    recon = from_uri(tiled_server.uri, api_key=tiled_server.api_key)["processed"][uid]["recon"].read()
    truth = _user_volume()
    disc = circle_mask(recon.shape[1:], 0.9)
    assert psnr(recon[:, disc], truth[:, disc]) > 25.0
