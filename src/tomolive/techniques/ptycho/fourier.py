"""2D FFTs over the last two axes of complex64 torch tensors: FFTW on the CPU, torch.fft elsewhere.

On the CPU, where ``pyfftw`` imports, transforms run through FFTW plans (``FFTW_ESTIMATE``: no
planning time, as fast here as measured plans), one cache per thread because a pyfftw plan object
is not safe to share. torch's CPU FFT (MKL) takes about twice as long for the solver's 64^2
batches on this project's AMD machines. CUDA tensors, other dtypes, or no pyfftw: ``torch.fft``.

Both paths share one convention: ``fft2`` is unnormalised and so is ``ifft2_unnormalised`` (its
result is ``n*n`` times the inverse), so callers fold the ``1/(n*n)`` into a factor they apply
anyway. ``overwrite_x=True`` lets a transform reuse its input's memory, as in ``scipy.fft``: the
input's contents are undefined afterwards.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

try:
    import pyfftw
except ImportError:  # torch.fft serves every call
    pyfftw = None

_local = threading.local()


_fftw_off = False


def fftw_available() -> bool:
    """Whether CPU transforms run through FFTW."""
    return pyfftw is not None and not _fftw_off


@contextlib.contextmanager
def torch_fft_only() -> Iterator[None]:
    """Within the block, every transform goes through torch.fft (to compare the two; process-wide)."""
    global _fftw_off
    before, _fftw_off = _fftw_off, True
    try:
        yield
    finally:
        _fftw_off = before


def fft2(x: torch.Tensor, *, overwrite_x: bool = False) -> torch.Tensor:
    """Unnormalised forward 2D FFT over the last two axes."""
    if _use_fftw(x):
        return _fftw(x, "FFTW_FORWARD", overwrite_x)
    return torch.fft.fft2(x)


def ifft2_unnormalised(x: torch.Tensor, *, overwrite_x: bool = False) -> torch.Tensor:
    """Unnormalised inverse 2D FFT over the last two axes: ``n*n * ifft2(x)`` for (..., n, n)."""
    if _use_fftw(x):
        return _fftw(x, "FFTW_BACKWARD", overwrite_x)
    return torch.fft.ifft2(x, norm="forward")


def _use_fftw(x: torch.Tensor) -> bool:
    return fftw_available() and x.device.type == "cpu" and x.dtype == torch.complex64 and x.dim() >= 2


def _fftw(x: torch.Tensor, direction: str, overwrite_x: bool) -> torch.Tensor:
    if not x.is_contiguous() or x.is_conj() or x.data_ptr() % pyfftw.simd_alignment:
        x, overwrite_x = torch.empty(x.shape, dtype=x.dtype).copy_(x), True  # a private, aligned copy
    out = x if overwrite_x else torch.empty_like(x)
    plan = _plan(tuple(x.shape), direction, overwrite_x)
    plan.update_arrays(x.numpy(), out.numpy())
    plan.execute()  # FFTW's own transform: unnormalised both ways (calling the plan would scale one)
    return out


def _plan(shape: tuple[int, ...], direction: str, in_place: bool):
    """The calling thread's FFTW plan for this shape, direction and placement (made once)."""
    plans = getattr(_local, "plans", None)
    if plans is None:
        plans = _local.plans = {}
    threads = torch.get_num_threads()
    key = (shape, direction, in_place, threads)
    plan = plans.get(key)
    if plan is None:
        src = pyfftw.empty_aligned(shape, dtype="complex64")
        dst = src if in_place else pyfftw.empty_aligned(shape, dtype="complex64")
        plan = plans[key] = pyfftw.FFTW(
            src, dst, axes=(-2, -1), direction=direction, flags=("FFTW_ESTIMATE",), threads=threads
        )
    return plan
