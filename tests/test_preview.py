"""Live preview: incremental filtered back-projection and its publishing thread."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from tomolive.errors import BadInputError
from tomolive.qc import circle_mask, psnr
from tomolive.recon import reconstruct
from tomolive.sim.phantoms import make_foam
from tomolive.techniques.tomo.preview import IncrementalFBP, LivePreview, PreviewSnapshot, default_preview_rows

N = 96
ANGLES = np.linspace(0, np.pi, 180, endpoint=False)


@pytest.fixture(scope="module")
def foam():
    phantom = make_foam((8, N, N), seed=5)
    return phantom, phantom.sinogram(ANGLES), phantom.attenuation()


def _preview_after(sino: np.ndarray, n_angles: int, rows=(2, 4)) -> np.ndarray:
    fbp = IncrementalFBP(sino.shape[-1], (N - 1) / 2)
    for frame, angle in zip(sino[:n_angles], ANGLES[:n_angles]):
        fbp.add(frame[list(rows)], angle)
    return fbp.image()


def test_full_preview_matches_the_volume_reconstruction(foam):
    _, sino, truth = foam
    preview = _preview_after(sino, len(ANGLES))
    volume = reconstruct(sino[:, [2, 4]], ANGLES, center=(N - 1) / 2)
    mask = circle_mask((N, N), 0.9)
    for k, row in enumerate((2, 4)):
        assert psnr(preview[k], truth[row], mask=mask) >= 24.0
        # Same physical units as the volume: values agree to a few percent of the range.
        assert np.abs(preview[k] - volume[k])[mask].mean() < 0.03 * np.ptp(truth[row])


def test_preview_sharpens_as_angles_accumulate(foam):
    _, sino, truth = foam
    mask = circle_mask((N, N), 0.9)
    scores = [psnr(_preview_after(sino, n)[0], truth[2], mask=mask, fit=True) for n in (30, 90, 180)]
    assert scores[0] < scores[1] < scores[2]
    assert scores[2] - scores[0] > 3.0


def test_wide_detectors_are_binned_to_the_preview_size(foam):
    phantom, _, truth = foam
    fbp = IncrementalFBP(N, (N - 1) / 2, size=48)
    assert fbp.binning == 2 and fbp.n == 48
    for angle in ANGLES:
        fbp.add(phantom.project(angle)[[4]], angle)
    image = fbp.image()[0]
    binned_truth = truth[4].reshape(48, 2, 48, 2).mean(axis=(1, 3))
    assert image.shape == (48, 48)
    assert psnr(image, binned_truth, mask=circle_mask((48, 48), 0.9)) >= 22.0


def test_default_rows_and_errors():
    assert default_preview_rows(100) == (25, 50, 75)
    assert default_preview_rows(1) == (0,)
    with pytest.raises(BadInputError, match="no projection yet"):
        IncrementalFBP(16, 7.5).image()
    with pytest.raises(BadInputError, match="n_cols"):
        IncrementalFBP(1, 0.0)


def test_a_blocked_publisher_never_blocks_add_and_the_last_snapshot_has_every_angle(foam):
    _, sino, truth = foam
    release = threading.Event()
    snapshots: list[PreviewSnapshot] = []

    def publish(snapshot: PreviewSnapshot) -> None:
        release.wait(timeout=30)  # a stalled server: the preview thread waits here
        snapshots.append(snapshot)

    preview = LivePreview((2, 4), N, (N - 1) / 2, publish, interval_s=0.0)
    for frame, angle in zip(sino, ANGLES):  # would deadlock if add() waited on publish()
        preview.add(frame, angle)
    release.set()
    preview.close(timeout=30)
    assert snapshots[-1].n_angles == len(ANGLES)
    assert snapshots[-1].rows == (2, 4)
    # the last image sent (the close's publish sends none when no angle came since the one before)
    last_image = next(snap for snap in reversed(snapshots) if snap.image is not None)
    assert last_image.n_angles == len(ANGLES)
    assert psnr(last_image.image[0], truth[2], mask=circle_mask((N, N), 0.9)) >= 24.0


def _publish_first_frame(preview: LivePreview, sino: np.ndarray, snapshots: list[PreviewSnapshot]) -> None:
    """Add the first frame and wait (up to 30 s) until the preview thread has published it."""
    preview.add(sino[0], ANGLES[0])
    deadline = time.monotonic() + 30
    while not snapshots and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_held_preview_drops_queued_frames_and_publishes_once_more_at_close(foam):
    _, sino, _ = foam
    snapshots: list[PreviewSnapshot] = []
    release = threading.Event()

    def publish(snapshot: PreviewSnapshot) -> None:
        snapshots.append(snapshot)
        release.wait(timeout=30)  # a slow publish: the frames below queue up behind it

    preview = LivePreview((4,), N, (N - 1) / 2, publish, interval_s=0.0)
    _publish_first_frame(preview, sino, snapshots)
    for frame, angle in zip(sino[1:10], ANGLES[1:10]):  # queued behind the publish
        preview.add(frame, angle)
    preview.hold()  # the scan ended: its volume's start comes first
    preview.add(sino[10], ANGLES[10])
    release.set()
    time.sleep(0.3)  # due many times over at interval 0, were it not held
    assert [s.n_angles for s in snapshots] == [1]
    preview.close(timeout=30)
    assert preview.dropped == 10  # 9 queued at the hold, 1 after it
    assert [(s.n_angles, s.dropped) for s in snapshots] == [(1, None), (1, 10)]  # the last says so
    assert snapshots[0].image is not None and snapshots[1].image is None  # no new angle: metadata only


def test_a_hold_also_drops_the_rest_of_the_batch_being_back_projected(foam):
    _, sino, _ = foam
    snapshots: list[PreviewSnapshot] = []
    release, started = threading.Event(), threading.Event()

    def publish(snapshot: PreviewSnapshot) -> None:
        snapshots.append(snapshot)
        release.wait(timeout=30)  # the frames below queue up behind this publish: one batch

    preview = LivePreview((4,), N, (N - 1) / 2, publish, interval_s=0.0)
    _publish_first_frame(preview, sino, snapshots)
    for frame, angle in zip(sino[1:21], ANGLES[1:21]):
        preview.add(frame, angle)
    back_project = preview.fbp.add

    def slow_add(rows: np.ndarray, angle: float) -> None:
        started.set()
        time.sleep(0.2)
        back_project(rows, angle)

    preview.fbp.add = slow_add
    release.set()
    assert started.wait(timeout=30)  # the thread has taken the batch of 20
    preview.hold()
    preview.close(timeout=30)
    assert 2 <= preview.fbp.n_angles <= 4  # the frame before, and the one or two under way
    assert preview.dropped == 21 - preview.fbp.n_angles
    assert (snapshots[-1].n_angles, snapshots[-1].dropped) == (preview.fbp.n_angles, preview.dropped)


def test_a_held_preview_publishes_what_it_back_projected_since_its_last_publish(foam):
    _, sino, _ = foam
    snapshots: list[PreviewSnapshot] = []
    preview = LivePreview((4,), N, (N - 1) / 2, snapshots.append, interval_s=60.0)
    _publish_first_frame(preview, sino, snapshots)
    for frame, angle in zip(sino[1:10], ANGLES[1:10]):
        preview.add(frame, angle)
    deadline = time.monotonic() + 30
    while preview.fbp.n_angles < 10 and time.monotonic() < deadline:  # all back-projected
        time.sleep(0.01)
    preview.hold()
    assert [s.n_angles for s in snapshots] == [1]  # the first publish; the next is 60 s away
    preview.close(timeout=30)
    assert [(s.n_angles, s.dropped) for s in snapshots] == [(1, None), (10, 0)]
    np.testing.assert_allclose(snapshots[-1].image, _preview_after(sino, 10, rows=(4,)), rtol=1e-5, atol=1e-6)


def test_a_preview_held_before_any_frame_is_back_projected_publishes_nothing(foam):
    _, sino, _ = foam
    snapshots: list[PreviewSnapshot] = []
    preview = LivePreview((4,), N, (N - 1) / 2, snapshots.append, interval_s=0.0)
    preview.hold()
    preview.add(sino[0], ANGLES[0])
    preview.close(timeout=30)  # an error on the preview thread would fail the test (pytest warns)
    assert not preview._thread.is_alive() and snapshots == [] and preview.dropped == 1


def test_publish_errors_are_logged_and_the_preview_goes_on(foam, caplog):
    _, sino, _ = foam
    calls = []

    def flaky(snapshot: PreviewSnapshot) -> None:
        calls.append(snapshot.n_angles)
        if len(calls) == 1:
            raise ConnectionError("server away")

    preview = LivePreview((4,), N, (N - 1) / 2, flaky, interval_s=0.0)
    preview.add(sino[0], ANGLES[0])
    preview.close(timeout=30)
    preview = LivePreview((4,), N, (N - 1) / 2, flaky, interval_s=0.0)
    for frame, angle in zip(sino[:3], ANGLES[:3]):
        preview.add(frame, angle)
    preview.close(timeout=30)
    assert "could not publish the live preview" in caplog.text
    assert calls[-1] == 3 and preview.published >= 1
