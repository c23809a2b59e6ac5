"""Bad ptychography input through RunEngine -> TomoPipeline -> Tiled: a clear error naming it, and a `failed` record.

Each run is a real Bluesky run (a detector whose images the test sets, two scan stages) with
a ``ptycho`` block as ``ptycho_scan`` writes it; one input is spoiled.
"""

from __future__ import annotations

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
import pytest
from bluesky import RunEngine
from ophyd.sim import DirectImage, SynAxis
from tiled.client import from_uri

from tomolive.techniques.ptycho import physics

from . import ptycho_sim

N_PATTERNS = 12


def _block(line) -> dict:
    return {
        "image_field": "cam_img",
        "y_field": "bad_y",
        "x_field": "bad_x",
        "energy_kev": line.energy_kev,
        "detector_distance_m": line.detector_distance_m,
        "detector_pixel_um": line.detector_pixel_um,
        "pattern_shape": [ptycho_sim.N, ptycho_sim.N],
        "object_shape": list(ptycho_sim.OBJECT),
        "probe": dict(ptycho_sim.GUESS),
    }


def _spoiled(kind: str, line) -> tuple[dict, list[np.ndarray], np.ndarray]:
    """The ptycho block, patterns and stage positions (um) of a short scan with one ``kind`` of fault."""
    positions_px = physics.fermat_positions(N_PATTERNS, 5.5)
    patterns = list(physics.far_field(ptycho_sim.true_object(), line.detector.probe, positions_px + 48.0))
    block = _block(line)
    if kind == "empty":
        patterns[4] = np.zeros((0, 0), np.float32)
    elif kind == "shape":
        patterns[5] = patterns[5][:, :30]
    elif kind == "zero":
        patterns[3] = np.zeros_like(patterns[3])  # shutter closed
    elif kind == "negative":
        patterns[2] = patterns[2] - 2.0 * patterns[2].max()
    elif kind == "nan":
        patterns[6] = patterns[6].copy()
        patterns[6][3, 3] = np.nan
    elif kind == "outside":
        positions_px[7] = (45.0, 0.0)  # the stage read back a centre 45 px from the middle: off the 96 px grid
    elif kind == "no probe":
        del block["probe"]
    return block, patterns, positions_px * line.pixel_um


CASES = {
    "empty": "pattern 4 has shape (0, 0); expected a 2-D 32x32 diffraction pattern",
    "shape": "pattern 5 has shape (32, 30) but the ptycho block's pattern_shape",
    "zero": "pattern 3 is all zero; expected diffraction counts",
    "negative": "pattern 2 holds negative intensities",
    "nan": "pattern 6 holds 1 NaN or infinite pixels",
    "outside": "the position of pattern 7: 1 of 1 probe positions put the 32x32 probe outside the 96x96 object grid",
    "no probe": "the start document's 'ptycho' block has no 'probe'",
}


@pytest.mark.parametrize("kind", list(CASES))
def test_bad_input_fails_the_run_naming_it(kind, pipeline, tiled_server):
    line = ptycho_sim.beamline()
    block, patterns, positions_um = _spoiled(kind, line)
    camera = DirectImage(name="cam")
    y, x = SynAxis(name="bad_y"), SynAxis(name="bad_x")

    @bpp.run_decorator(md={"ptycho": block, "sample": f"bad {kind}"})
    def plan():
        for pattern, (py, px) in zip(patterns, positions_um):
            camera.img.put(pattern)  # not set(): it waits for the value to read back equal, which NaN never does
            yield from bps.mv(y, py, x, px)
            yield from bps.trigger_and_read([camera, y, x])

    RE = RunEngine()
    RE.subscribe(pipeline)
    (uid,) = RE(plan())
    outcome = pipeline.wait(uid, timeout=60)
    assert outcome.status == "failed"
    assert CASES[kind] in outcome.reason
    node = from_uri(tiled_server.uri, api_key=tiled_server.api_key)["processed"][uid]
    assert node.metadata["status"] == "failed" and CASES[kind] in node.metadata["reason"]
    assert not {"object_phase", "object_amplitude"} & set(node)
