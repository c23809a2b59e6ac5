"""tomo_scan checks its arguments when it is made: a bad one is named before anything moves."""

from __future__ import annotations

import numpy as np
import pytest
from bluesky import RunEngine

from tomolive.errors import BadInputError
from tomolive.plans import tomo_scan
from tomolive.sim.devices import make_sim_beamline

GOOD = np.linspace(0, 180, 8, endpoint=False)


@pytest.fixture
def beamline():
    """A tiny sample (a user's volume: cheaper than a foam) on the simulated beamline."""
    volume = np.zeros((2, 16, 16), dtype=np.float32)
    volume[:, 6:10, 6:10] = 0.05
    return make_sim_beamline(volume, photons=None)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"angles": [0.0, 90.0]}, "angles must hold at least 4"),
        ({"angles": [0.0, 45.0, np.nan, 135.0]}, "angles must be finite"),
        ({"angles": np.linspace(0, 90, 10)}, "angles must cover 180 degrees"),
        ({"angles": np.deg2rad(GOOD)}, "are they in degrees"),
        ({"angles": [[0.0, 45.0], [90.0, 135.0]]}, "flat sequence"),
        ({"angles": ["a", "b", "c", "d"]}, "sequence of numbers"),
        ({"n_darks": -1}, "n_darks must be a whole number"),
        ({"n_flats": 2.5}, "n_flats must be a whole number"),
        ({"flats": "middle"}, "flats must be one of"),
        ({"pixel_size": -1.0}, "pixel_size must be a positive number"),
        ({"md": ["sample"]}, "md must be a mapping"),
        ({"shutter": None}, "needs a shutter"),
    ],
)
def test_bad_arguments_are_named_before_anything_moves(beamline, change, match):
    b = beamline
    b.rotation.set(12.0)
    b.sample_x.set(3.0)
    documents = []
    RE = RunEngine()
    RE.subscribe(lambda name, doc: documents.append(name))
    kwargs = {"n_darks": 2, "n_flats": 2, "shutter": b.shutter, "sample_x": b.sample_x, "sample_out": b.sample_out}
    kwargs.update(change)
    angles = kwargs.pop("angles", GOOD)
    with pytest.raises(BadInputError, match=match):
        RE(tomo_scan(b.detector, b.rotation, angles, **kwargs))
    assert documents == []  # no start document
    assert b.rotation.position == 12.0 and b.sample_x.position == 3.0 and b.shutter.get() == 1


def test_good_arguments_are_recorded_with_the_flats_mode(beamline):
    b = beamline
    starts = []
    RE = RunEngine()
    RE.subscribe(lambda name, doc: starts.append(doc) if name == "start" else None)
    RE(
        tomo_scan(
            b.detector,
            b.rotation,
            GOOD,
            1,
            1,
            flats="after",
            shutter=b.shutter,
            sample_x=b.sample_x,
            sample_out=b.sample_out,
        )
    )
    (start,) = starts
    assert start["plan_args"]["flats"] == "after" and start["tomo"]["flats"] == "after"
    assert start["tomo"]["angles"] == [float(a) for a in GOOD]
