"""ptycho_scan and ptycho_tomo_scan: valid documents, the ptycho block, positions read back, refusals before moving."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from bluesky import RunEngine
from event_model import DocumentNames, schema_validators

from tomolive.errors import BadInputError
from tomolive.plans import ptycho_tomo_scan
from tomolive.techniques.ptycho import physics
from tomolive.techniques.ptycho.geometry import check_block

from . import ptycho_sim


def _run(plan) -> list[tuple[str, dict]]:
    RE = RunEngine()
    documents: list[tuple[str, dict]] = []

    def validate(name: str, doc: dict) -> None:
        schema_validators[DocumentNames[name]].validate(doc)
        documents.append((name, doc))

    RE.subscribe(validate)
    RE(plan)
    return documents


def test_ptycho_scan_documents_are_valid_and_carry_the_geometry():
    line = ptycho_sim.beamline()
    documents = _run(ptycho_sim.scan(line, n_positions=40))
    names = Counter(name for name, _ in documents)
    assert names["start"] == names["stop"] == names["descriptor"] == 1 and names["event"] == 40
    start = documents[0][1]
    setup = check_block(start["ptycho"])
    assert start["plan_name"] == "ptycho_scan" and start["sample"] == "camera-moon"
    assert setup.pattern_n == ptycho_sim.N and setup.object_shape == ptycho_sim.OBJECT
    assert start["ptycho"]["probe"] == ptycho_sim.GUESS and start["ptycho"]["n_positions"] == 40
    assert start["pixel_size_um"] == pytest.approx(line.pixel_um)
    events = [doc for name, doc in documents if name == "event"]
    readback = np.array([[e["data"][setup.y_field], e["data"][setup.x_field]] for e in events])
    expected = physics.fermat_positions(40, 5.5) * line.pixel_um
    np.testing.assert_allclose(readback, expected, atol=1e-9)
    pattern = np.asarray(events[7]["data"][setup.image_field])
    assert pattern.shape == (ptycho_sim.N, ptycho_sim.N) and pattern.dtype == np.float32 and pattern.sum() > 0
    assert documents[-1][1]["exit_status"] == "success"


def test_ptycho_tomo_scan_reads_the_rotation_in_every_event():
    line = ptycho_sim.beamline()
    kwargs = ptycho_sim.scan_kwargs(line, n_positions=10)
    documents = _run(ptycho_tomo_scan(line.detector, line.y, line.x, line.rotation, [0.0, 60.0, 120.0], **kwargs))
    start = documents[0][1]
    block = start["ptycho"]
    assert block["n_views"] == 3 and block["angles_deg"] == [0.0, 60.0, 120.0] and block["angle_field"]
    angles = [doc["data"][block["angle_field"]] for name, doc in documents if name == "event"]
    assert angles == [0.0] * 10 + [60.0] * 10 + [120.0] * 10


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"probe": None}, "no 'probe'"),
        ({"probe": {"kind": "laser", "aperture_px": 16}}, "ptycho.probe must be"),
        ({"object_shape": (64, 64)}, "outside the 64x64 object grid"),
        ({"step_um": -1.0}, "step_um must be a positive"),
        ({"energy_kev": 0}, "energy_kev must be a positive number"),
        ({"pattern": "spiral"}, "pattern must be one of"),
    ],
)
def test_the_plan_refuses_bad_input_before_anything_moves(change, named):
    line = ptycho_sim.beamline()
    plan = ptycho_sim.scan(line, **change)
    with pytest.raises(BadInputError, match=named):
        next(plan)  # the first message would be the stage; nothing was yielded
    assert line.y.position == 0 and line.x.position == 0
