"""Ptycho-tomography: per-view objects of a 64^3 phantom -> offset/ramp removal, alignment, 3D phase volume."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from scipy import ndimage

from tests.toy_technique import MemoryStore
from tomolive.engine.progress import ProgressReporter
from tomolive.engine.provenance import Provenance
from tomolive.errors import BadInputError
from tomolive.qc import psnr
from tomolive.sim.ptycho_tomo import PhantomViews, phantom_views, phase_foam
from tomolive.stages import StageContext
from tomolive.techniques.ptycho.tomo3d import (
    PtychoTomoStage,
    assemble_phase_volume,
    register_volume,
    view_phases,
)

N_VIEWS = 30


@pytest.fixture(scope="module")
def phantom():
    return phase_foam(64, seed=1)


@pytest.fixture(scope="module")
def views(phantom) -> PhantomViews:
    return phantom_views(phantom, np.linspace(0, 180, N_VIEWS, endpoint=False), max_shift_px=3.0, seed=0)


def crop(volume: np.ndarray, pad: int) -> np.ndarray:
    """The phantom's field of the reconstruction (the views carry ``pad`` air columns per side)."""
    return volume[:, pad:-pad, pad:-pad]


def phase_psnr(volume: np.ndarray, views: PhantomViews, truth: np.ndarray) -> float:
    """PSNR of ``-volume`` (the views' phase is minus the phase delay) after rigid registration,
    on the slices whose rows stay in the field whatever the vertical shifts."""
    rows = slice(4, -4)
    moved = register_volume(-crop(volume, views.pad), truth)
    return psnr(moved[rows], truth[rows])


def test_offset_and_ramp_are_removed_without_unwrapping(views):
    phases, offsets, ramps = view_phases(views.objects, "edges", edge_px=4)
    truth = np.stack(
        [
            -ndimage.shift(projection, shift, order=3, mode="nearest")
            for projection, shift in zip(views.projections, views.shifts_px)
        ]
    )
    assert np.abs(phases - truth).mean() < 0.015  # noise 0.01 per pixel; ramps up to 3 rad across a view
    assert np.abs(ramps).max() <= 0.06
    assert np.isfinite(offsets).all()


def test_alignment_recovers_shifts_up_to_a_rigid_motion(views):
    _, report = assemble_phase_volume(views.objects, views.angles_deg, method="gridrec")
    error = report.shifts_px - views.shifts_px
    theta = np.deg2rad(views.angles_deg)
    design = np.stack([np.ones_like(theta), np.cos(theta), np.sin(theta)], axis=1)
    vertical = error[:, 0] - error[:, 0].mean()  # a common vertical offset moves the whole volume
    horizontal = error[:, 1] - design @ np.linalg.lstsq(design, error[:, 1], rcond=None)[0]  # so does 1, cos, sin
    assert np.abs(vertical).max() < 0.25
    assert np.abs(horizontal).max() < 0.25
    assert abs(report.center - (views.objects.shape[2] - 1) / 2) < 2.0
    assert report.summary()["alignment"]["horizontal"] == "centre-of-mass sinusoid fit"


def test_aligned_volume_psnr_against_the_phantom(views, phantom):
    truth = phantom.attenuation()
    volume, _ = assemble_phase_volume(views.objects, views.angles_deg, method="gridrec")
    unaligned, _ = assemble_phase_volume(views.objects, views.angles_deg, method="gridrec", align=False)
    perfect = phantom_views(phantom, views.angles_deg, max_shift_px=0.0, max_ramp_rad_per_px=0.0, noise=0.0)
    ideal, _ = assemble_phase_volume(perfect.objects, views.angles_deg, method="gridrec", align=False)
    assert volume.shape == (64, 84, 84)
    aligned_db, unaligned_db, ideal_db = (phase_psnr(v, views, truth) for v in (volume, unaligned, ideal))
    print(f"3D phase PSNR: aligned {aligned_db:.2f} dB, unaligned {unaligned_db:.2f}, no errors {ideal_db:.2f}")
    assert aligned_db > 22.0  # 30 views of a 64-wide sample: the no-error ceiling is ~24 dB
    assert aligned_db > ideal_db - 1.5
    assert aligned_db > unaligned_db + 4.0


def test_stage_writes_the_phase_volume(views):
    store = MemoryStore("uid-3d", {})
    with ThreadPoolExecutor(1) as io:
        ctx = StageContext(
            uid="uid-3d",
            store=store,
            params=None,
            provenance=Provenance(),
            progress=ProgressReporter(store, io),
            dask_client=lambda: None,
            run_blocks=lambda *a, **k: [],
            io=io,
            show_progress=False,
            acquisition=None,
            results={"objects": list(views.objects), "angles": list(views.angles_deg)},
        )
        PtychoTomoStage().run(ctx)
    stored = store.arrays["phase_volume"].data
    np.testing.assert_allclose(stored, ctx.results["phase_volume"])
    assert ctx.volumes["phase_volume"].shape == stored.shape
    assert ctx.metadata["ptycho_tomo"]["views"] == N_VIEWS
    assert "ptycho_tomo" in ctx.provenance.stage_seconds


@pytest.mark.parametrize(
    ("objects", "angles", "match"),
    [
        (np.ones((4, 16, 16)), np.arange(4) * 45.0, "complex"),
        (np.full((4, 16, 16), np.nan + 0j), np.arange(4) * 45.0, "NaN"),
        (np.ones((4, 16, 16), np.complex64), np.arange(3) * 45.0, "one per view"),
        ([np.ones((16, 16), np.complex64), np.ones((16, 12), np.complex64)], [0.0, 90.0], "same shape"),
        (np.ones((4, 16, 16), np.complex64), np.arange(4) * 10.0, "180"),
    ],
)
def test_bad_input_is_named(objects, angles, match):
    with pytest.raises(BadInputError, match=match):
        assemble_phase_volume(objects, angles, align=False)
