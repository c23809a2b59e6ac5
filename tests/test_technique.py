"""A second technique on real parts: the toy 'sum' technique beside tomography, one RunEngine, one Tiled.

It is built only on the Technique interface (tests/toy_technique.py); nothing in the engine
knows it. Both techniques' runs go through the same TomoPipeline and Engine.
"""

from __future__ import annotations

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky import RunEngine
from ophyd.sim import DirectImage
from tiled.client import from_uri

from tomolive.callbacks import TomoPipeline
from tomolive.techniques import TomoTechnique

from .toy_technique import SumTechnique


def test_a_toy_technique_runs_beside_tomography_without_engine_changes(
    tiled_server, dask_client, tmp_path, beamline, scan_plan
):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 100, (8, 12)).astype(np.float64) for _ in range(5)]
    camera = DirectImage(name="cam")
    pipe = TomoPipeline.from_uri(
        tiled_server.uri,
        api_key=tiled_server.api_key,
        techniques=[SumTechnique(), TomoTechnique()],
        dask=dask_client,
        scratch_dir=tmp_path,
        progress=False,
    )
    with pipe:
        RE = RunEngine({})
        RE.subscribe(pipe)

        @bpp.run_decorator(md={"sum_image": "cam_img", "sample": "toy sum"})
        def summed():
            for frame in frames:
                yield from bps.abs_set(camera.img, frame, wait=True)
                yield from bps.trigger_and_read([camera])

        (toy_uid,) = RE(summed())
        toy = pipe.wait(toy_uid, timeout=60)
        (tomo_uid,) = RE(scan_plan(beamline, n_angles=24))
        tomo = pipe.wait(tomo_uid, timeout=180)
    assert toy.status == "complete" and tomo.status == "complete"
    processed = from_uri(tiled_server.uri, api_key=tiled_server.api_key)["processed"]
    node = processed[toy_uid]
    np.testing.assert_allclose(node["sum"].read()[0], np.sum(frames, axis=0))
    assert node.metadata["n_frames"] == 5 and node.metadata["stages"] == ["sum"]
    assert node.metadata["provenance"]["parameters"]["technique"] == "sum"
    assert (
        "recon" in processed[tomo_uid]
        and processed[tomo_uid].metadata["provenance"]["parameters"]["technique"] == "tomo"
    )
