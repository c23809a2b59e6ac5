"""Flat/dark normalisation, -log, floor clipping, frame reduction."""

from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest

from tomolive.errors import BadInputError
from tomolive.preprocess.normalize import normalize, reduce_frames


def _frames() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    dark = rng.uniform(90, 110, (6, 8)).astype(np.float32)
    flat = dark + rng.uniform(3000, 5000, (6, 8)).astype(np.float32)
    transmission = rng.uniform(0.1, 0.9, (3, 6, 8))
    raw = np.rint(dark + transmission * (flat - dark)).astype(np.uint16)
    return raw, flat, dark


def test_arithmetic_transmission_and_minus_log() -> None:
    raw, flat, dark = _frames()
    expected = (raw.astype(np.float64) - dark) / (flat - dark)
    t = normalize(raw, flat, dark, minus_log=False)
    assert t.dtype == np.float32 and t.shape == raw.shape
    np.testing.assert_allclose(t, expected, rtol=1e-5)
    line = normalize(raw, flat, dark)
    np.testing.assert_allclose(line, -np.log(expected), rtol=1e-5, atol=1e-6)
    # a single 2D frame gives the same numbers as its slice of the stack
    np.testing.assert_array_equal(normalize(raw[1], flat, dark), line[1])


def test_known_values() -> None:
    flat, dark = np.full((2, 2), 110.0), np.full((2, 2), 10.0)
    p = np.array([[60.0, 110.0], [35.0, 10.0 + 100 * np.exp(-2.0)]])
    np.testing.assert_allclose(normalize(p, flat, dark), [[np.log(2.0), 0.0], [np.log(4.0), 2.0]], atol=1e-6)


def test_floor_keeps_dead_pixels_and_zero_counts_finite() -> None:
    flat = np.array([[100.0, 100.0, 500.0]], dtype=np.float32)
    dark = np.array([[100.0, 100.0, 100.0]], dtype=np.float32)  # two dead pixels (flat == dark)
    raw = np.array([[100.0, 130.0, 0.0]], dtype=np.float32)  # last one: zero counts (< dark)
    with np.errstate(all="raise"):
        line = normalize(raw, flat, dark)
        t = normalize(raw, flat, dark, minus_log=False)
    assert np.all(np.isfinite(line))
    floor = 1e-6
    np.testing.assert_allclose(t[0], [floor, 30.0 / floor, floor], rtol=1e-5)
    np.testing.assert_allclose(line[0, [0, 2]], -np.log(floor), rtol=1e-5)  # 13.8
    assert normalize(raw, flat, dark, floor=1e-3)[0, 2] == pytest.approx(-np.log(1e-3), rel=1e-5)


def test_inputs_are_not_modified_and_out_is_used() -> None:
    raw, flat, dark = _frames()
    raw_f = raw.astype(np.float32)
    copies = [a.copy() for a in (raw, raw_f, flat, dark)]
    normalize(raw, flat, dark)
    normalize(raw_f, flat, dark)
    for before, after in zip(copies, (raw, raw_f, flat, dark)):
        np.testing.assert_array_equal(before, after)
    out = np.empty(raw.shape, dtype=np.float32)
    result = normalize(raw, flat, dark, out=out)
    assert result is out
    np.testing.assert_array_equal(out, normalize(raw, flat, dark))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_frames_raise(bad: float) -> None:
    raw, flat, dark = _frames()
    raw = raw.astype(np.float32)
    raw[2, 3, 4] = bad
    with pytest.raises(BadInputError, match="NaN") as info:
        normalize(raw, flat, dark)
    assert "1 NaN/inf pixel(s) of 144" in str(info.value)
    with pytest.raises(BadInputError, match="NaN"):
        reduce_frames(raw, name="flats")


@pytest.mark.parametrize("which", ["flat", "dark"])
def test_shape_mismatch_names_the_input(which: str) -> None:
    raw, flat, dark = _frames()
    images = {"flat": flat, "dark": dark}
    images[which] = images[which][:, :7]
    with pytest.raises(BadInputError, match=rf"^{which} has shape \(6, 7\).*\(6, 8\)"):
        normalize(raw, images["flat"], images["dark"])


def test_median_rejects_a_zinger_frame_mean_does_not() -> None:
    frames = np.full((5, 4, 4), 1000.0, dtype=np.float32)
    frames += np.arange(5, dtype=np.float32)[:, None, None]  # 1000..1004, median 1002
    frames[3, 1, 2] = 60000.0  # zinger in one frame
    median = reduce_frames(frames)
    mean = reduce_frames(frames, "mean")
    assert median.dtype == mean.dtype == np.float32 and median.shape == (4, 4)
    np.testing.assert_array_equal(median, np.full((4, 4), 1002.0))
    assert mean[1, 2] == pytest.approx((1000 + 1001 + 1002 + 60000 + 1004) / 5)
    assert mean[0, 0] == pytest.approx(1002.0)
    # a single 2D frame is accepted as a stack of one; integer input is fine
    single = reduce_frames(np.full((3, 3), 7, np.uint16))
    np.testing.assert_array_equal(single, np.full((3, 3), 7.0))


@pytest.mark.parametrize(
    ("frames", "method", "match"),
    [
        (np.ones((2, 3, 3)), "max", "method must be one of"),
        (np.ones((0, 3, 3)), "median", r"flats must be a non-empty stack.*\(0, 3, 3\)"),
        (np.ones(5), "median", r"flats must be .*\(5,\)"),
    ],
)
def test_reduce_frames_rejects_bad_input(frames: np.ndarray, method: str, match: str) -> None:
    with pytest.raises(BadInputError, match=match):
        reduce_frames(frames, method, name="flats")  # type: ignore[arg-type]


def test_docstring_examples_run() -> None:
    module = importlib.import_module("tomolive.preprocess.normalize")
    assert ">>> " in (module.normalize.__doc__ or "")
    result = doctest.testmod(module, verbose=False)
    assert result.failed == 0 and result.attempted >= 3


def test_integer_flat_and_dark_give_the_same_result_as_float() -> None:
    raw = np.array([[150, 150]], dtype=np.uint16)
    flat = np.array([[200, 99]], dtype=np.uint16)
    dark = np.array([[100, 100]], dtype=np.uint16)
    np.testing.assert_allclose(
        normalize(raw, flat, dark), normalize(raw, flat.astype(np.float32), dark.astype(np.float32))
    )
