"""The solver's FFTs (FFTW where pyfftw imports, torch.fft otherwise) and its exact sub-pixel shift."""

from __future__ import annotations

import gc
import threading

import numpy as np
import psutil
import pytest
import torch

from tomolive.techniques.ptycho import fourier, physics, solver, sweeps

BACKENDS = ["fftw", "torch"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Each test runs on FFTW (skipped where pyfftw does not import) and on torch.fft."""
    if request.param == "fftw" and not fourier.fftw_available():
        pytest.skip("pyfftw does not import: only the torch.fft path runs here")
    if request.param == "torch":
        with fourier.torch_fft_only():
            yield request.param
    else:
        yield request.param


def _random(shape, seed=0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.as_tensor((rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64))


def test_transforms_match_torch_for_any_layout(backend):
    x = _random((5, 2, 16, 16))
    views = {"contiguous": x, "transposed": x.transpose(-1, -2), "offset": x[1:], "conjugate": x.conj()}
    for name, view in views.items():
        before = view.clone()
        forward = fourier.fft2(view)
        inverse = fourier.ifft2_unnormalised(view)
        torch.testing.assert_close(forward, torch.fft.fft2(before), atol=1e-4, rtol=1e-5, msg=name)
        torch.testing.assert_close(inverse, torch.fft.ifft2(before) * 256, atol=1e-4, rtol=1e-5, msg=name)
        torch.testing.assert_close(view, before, msg=f"{name}: the input must be left as it was")
    spare = x.clone()
    torch.testing.assert_close(fourier.fft2(spare, overwrite_x=True), torch.fft.fft2(x), atol=1e-4, rtol=1e-5)


def test_plans_are_safe_across_threads(backend):
    inputs = [_random((7, 1, 32, 32), seed) for seed in range(4)]
    wanted = [torch.fft.fft2(x) for x in inputs]
    errors: list[float] = []

    def work(k: int) -> None:
        with fourier.kept_plans():
            for _ in range(200):
                errors.append(float((fourier.fft2(inputs[k]) - wanted[k]).abs().max()))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 800 and max(errors) < 1e-3


def test_kept_plans_and_the_arrays_they_saw_go_with_the_block(backend):
    process = psutil.Process()
    baseline = process.memory_info().rss
    with fourier.kept_plans():
        x = torch.ones((8, 1, 1024, 1024), dtype=torch.complex64)  # 64 MiB, and as much again for the result
        with fourier.kept_plans():  # nested: one cache
            first = fourier.fft2(x)
        torch.testing.assert_close(fourier.fft2(x)[:, :, :4, :4], first[:, :, :4, :4])
        del x, first
    gc.collect()
    grown = (process.memory_info().rss - baseline) / 2**20
    assert grown < 48, f"{grown:.0f} MiB still held: a plan keeps the arrays it last transformed"


def test_shift_ramps_move_whole_pixels_exactly():
    probe = _random((8, 8)).numpy()
    rolled = physics.shifted_probes(probe, np.array([[1.0, -2.0], [0.0, 3.0]]))
    np.testing.assert_allclose(rolled[0], np.roll(probe, (1, -2), axis=(0, 1)), atol=1e-5)
    np.testing.assert_allclose(rolled[1], np.roll(probe, 3, axis=1), atol=1e-5)


def test_solver_shift_equals_the_simulator_and_its_adjoint_is_exact(backend):
    n, shape = 32, (96, 96)
    rng = np.random.default_rng(2)
    positions = rng.uniform(20.0, 76.0, size=(6, 2))
    probe = _random((2, n, n), seed=3)
    geometry = solver._Geometry(positions, n, shape, torch.device("cpu"), subpixel=True)
    batch = geometry.batch(torch.arange(6), torch.ones(6, n, n))
    out = sweeps.project(torch.ones(shape[0] * shape[1], dtype=torch.complex64), probe, batch)
    _, frac = physics.split_positions(positions, n, shape)
    for mode in range(2):
        np.testing.assert_allclose(
            out.ps[:, mode].numpy(), physics.shifted_probes(probe[mode].numpy(), frac), atol=2e-5
        )
    h = _random((6, 2, n, n), seed=4)
    shifted_dot_h = torch.sum(out.ps.conj() * h)  # <S p, h>
    p_dot_adjoint = torch.sum(probe.conj() * sweeps.unshift_sum(h.clone(), batch.ramp_axes))  # <p, S* h>
    assert complex(shifted_dot_h) == pytest.approx(complex(p_dot_adjoint), rel=1e-4)


def test_reconstruction_is_the_same_on_either_fft():
    if not fourier.fftw_available():
        pytest.skip("pyfftw does not import: one path only")
    obj = physics.complex_object(np.full((64, 64), 0.9), _random((64, 64)).real.numpy(), phase_range_rad=1.0)
    positions = physics.fermat_positions(40, 4.0, centre=(32.0, 32.0))
    probe = physics.make_probe(16, aperture_px=8, defocus_phase_rad=1.0)
    patterns = physics.simulate_patterns(obj, probe, positions, photons_per_pattern=1e5, rng=0)
    kw = {"object_shape": (64, 64), "epochs": 4, "batch_size": 8, "method": "lsq"}
    fftw = solver.reconstruct(patterns, positions, probe, **kw)
    with fourier.torch_fft_only():
        assert not fourier.fftw_available()
        plain = solver.reconstruct(patterns, positions, probe, **kw)
    assert fourier.fftw_available()
    np.testing.assert_allclose(fftw.object, plain.object, atol=1e-4)
    np.testing.assert_allclose(fftw.loss, plain.loss, rtol=1e-4)
