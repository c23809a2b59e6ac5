"""Ptychography end to end: ptycho_scan -> RunEngine -> TomoPipeline -> Dask -> Tiled, against the true object.

One plain scan (96^2 object, 32^2 zone-plate probe guessed as a bare aperture, 100 Fermat
positions, 1e6 photons per pattern) with its live preview checked in Tiled while the scan
is still running; one small rotation series (3 views of a foam phantom's projections), whose
per-view objects and angles are left for the 3D step.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from bluesky import RunEngine
from tiled.client import from_uri

from tomolive.callbacks import TomoPipeline
from tomolive.plans import ptycho_tomo_scan
from tomolive.sim.phantoms import make_foam
from tomolive.sim.ptycho_devices import ComplexSample, make_sim_ptycho
from tomolive.sim.ptycho_tomo import phase_foam
from tomolive.stages import StageContext
from tomolive.techniques import PtychoTechnique, TomoTechnique
from tomolive.techniques.ptycho import metrics, physics
from tomolive.techniques.ptycho.params import PtychoParams
from tomolive.techniques.ptycho.ptychi_backend import unavailable as ptychi_unavailable
from tomolive.techniques.ptycho.tomo3d import assemble_phase_volume, register_volume

from . import ptycho_sim

PHASE_NRMSE_FLOOR = 0.04
"""Phase NRMSE (offset and ramp removed, scanned area, over the true phase range) a scan must reach;
measured 0.025 here with 40 ePIE epochs (the issue's 256^2 benchmark asks <= 0.03)."""


def scanned_phase_nrmse(node) -> float:
    """Phase NRMSE of a plain scan's result in Tiled against the true object, inside the scanned area."""
    obj = node["object_amplitude"].read() * np.exp(1j * node["object_phase"].read())
    mask = metrics.scanned_mask(ptycho_sim.OBJECT, node["positions"].read(), 32)
    return metrics.phase_nrmse(obj, ptycho_sim.true_object(), mask)


@pytest.fixture
def ptycho_pipeline(tiled_server, dask_client, tmp_path):
    def make(params: PtychoParams, technique=PtychoTechnique) -> TomoPipeline:
        return TomoPipeline.from_uri(
            tiled_server.uri,
            api_key=tiled_server.api_key,
            techniques=[TomoTechnique(), technique(params)],
            dask=dask_client,
            scratch_dir=tmp_path,
            outbox_dir=tmp_path / "outbox",
            progress=False,
        )

    return make


def test_a_scan_reaches_the_phase_floor_with_a_live_preview(ptycho_pipeline, tiled_server):
    line = ptycho_sim.beamline()
    client = from_uri(tiled_server.uri, api_key=tiled_server.api_key)
    seen_live: dict = {}

    def exposure_and_look(name: str, doc: dict) -> None:
        """Each pattern takes 10 ms (a detector exposure); from the 50th on, read the preview from
        Tiled once it is there, and hold the last pattern (a slow exposure) up to 30 s for it."""
        if name == "event":
            time.sleep(0.01)
            if doc["seq_num"] >= 50 and not seen_live:
                node = client["processed"][doc_uid[0]]
                deadline = time.monotonic() + (30.0 if doc["seq_num"] == 100 else 0.0)
                while "preview" not in node.metadata and time.monotonic() < deadline:
                    time.sleep(0.2)
                    node.refresh()
                if "preview" in node.metadata:
                    seen_live.update(preview=dict(node.metadata["preview"]), image=node["preview_phase"].read())
        elif name == "start":
            doc_uid[0] = doc["uid"]

    doc_uid = [""]
    with ptycho_pipeline(PtychoParams(epochs=30, preview_interval_s=1.0)) as pipe:
        RE = RunEngine()
        RE.subscribe(pipe)
        RE.subscribe(exposure_and_look)
        (uid,) = RE(ptycho_sim.scan(line))
        outcome = pipe.wait(uid, timeout=120)
    assert outcome.status == "complete", outcome.reason
    # the preview was in Tiled during the scan, from the patterns so far
    live = seen_live["preview"]
    assert (
        8 <= live["n_patterns"] <= 100
        and live["interval_s"] == 1.0
        and live["keys"] == ["preview_phase", "preview_amplitude"]
    )
    assert seen_live["image"].shape == ptycho_sim.OBJECT and np.isfinite(seen_live["image"]).all()
    assert seen_live["image"].std() > 0.01

    node = client["processed"][uid]
    md = node.metadata
    stages = ["check", "preview", "ptycho", "qc", "ptycho_tomo", "surrogate"]
    assert md["status"] == "complete" and md["stages"] == stages
    assert md["ptycho_tomo"] == {"skipped": "a single view: no rotation series"}
    assert md["surrogate"]["skipped"].startswith("1 view(s): surrogate='auto' trains on rotation series of >= 3")
    assert md["preview"]["source"].startswith("iterative: 2 epie sweeps per update (")
    assert md["provenance"]["parameters"]["technique"] == "ptycho"
    assert md["provenance"]["parameters"]["pipeline"]["epochs"] == 30
    assert set(md["provenance"]["seconds_per_stage"]) == {"ptycho", "qc"}  # each stage timed
    assert node["probe_amplitude"].shape == (1, 32, 32) and node["probe_phase"].shape == (1, 32, 32)
    assert node["positions"].shape == (100, 2) and node["loss"].shape == (30,)
    amplitude = node["object_amplitude"].read()
    phase = node["object_phase"].read()
    truth = ptycho_sim.true_object()
    positions = node["positions"].read()
    mask = metrics.scanned_mask(ptycho_sim.OBJECT, positions, 32)
    nrmse = metrics.phase_nrmse(amplitude * np.exp(1j * phase), truth, mask)
    assert nrmse <= PHASE_NRMSE_FLOOR
    # the positions read back from the stages, in object pixels
    np.testing.assert_allclose(positions, physics.fermat_positions(100, 5.5) + 48.0, atol=1e-6)
    qc = md["qc"]
    assert qc["alerts"] == [] and qc["data_error"] <= PtychoParams().max_data_error
    assert 0.6 < qc["probe_overlap"] < 0.8 and qc["phase_removed"]["ramp_rad_across_scan"] < np.pi
    assert md["ptycho_recon"]["n_views"] == 1 and md["ptycho_recon"]["seconds_per_epoch"] > 0


class _KeepResults:
    """A stage after ptycho's: keeps what the 3D step reads from ``ctx.results``."""

    name = "keep"
    kept: dict = {}

    def run(self, ctx: StageContext) -> None:
        _KeepResults.kept = {"objects": ctx.results["objects"], "angles": ctx.results["angles"]}


class _KeepingTechnique(PtychoTechnique):
    def stages(self):
        return [*super().stages(), _KeepResults()]


def test_a_rotation_series_gives_one_object_per_view(ptycho_pipeline, tiled_server):
    phantom = make_foam((40, 48, 48), seed=5)
    sample = ComplexSample.from_phantom(phantom, phase_range_rad=1.0)
    probe = physics.make_probe(16, aperture_px=8, defocus_phase_rad=1.0, kind="zone_plate")
    line = make_sim_ptycho(sample, probe, photons_per_pattern=1e6, seed=2)
    angles = [0.0, 60.0, 120.0]
    kwargs = ptycho_sim.scan_kwargs(
        line,
        object_shape=(40, 48),
        probe={"kind": "aperture", "aperture_px": 8.0},
        n_positions=60,
        step_um=2.5 * line.pixel_um,
    )
    with ptycho_pipeline(PtychoParams(epochs=30), technique=_KeepingTechnique) as pipe:
        RE = RunEngine()
        RE.subscribe(pipe)
        (uid,) = RE(ptycho_tomo_scan(line.detector, line.y, line.x, line.rotation, angles, **kwargs))
        outcome = pipe.wait(uid, timeout=120)
    assert outcome.status == "complete", outcome.reason
    node = from_uri(tiled_server.uri, api_key=tiled_server.api_key)["processed"][uid]
    assert node["object_phase"].shape == (3, 40, 48) and node["positions"].shape == (3, 60, 2)
    assert node["probe_amplitude"].shape == (3, 1, 16, 16) and node["loss"].shape == (3, 30)
    assert node.metadata["ptycho_recon"]["n_views"] == 3 and len(node.metadata["qc"]["per_view"]) == 3
    objects, kept_angles = _KeepResults.kept["objects"], _KeepResults.kept["angles"]
    assert kept_angles == angles and all(o.dtype == np.complex64 and o.shape == (40, 48) for o in objects)
    positions = node["positions"].read()
    for obj, angle, pos in zip(objects, angles, positions):
        mask = metrics.scanned_mask((40, 48), pos, 16)
        assert metrics.phase_nrmse(obj, sample.at(angle), mask) <= 0.06


def test_a_raster_rotation_series_becomes_a_phase_volume_in_tiled(ptycho_pipeline, tiled_server):
    """RunEngine -> views -> 3D: the volume matches the foam about as well as exact views would."""
    phantom, pad = phase_foam(24, seed=3), 8
    inner = ComplexSample.from_phantom(phantom, phase_range_rad=1.5)
    side = 24 + 2 * pad
    sample = ComplexSample(lambda angle: np.pad(inner.at(angle), pad, constant_values=1.0), (side, side))
    line = make_sim_ptycho(sample, physics.make_probe(16, aperture_px=8, defocus_phase_rad=1.0), seed=4)
    angles = list(np.linspace(0.0, 180.0, 8, endpoint=False))
    kwargs = ptycho_sim.scan_kwargs(
        line, object_shape=(side, side), probe={"kind": "aperture", "aperture_px": 8.0}, pattern="raster",
        grid=(9, 9), step_um=2.8 * line.pixel_um,
    )  # fmt: skip
    with ptycho_pipeline(PtychoParams(epochs=30, surrogate="off")) as pipe:
        RE = RunEngine()
        RE.subscribe(pipe)
        (uid,) = RE(ptycho_tomo_scan(line.detector, line.y, line.x, line.rotation, angles, **kwargs))
        outcome = pipe.wait(uid, timeout=180)
    assert outcome.status == "complete", outcome.reason
    node = from_uri(tiled_server.uri, api_key=tiled_server.api_key)["processed"][uid]
    assert node["positions"].shape == (8, 81, 2) and node.metadata["ptycho"]["scan"]["pattern"] == "raster"
    volume = node["phase_volume"].read()
    assert volume.shape == (side, side, side)
    assert {"ptycho", "qc", "ptycho_tomo"} <= set(node.metadata["provenance"]["seconds_per_stage"])
    truth = np.pad(phantom.attenuation(), pad)
    exact, _ = assemble_phase_volume(np.stack([sample.at(a) for a in angles]), angles)
    ours, ceiling = (np.corrcoef(register_volume(v, truth).ravel(), truth.ravel())[0, 1] for v in (volume, exact))
    print(f"8-view phase volume vs the foam: r = {ours:.3f} (exact views {ceiling:.3f})")
    assert ours > ceiling - 0.15  # measured 0.73 against 0.85


PTYCHI_WHY = ptychi_unavailable()


@pytest.mark.skipif(PTYCHI_WHY is not None, reason=f"Pty-chi cannot be imported here: {PTYCHI_WHY}")
def test_a_scan_reconstructed_by_ptychi_on_the_workers(ptycho_pipeline, tiled_server):
    line = ptycho_sim.beamline()
    with ptycho_pipeline(PtychoParams(method="ptychi-epie", epochs=40, threads_per_task=1)) as pipe:
        RE = RunEngine()
        RE.subscribe(pipe)
        (uid,) = RE(ptycho_sim.scan(line))
        outcome = pipe.wait(uid, timeout=300)
    assert outcome.status == "complete", outcome.reason
    node = from_uri(tiled_server.uri, api_key=tiled_server.api_key)["processed"][uid]
    assert node.metadata["provenance"]["parameters"]["pipeline"]["method"] == "ptychi-epie"
    qc = node.metadata["qc"]
    assert qc["alerts"] == [] and qc["data_error"] < 0.05  # tomolive's data error of Pty-chi's result
    assert scanned_phase_nrmse(node) <= PHASE_NRMSE_FLOOR


@pytest.mark.skipif(PTYCHI_WHY is None, reason="Pty-chi imports here: its refusal cannot be seen")
def test_asking_for_ptychi_where_it_cannot_import_fails_the_run_saying_why(ptycho_pipeline, tiled_server):
    line = ptycho_sim.beamline()
    with ptycho_pipeline(PtychoParams(method="ptychi-epie", epochs=2)) as pipe:
        RE = RunEngine()
        RE.subscribe(pipe)
        (uid,) = RE(ptycho_sim.scan(line, n_positions=30))
        outcome = pipe.wait(uid, timeout=120)
    assert outcome.status == "failed" and "pip install ptychi" in outcome.reason, outcome.reason
    node = from_uri(tiled_server.uri, api_key=tiled_server.api_key)["processed"][uid]
    assert node.metadata["status"] == "failed" and "ptychi" in node.metadata["reason"]
    assert not {"object_phase", "object_amplitude"} & set(node)


def test_a_partially_coherent_beam_is_reconstructed_with_probe_modes(ptycho_pipeline, tiled_server):
    """A beam with 30 % of its power in a second mode, reconstructed with ``probe_modes=2``: the
    modes, their power split and the phase floor arrive in Tiled (measured NRMSE 0.020, 30 epochs)."""
    line = ptycho_sim.beamline(incoherent=0.3)
    with ptycho_pipeline(PtychoParams(epochs=30, probe_modes=2)) as pipe:
        RE = RunEngine()
        RE.subscribe(pipe)
        (uid,) = RE(ptycho_sim.scan(line))
        outcome = pipe.wait(uid, timeout=120)
    assert outcome.status == "complete", outcome.reason
    node = from_uri(tiled_server.uri, api_key=tiled_server.api_key)["processed"][uid]
    md = node.metadata
    assert md["ptycho_recon"]["probe_modes"] == 2 and md["provenance"]["parameters"]["pipeline"]["probe_modes"] == 2
    probe_amplitude = node["probe_amplitude"].read()
    assert probe_amplitude.shape == (2, 32, 32) and node["probe_phase"].shape == (2, 32, 32)
    power = np.sum(probe_amplitude.astype(np.float64) ** 2, axis=(1, 2))
    assert 0.2 < power[1] / power.sum() < 0.4
    assert scanned_phase_nrmse(node) <= PHASE_NRMSE_FLOOR
    assert md["qc"]["alerts"] == []
