"""Preprocessing stages: stripes, rotation centre, zingers/NaN, Paganin.

Centre tests use an analytic phantom: ellipses whose parallel-beam line integrals are
exact, projected with the documented convention u = center + x cos(theta) + y sin(theta)
(pixel j's centre at column j).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tomolive.errors import BadInputError
from tomolive.preprocess import (
    CenterResult,
    find_center,
    find_center_registration,
    find_center_vo,
    paganin,
    remove_all_stripes,
    remove_dead_stripes,
    remove_large_stripes,
    remove_stripe_sorting,
    remove_stripes,
    remove_zingers,
    replace_nonfinite,
    ring_metric,
)
from tomolive.preprocess.phase import paganin_filter, wavelength

# (x0, y0, a, b, phi, density); lengths as fractions of the phantom's half width
ELLIPSES = [
    (0.0, 0.0, 0.62, 0.48, 0.3, 1.0),
    (0.22, -0.10, 0.18, 0.10, -0.4, 0.8),
    (-0.25, 0.15, 0.12, 0.20, 0.9, -0.5),
    (0.05, 0.30, 0.07, 0.07, 0.0, 1.2),
    (-0.30, -0.25, 0.05, 0.09, 0.2, 1.5),
]


def ellipse_sinogram(angles: np.ndarray, n_cols: int, center: float) -> np.ndarray:
    """Exact line integrals of ELLIPSES (n_angles, n_cols), axis at column ``center``."""
    scale = 0.4 * n_cols
    u = np.arange(n_cols, dtype=np.float64)[None, :]
    theta = np.asarray(angles, dtype=np.float64)[:, None]
    cos, sin = np.cos(theta), np.sin(theta)
    sino = np.zeros((theta.shape[0], n_cols))
    for x0, y0, a, b, phi, rho in ELLIPSES:
        x0, y0, a, b = x0 * scale, y0 * scale, a * scale, b * scale
        t = u - center - (x0 * cos + y0 * sin)
        s2 = (a * np.cos(theta - phi)) ** 2 + (b * np.sin(theta - phi)) ** 2
        chord = 2.0 * rho * a * b * np.sqrt(np.clip(s2 - t**2, 0.0, None)) / s2
        sino += chord
    return (sino / scale).astype(np.float32)


def noisy(sino: np.ndarray, sigma: float = 0.02, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (sino + sigma * rng.standard_normal(sino.shape)).astype(np.float32)


# -- rotation centre ---------------------------------------------------------------------


def test_convention_single_point() -> None:
    """A point at (x, y) is seen at u = center + x cos + y sin; the centre is that column."""
    theta = np.linspace(0, np.pi, 360, endpoint=False)
    center, x, y = 70.3, 25.0, -12.0
    u = np.arange(140.0)[None, :]
    track = center + x * np.cos(theta)[:, None] + y * np.sin(theta)[:, None]
    sino = np.exp(-0.5 * ((u - track) / 1.5) ** 2) + np.exp(-0.5 * ((u - center) / 2.0) ** 2)
    for method in ("registration", "vo", "auto"):
        result = find_center(sino, theta, method)
        assert abs(result.center - center) < 0.2, (method, result)
    # an object symmetric about the detector middle: centre (n - 1) / 2, not n / 2
    sym = ellipse_sinogram(theta, 128, 63.5)
    assert abs(find_center(sym, theta, "registration").center - 63.5) < 0.1


CASES = [  # (n_angles, n_cols, span, endpoint, center)
    (180, 128, np.pi, False, 66.8),
    (180, 128, np.pi, False, 56.5),
    (180, 128, np.pi, True, 74.75),
    (180, 128, 2 * np.pi, False, 60.25),
    (360, 256, np.pi, False, 130.8),
    (360, 256, np.pi, False, 120.5),
    (360, 256, 2 * np.pi, False, 138.75),
]


@pytest.mark.parametrize("method", ["registration", "vo", "auto"])
@pytest.mark.parametrize(("n_angles", "n_cols", "span", "endpoint", "center"), CASES)
def test_center_recovers_known_shift(
    method: str, n_angles: int, n_cols: int, span: float, endpoint: bool, center: float
) -> None:
    theta = np.linspace(0.0, span, n_angles, endpoint=endpoint)
    sino = noisy(ellipse_sinogram(theta, n_cols, center))
    result = find_center(sino, theta, method)
    assert isinstance(result, CenterResult)
    assert abs(result.center - center) < 0.5  # the bar; measured errors <= 0.15 px
    assert 0.0 <= result.confidence <= 1.0
    assert result.method in ("registration", "vo", "quality")


def test_center_on_projection_block_and_shuffled_angles() -> None:
    theta = np.linspace(0.0, np.pi, 240, endpoint=False)
    sino = ellipse_sinogram(theta, 160, 83.4)
    block = np.stack([noisy(sino, seed=s) for s in range(4)], axis=1)  # (angles, rows, cols)
    order = np.random.default_rng(3).permutation(len(theta))
    for method in ("registration", "vo"):
        direct = find_center(block, theta, method)
        shuffled = find_center(block[order], theta[order], method)
        assert abs(direct.center - 83.4) < 0.3
        assert shuffled.center == pytest.approx(direct.center, abs=1e-6)


def test_center_nonuniform_angles() -> None:
    rng = np.random.default_rng(5)
    theta = np.sort(np.linspace(0.0, np.pi, 300, endpoint=False) + rng.uniform(-2e-3, 2e-3, 300))
    sino = noisy(ellipse_sinogram(theta, 128, 61.3))
    assert abs(find_center_vo(sino, theta).center - 61.3) < 0.5
    assert abs(find_center_registration(sino, theta).center - 61.3) < 0.5


def test_auto_reports_both_methods() -> None:
    theta = np.linspace(0.0, np.pi, 180, endpoint=False)
    result = find_center(noisy(ellipse_sinogram(theta, 128, 66.8)), theta)
    assert result.method == "registration"
    assert result.details["agree"] is True
    assert abs(result.details["difference_px"]) < 0.5
    assert result.details["vo"]["method"] == "vo"
    assert result.details["vo"]["details"]["refined"] is False  # a cross-check: unit steps suffice
    assert abs(result.details["vo"]["center"] - 66.8) < 0.5
    assert set(result.as_dict()) == {"center", "method", "confidence", "details"}
    with pytest.raises(AttributeError):
        result.center = 1.0  # type: ignore[misc]  # frozen


def test_auto_cross_checks_on_one_row_and_refines_on_all() -> None:
    theta = np.linspace(0.0, np.pi, 180, endpoint=False)
    sino = ellipse_sinogram(theta, 128, 66.8)
    block = np.stack([noisy(sino, seed=s) for s in range(8)], axis=1)  # (angles, rows, cols)
    check = find_center(block, theta)
    assert check.method == "registration" and check.details["agree"] is True
    assert check.details["vo"]["details"]["rows"] == [4]  # the middle of Vo's rows 2, 4, 5
    assert abs(check.details["vo"]["center"] - 66.8) < 0.5
    decide = find_center(block, theta, agree_px=0.4)  # near the limit: Vo refined, on every row
    assert decide.details["vo"]["details"]["rows"] == [2, 4, 5]
    assert decide.details["vo"]["details"]["refined"] is True
    assert abs(decide.details["vo"]["center"] - 66.8) < 0.3
    given = find_center(block, theta, rows=[1, 6])  # rows the caller chose are all used
    assert given.details["vo"]["details"]["rows"] == [1, 6]


def test_auto_refines_vo_when_it_may_decide() -> None:
    theta = np.linspace(0.0, np.pi, 180, endpoint=False)
    sino = noisy(ellipse_sinogram(theta, 128, 66.8))
    result = find_center(sino, theta, agree_px=0.4)  # Vo near the limit: its 0.25 px pass runs
    assert result.details["vo"]["details"]["refined"] is True
    assert abs(result.details["vo"]["center"] - 66.8) < 0.3


@pytest.mark.parametrize("center", [52.3, 63.5, 70.85])
def test_vo_unit_step_estimate_is_as_good_as_the_refined_one(center: float) -> None:
    theta = np.linspace(0.0, np.pi, 180, endpoint=False)
    sino = noisy(ellipse_sinogram(theta, 128, center))
    unrefined, refined = find_center_vo(sino, theta, refine=False), find_center_vo(sino, theta)
    assert unrefined.details["refined"] is False and refined.details["refined"] is True
    assert abs(unrefined.center - center) < 0.3 and abs(refined.center - center) < 0.3


def test_auto_falls_back_to_vo_without_partner() -> None:
    theta = np.linspace(0.0, np.pi, 180, endpoint=False)
    sino = noisy(ellipse_sinogram(theta, 128, 58.2))
    with pytest.raises(BadInputError, match="180 degrees"):
        find_center_registration(sino, theta, max_residual=1e-4)
    result = find_center(sino, theta, max_residual=1e-4)
    # without registration, Vo seeds the image-quality check, which decides
    assert result.method == "quality" and result.details["registration"] is None
    assert result.details["vo"]["details"]["refined"] is True
    assert abs(result.details["vo"]["center"] - 58.2) < 0.5
    assert result.details["quality_agreement"] == 1.0
    assert abs(result.center - 58.2) < 0.5


def test_center_search_range_is_honoured() -> None:
    theta = np.linspace(0.0, np.pi, 180, endpoint=False)
    sino = noisy(ellipse_sinogram(theta, 128, 80.6))
    # default range (middle +/- n/8 = 47.5..79.5) misses 80.6 unless the fine search reaches it
    assert abs(find_center_vo(sino, theta, search_range=(60, 100)).center - 80.6) < 0.5
    with pytest.raises(BadInputError, match="search_range"):
        find_center_vo(sino, theta, search_range=(100, 60))


@pytest.mark.parametrize(
    ("angles", "match"),
    [
        (np.linspace(0, 180, 90, endpoint=False), "degrees"),
        (np.linspace(0, 2.0, 90), "180 degrees"),
        (np.linspace(0, np.pi, 89), "one value per projection"),
    ],
)
def test_center_rejects_bad_angles(angles: np.ndarray, match: str) -> None:
    sino = np.ones((90, 64), dtype=np.float32)
    with pytest.raises(BadInputError, match=match):
        find_center(sino, angles)


def test_center_rejects_bad_input() -> None:
    theta = np.linspace(0, np.pi, 90, endpoint=False)
    with pytest.raises(BadInputError, match="method"):
        find_center(np.ones((90, 64)), theta, "entropy")  # type: ignore[arg-type]
    with pytest.raises(BadInputError, match="unknown option"):
        find_center(np.ones((90, 64)), theta, sigma=2)
    bad = np.ones((90, 64))
    bad[3, 3] = np.nan
    with pytest.raises(BadInputError, match="NaN"):
        find_center(bad, theta)
    with pytest.raises(BadInputError, match="2D or 3D"):
        find_center(np.ones(64), theta)


# -- stripes -----------------------------------------------------------------------------


def striped_sinogram(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A clean noisy phantom sinogram (360 x 256) and a copy with injected stripes."""
    theta = np.linspace(0.0, np.pi, 360, endpoint=False)
    clean = noisy(ellipse_sinogram(theta, 256, 127.5), sigma=0.01, seed=seed)
    rng = np.random.default_rng(seed)
    striped = clean.copy()
    for col in rng.choice(np.arange(20, 236), 12, replace=False):  # offset stripes
        striped[:, col] += rng.choice([-1, 1]) * rng.uniform(0.03, 0.08)
    striped[:, 150:154] *= 1.08  # a wide (large) stripe, gain error
    striped[:, 90] = 0.4 + 0.002 * rng.standard_normal(360)  # an unresponsive pixel
    striped[100:220, 200] += 0.05  # a partial stripe
    return clean, striped


def test_ring_metric_measures_stripes() -> None:
    clean, striped = striped_sinogram()
    assert ring_metric(striped) > 5 * ring_metric(clean)
    flat = np.zeros((10, 50), dtype=np.float32)
    assert ring_metric(flat) == 0.0


@pytest.mark.parametrize("method", ["sort", "combined"])
def test_stripe_removal_lowers_ring_metric(method: str) -> None:
    clean, striped = striped_sinogram()
    before = ring_metric(striped)
    out = remove_stripes(striped, method)
    after = ring_metric(out)
    assert out.dtype == np.float32 and out.shape == striped.shape
    # measured: 0.0339 -> 6.3e-4 (sort), 1.6e-4 (combined); the clean sinogram: 7.4e-4
    assert after < 0.05 * before
    assert after < ring_metric(clean)
    # closer to the stripe-free sinogram than the input was (RMS 0.036 -> 0.019 sort,
    # 0.023 combined: the median filters also blur object edges a little)
    rms = lambda a: float(np.sqrt(np.mean((a - clean) ** 2)))  # noqa: E731
    assert rms(out) < 0.8 * rms(striped)


def test_stripe_removal_on_blocks_equals_per_row() -> None:
    _, striped = striped_sinogram()
    block = np.stack([striped, striped[:, ::-1], striped * 0.5], axis=1)  # (angles, rows, cols)
    functions = (remove_stripe_sorting, remove_all_stripes, remove_large_stripes, remove_dead_stripes)
    for function in functions:
        out = function(block)
        assert out.shape == block.shape and out.dtype == np.float32
        for row in range(3):
            np.testing.assert_allclose(out[:, row, :], function(block[:, row, :]), atol=1e-6)
    assert ring_metric(remove_stripes(block, "combined")) < 0.05 * ring_metric(block)


def test_stripe_removal_matches_algotom() -> None:
    removal = pytest.importorskip("algotom.prep.removal")
    _, striped = striped_sinogram(seed=2)
    expected = removal.remove_stripe_based_sorting(striped, 21)
    np.testing.assert_allclose(remove_stripe_sorting(striped, 21), expected, atol=1e-6)
    np.testing.assert_allclose(remove_all_stripes(striped), removal.remove_all_stripe(striped, 3.0, 51, 21), atol=1e-4)


def test_stripe_removal_noise_free_input_does_not_raise() -> None:
    theta = np.linspace(0.0, np.pi, 90, endpoint=False)
    sino = ellipse_sinogram(theta, 64, 31.5)
    out = remove_stripes(sino, "combined")
    assert np.all(np.isfinite(out))
    zeros = np.zeros((50, 40), dtype=np.float32)
    np.testing.assert_array_equal(remove_all_stripes(zeros), zeros)


def test_remove_stripes_dispatcher_errors() -> None:
    sino = np.random.default_rng(0).random((40, 30)).astype(np.float32)
    copy = remove_stripes(sino, "none")
    np.testing.assert_array_equal(copy, sino)
    assert copy is not sino
    with pytest.raises(BadInputError, match="method"):
        remove_stripes(sino, "wavelet")  # type: ignore[arg-type]
    with pytest.raises(BadInputError, match="unknown option"):
        remove_stripes(sino, "sort", snr=3.0)
    with pytest.raises(BadInputError, match="snr"):
        remove_stripes(sino, "combined", snr=0.5)
    with pytest.raises(BadInputError, match="2D or 3D"):
        remove_stripes(sino[0], "sort")
    with pytest.raises(BadInputError, match="at least 3 angles"):
        remove_stripes(sino[:2], "sort")
    bad = sino.copy()
    bad[0, 0] = np.inf
    with pytest.raises(BadInputError, match="NaN/inf"):
        remove_stripes(bad, "sort")


def test_stripe_removal_on_real_neutron_sinogram(shared_data: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    path = shared_data / "sarepy_sino360_neutron.tif"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    raw = tifffile.imread(path).astype(np.float32)
    sino = raw / raw.max()  # (459 angles over 360 degrees, 503 columns)
    before = ring_metric(sino)
    sorted_ = ring_metric(remove_stripes(sino, "sort"))
    combined = ring_metric(remove_stripes(sino, "combined"))
    # measured: 1.59e-3 -> 2.86e-4 (sort), 1.05e-4 (combined)
    assert sorted_ < 0.3 * before
    assert combined < 0.1 * before


# -- zingers and non-finite values -------------------------------------------------------


def test_remove_zingers_replaces_only_outliers() -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    frames = np.stack([np.sin(xx / 9.0 + k) + np.cos(yy / 7.0) for k in range(3)])
    frames = frames.astype(np.float32)
    hits = (rng.integers(0, 3, 30), rng.integers(2, 62, 30), rng.integers(2, 62, 30))
    dirty = frames.copy()
    dirty[hits] += 5.0
    clean = remove_zingers(dirty, threshold=1.0)
    assert np.abs(clean - frames).max() < 0.1  # every zinger gone, replaced by local medians
    untouched = np.ones_like(dirty, dtype=bool)
    untouched[hits] = False
    np.testing.assert_array_equal(clean[untouched], dirty[untouched])
    # dark outliers survive the default sign="positive"; sign="both" removes them
    dark = frames.copy()
    dark[0, 30, 30] -= 5.0
    assert remove_zingers(dark, 1.0)[0, 30, 30] == dark[0, 30, 30]
    assert abs(remove_zingers(dark, 1.0, sign="both")[0, 30, 30] - frames[0, 30, 30]) < 0.1
    # relative threshold on raw counts
    counts = np.full((16, 16), 1000.0, dtype=np.float32)
    counts[5, 5] = 1500.0
    assert remove_zingers(counts, 0.2, relative=True)[5, 5] == 1000.0
    with pytest.raises(BadInputError, match="threshold"):
        remove_zingers(frames, 0.0)
    with pytest.raises(BadInputError, match="sign"):
        remove_zingers(frames, 1.0, sign="up")  # type: ignore[arg-type]


def test_replace_nonfinite() -> None:
    frames = np.arange(2 * 5 * 5, dtype=np.float32).reshape(2, 5, 5)
    frames[0, 2, 2] = np.nan
    frames[1, 0, 0] = np.inf
    frames[1, 4, 4] = -np.inf
    fixed = replace_nonfinite(frames)
    assert np.all(np.isfinite(fixed))
    assert fixed[0, 2, 2] == 12.0  # median of its 8 neighbours 6, 7, 8, 11, 13, 16, 17, 18
    assert fixed[1, 0, 0] == 30.0  # corner: median of its finite neighbours 26, 30, 31
    assert np.isnan(frames[0, 2, 2])  # input untouched
    assert replace_nonfinite(frames, mode="value", value=-1.0)[0, 2, 2] == -1.0
    all_bad = np.full((3, 3), np.nan, dtype=np.float32)
    np.testing.assert_array_equal(replace_nonfinite(all_bad, value=7.0), 7.0)
    with pytest.raises(BadInputError, match="odd"):
        replace_nonfinite(frames, size=4)


# -- Paganin -----------------------------------------------------------------------------

PHYSICS = {"pixel_size": 1.0e-6, "distance": 0.05, "energy": 20.0, "delta_beta": 300.0}


def test_paganin_filter_gain_on_a_sinusoid() -> None:
    n, cycles = 128, 3
    x = np.arange(n)
    frame = (1.0 + 0.1 * np.cos(2 * np.pi * cycles * x / n))[None, :].repeat(32, axis=0)
    out = paganin(frame.astype(np.float32), **PHYSICS, pad=False)
    f = cycles / (n * PHYSICS["pixel_size"])  # cycles per metre
    alpha = np.pi * wavelength(PHYSICS["energy"]) * PHYSICS["distance"] * PHYSICS["delta_beta"]
    expected_gain = 1.0 / (1.0 + alpha * f**2)
    amplitude = 2 * np.abs(np.fft.rfft(out[0] - out[0].mean()))[cycles] / n
    assert amplitude == pytest.approx(0.1 * expected_gain, rel=1e-4)
    assert 0.1 < expected_gain < 0.9  # the test exercises real smoothing
    filt = paganin_filter((32, 128), **PHYSICS)
    assert filt[0, 0] == 1.0 and filt.min() > 0 and np.all(np.diff(filt[0]) <= 0)


def test_paganin_conserves_mean_and_smooths() -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :96]
    disc = ((yy - 48) ** 2 + (xx - 48) ** 2 < 25**2).astype(np.float32)
    noise = 0.02 * rng.standard_normal((2, *disc.shape))
    frames = (np.exp(-0.5 * disc)[None] + noise).astype(np.float32)
    periodic = paganin(frames, **PHYSICS, pad=False)
    np.testing.assert_allclose(periodic.mean(axis=(1, 2)), frames.mean(axis=(1, 2)), rtol=1e-5)
    padded = paganin(frames, **PHYSICS)  # edge padding: mean kept up to edge effects
    np.testing.assert_allclose(padded.mean(axis=(1, 2)), frames.mean(axis=(1, 2)), rtol=2e-3)
    # noise in the air region drops, and the result is smoother (smaller Laplacian)
    air = (slice(None), slice(0, 15), slice(0, 15))
    assert padded[air].std() < 0.3 * frames[air].std()
    lap = lambda a: np.abs(np.diff(a, 2, axis=-1)).mean()  # noqa: E731
    assert lap(padded) < 0.2 * lap(frames)
    assert padded.shape == frames.shape and padded.dtype == np.float32
    np.testing.assert_allclose(paganin(frames[0], **PHYSICS), padded[0], rtol=1e-6)


def test_paganin_rejects_bad_parameters() -> None:
    frame = np.ones((8, 8), dtype=np.float32)
    with pytest.raises(BadInputError, match="energy"):
        paganin(frame, 1e-6, 0.05, -20.0)
    with pytest.raises(BadInputError, match="pixel_size"):
        paganin(frame, 0.0, 0.05, 20.0)
    with pytest.raises(BadInputError, match="pad"):
        paganin(frame, 1e-6, 0.05, 20.0, pad=-3)


def test_column_shift_matches_scipy_cubic_shift_away_from_the_edges():
    """Vo's search shifts sinograms along columns with 1-D B-spline taps; away from the
    edges (which the search overwrites) that equals scipy's 2-D cubic shift."""
    from scipy import ndimage

    from tomolive.preprocess.center.vo import _shift_columns

    rng = np.random.default_rng(0)
    sino = ndimage.gaussian_filter(rng.random((40, 160)), 2).astype(np.float32)
    coeffs = ndimage.spline_filter1d(sino, order=3, axis=1, mode="mirror")
    for shift in (0.5, -0.5, 3.5, -7.5, 2.25, -0.75):
        expected = ndimage.shift(sino, (0, shift), order=3, mode="constant")
        out = np.empty_like(sino)
        _shift_columns(coeffs, shift, out)
        inner = slice(int(np.ceil(abs(shift))) + 4, 160 - int(np.ceil(abs(shift))) - 4)
        np.testing.assert_allclose(out[:, inner], expected[:, inner], atol=1e-6)
