"""Flats before, after or at both ends of a scan: a drifting beam, through RunEngine, TomoPipeline and Tiled."""

from __future__ import annotations

import numpy as np
import pytest
from bluesky import RunEngine
from tiled.client import from_uri

from tomolive.errors import BadInputError, MissingDataError
from tomolive.plans import tomo_scan
from tomolive.preprocess import normalize
from tomolive.qc import circle_mask, psnr
from tomolive.recon import reconstruct
from tomolive.sim.devices import make_sim_beamline
from tomolive.sim.phantoms import make_foam
from tomolive.techniques.tomo.flats import CalibrationSet, FlatField, time_weights
from tomolive.techniques.tomo.params import PipelineParams

N_ANGLES = 60
DRIFT = 0.002
"""Beam tilt per frame: by the last projection the beam is ~13 % brighter on one side than
at the flats before the scan, and ~13 % at the flats after it."""


def _calibration(flat: float, dark: float = 10.0) -> CalibrationSet:
    s = CalibrationSet({"dark": [np.full((2, 3), dark)], "flat": [np.full((2, 3), flat)]})
    s.reduce("median", "test")
    return s


def test_two_sets_are_interpolated_by_index_or_time():
    field = FlatField(_calibration(100.0), _calibration(200.0), 5)
    assert field.basis == "index" and field.interpolated
    assert [float(field.for_projection(i)[0][0, 0]) for i in range(5)] == [100.0, 125.0, 150.0, 175.0, 200.0]
    weights = time_weights([1.0, 2.0, 9.0], [0.0, 0.0], [10.0], 3)
    np.testing.assert_allclose(weights, [0.1, 0.2, 0.9])
    timed = FlatField(_calibration(100.0), _calibration(200.0), 3, weights)
    assert timed.basis == "time" and float(timed.for_projection(2)[0][0, 0]) == pytest.approx(190.0)
    assert time_weights([1.0], [5.0], [2.0], 1) is None  # flats after taken "before": by index instead
    one = FlatField(_calibration(100.0), CalibrationSet.empty(), 4)
    assert not one.interpolated and float(one.for_projection(3)[0][0, 0]) == 100.0


def test_no_flats_at_either_end_is_named():
    with pytest.raises(MissingDataError, match="no flat frames arrived, before or after"):
        FlatField(CalibrationSet.empty(), CalibrationSet.empty(), 4)


def _sim_frames(drift: float) -> tuple[dict[str, CalibrationSet], np.ndarray]:
    """Darks and flats, projections, darks and flats, as ``tomo_scan(flats="both")`` takes them."""
    b = make_sim_beamline(make_foam((8, 64, 64), seed=5), photons=None, seed=5, beam_drift=drift)
    b.detector.stage()

    def take(n: int, shutter: int = 1, x: float = 0.0) -> list[np.ndarray]:
        b.shutter.put(shutter)
        b.sample_x.set(x)
        return [b.detector.trigger() and b.detector.image.get().copy() for _ in range(n)]

    def calibration() -> CalibrationSet:
        s = CalibrationSet({"dark": take(2, shutter=0), "flat": take(3, x=b.sample_out)})
        s.reduce("median", "test")
        return s

    before = calibration()
    projections = []
    for angle in np.linspace(0, 180, N_ANGLES, endpoint=False):
        b.rotation.set(angle)
        projections += take(1)
    return {"before": before, "after": calibration()}, np.stack(projections)


def _reconstruct(projections: np.ndarray, field: FlatField) -> np.ndarray:
    lines = np.stack([normalize(p, *field.for_projection(i)) for i, p in enumerate(projections)])
    return reconstruct(lines, np.deg2rad(np.linspace(0, 180, N_ANGLES, endpoint=False)), center=31.5)


def test_flats_at_both_ends_follow_a_drifting_beam():
    """A beam whose tilt grows through the scan: either set alone leaves the drift of half the
    scan or more in the projections; interpolating between them follows it."""
    steady_sets, steady = _sim_frames(0.0)
    reference = _reconstruct(steady, FlatField(steady_sets["before"], CalibrationSet.empty(), N_ANGLES))
    sets, drifting = _sim_frames(DRIFT)
    empty = CalibrationSet.empty()
    fields = {
        "before": FlatField(sets["before"], empty, N_ANGLES),
        "after": FlatField(empty, sets["after"], N_ANGLES),
        "both": FlatField(sets["before"], sets["after"], N_ANGLES),
    }
    disc = circle_mask(reference.shape[1:], 0.95)
    scores = {k: psnr(_reconstruct(drifting, f)[:, disc], reference[:, disc]) for k, f in fields.items()}
    assert scores["both"] > scores["before"] + 10.0, scores
    assert scores["both"] > scores["after"] + 10.0, scores


def _scan(pipeline, flats: str, drift: float = 0.0) -> tuple[str, np.ndarray]:
    phantom = make_foam((8, 64, 64), seed=5)
    b = make_sim_beamline(phantom, photons=None, seed=5, beam_drift=drift)
    plan = tomo_scan(
        b.detector,
        b.rotation,
        np.linspace(0, 180, N_ANGLES, endpoint=False),
        2,
        3,
        flats=flats,
        shutter=b.shutter,
        sample_x=b.sample_x,
        sample_out=b.sample_out,
        md={"sample": f"flats-{flats}"},
    )
    RE = RunEngine()
    RE.subscribe(pipeline)
    (uid,) = RE(plan)
    return uid, phantom.attenuation()


def _result(tiled_server, uid: str):
    return from_uri(tiled_server.uri, api_key=tiled_server.api_key)["processed"][uid]


@pytest.mark.parametrize("flats", ["after", "both"])
def test_flats_after_or_both_end_to_end(tiled_server, pipeline, flats):
    """RunEngine -> TomoPipeline -> Tiled; the preview waits for flats when none came first."""
    # Stripe removal off: on a clean 64-px foam it costs ~3.5 dB (docs/measurements/rings.md); this is about flats.
    pipeline.params = PipelineParams(center=31.5, preview_interval_s=0.05, stripe_method="none")
    uid, truth = _scan(pipeline, flats, drift=DRIFT if flats == "both" else 0.0)
    outcome = pipeline.wait(uid, timeout=120)
    assert outcome.status == "complete", outcome.reason
    result = _result(tiled_server, uid)
    md = result.metadata
    assert md["tomo"]["flats"] == flats
    inputs = md["provenance"]["inputs"]
    assert inputs["flats"]["interpolation"] == ("time" if flats == "both" else "one set")
    assert inputs["n_flats"] == (6 if flats == "both" else 3)
    recon = result["recon"].read()
    disc = circle_mask(recon.shape[1:], 0.95)
    assert psnr(recon[:, disc], truth[:, disc]) > 22.0  # the floor of a correct 64-px scan (~23.5 dB)
    if flats == "after":  # no flats came first: no live preview, and the container says why
        assert "flats arrived after the projections" in md["preview_status"]
        assert "preview" not in result
    else:  # the flats before drive the live preview
        assert "preview_status" not in md and "preview" in result


def test_late_flats_are_refused_when_flats_were_declared_before(tiled_server, pipeline):
    """A scan that declared its flats before the projections gets no silent second set."""
    b = make_sim_beamline(make_foam((8, 64, 64), seed=5), photons=None, seed=5)
    plan = tomo_scan(
        b.detector,
        b.rotation,
        np.linspace(0, 180, 8, endpoint=False),
        1,
        1,
        flats="both",
        shutter=b.shutter,
        sample_x=b.sample_x,
        sample_out=b.sample_out,
    )

    def declared_before(name, doc):  # a plan that takes flats at both ends but declares "before"
        pipeline(name, {**doc, "tomo": {**doc["tomo"], "flats": "before"}} if name == "start" else doc)

    RE = RunEngine()
    RE.subscribe(declared_before)
    (uid,) = RE(plan)
    outcome = pipeline.wait(uid, timeout=60)
    assert outcome.status == "failed" and "flats='after' or 'both'" in outcome.reason


def test_plan_refuses_an_unknown_flats_mode(beamline):
    b = beamline
    with pytest.raises(BadInputError, match="flats must be one of"):
        tomo_scan(b.detector, b.rotation, [0, 45, 90, 135], flats="middle", shutter=b.shutter)
