"""2D FFTs over the last two axes of complex64 torch tensors: FFTW on the CPU, torch.fft elsewhere.

On the CPU, where ``pyfftw`` imports, transforms run through FFTW plans (``FFTW_ESTIMATE``: no
planning time, and as fast here as measured plans). torch's CPU FFT (MKL) takes about twice as
long for the solver's 64^2 batches on this project's AMD machines. CUDA tensors, other dtypes, or
no pyfftw: ``torch.fft``.

A plan is made per shape and kept only inside :func:`kept_plans` (the solver wraps a
reconstruction in it): the cache belongs to the calling thread, since a pyfftw plan object is
not safe to share, and it goes, with the arrays its plans last saw, when the block ends.

Both paths share one convention: ``fft2`` is unnormalised and so is ``ifft2_unnormalised`` (its
result is ``n*n`` times the inverse), so callers fold the ``1/(n*n)`` into a factor they apply
anyway. ``overwrite_x=True`` lets a transform reuse its input's memory, as in ``scipy.fft``: the
input's contents are undefined afterwards.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

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


@contextlib.contextmanager
def kept_plans() -> Iterator[None]:
    """Within the block, this thread's FFTW plans are made once per shape and reused (nested blocks share one cache)."""
    if getattr(_local, "plans", None) is not None:
        yield
        return
    _local.plans = {}
    try:
        yield
    finally:
        _local.plans = None


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


def _plan(shape: tuple[int, ...], direction: str, in_place: bool) -> Any:
    """A plan for this shape, direction and placement: the thread's kept one, else a new one."""
    plans = getattr(_local, "plans", None)
    threads = torch.get_num_threads()
    key = (shape, direction, in_place, threads)
    if plans is not None and key in plans:
        return plans[key]
    src = pyfftw.empty_aligned(shape, dtype="complex64")
    dst = src if in_place else pyfftw.empty_aligned(shape, dtype="complex64")
    plan = pyfftw.FFTW(src, dst, axes=(-2, -1), direction=direction, flags=("FFTW_ESTIMATE",), threads=threads)
    if plans is not None:
        plans[key] = plan
    return plan
