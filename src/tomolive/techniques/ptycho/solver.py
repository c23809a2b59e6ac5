"""Batched iterative ptychography in torch (complex64, CPU or CUDA): ePIE, rPIE and least squares.

``reconstruct`` sweeps mini-batches of positions whose members lie a probe diameter apart
(``sweeps.separated_batches``, built once, visited in a random order each epoch), so a batch's
updates touch disjoint lit areas and each steps as far as sequential ePIE would; object and
probe are updated together (the probe from the second epoch on). Positions follow
physics.py: probe centres in object pixels, window top-left ``round(centre - n/2)``, the
sub-pixel rest applied as a Fourier shift of the probe (exact, costs two FFTs per position;
``subpixel=False`` rounds the positions instead). A probe of several modes (modes, n, n) is a
partially coherent beam: the modes' intensities add, each mode is updated from its own exit
waves, and after every epoch the modes are orthogonalised (the eigenvectors of their overlap
matrix, strongest first), as PtychoShelves and Pty-chi do. Optional position refinement moves each
position by the least-squares shift that best explains its exit-wave correction
(sweeps.position_shift), at most ``max_shift_px`` per epoch, the mean shift removed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from tomolive.errors import BadInputError

from . import fourier, metrics, physics, sweeps

METHODS = ("epie", "rpie", "lsq")
_DEFAULT_ALPHA = {"epie": 1.0, "rpie": 0.1, "lsq": 1.0}
KEEP_BATCHES_BYTES = 64 * 2**20
"""Batches (window indices, amplitudes, sub-pixel ramps: 20 bytes per pattern pixel) are built
once per view when they fit in this, else for every sweep (about 5 % of an epoch)."""


@dataclass
class PtychoResult:
    """A reconstruction: object (H, W) and probe (modes, n, n) complex64, positions (N, 2) as refined,
    per-epoch relative amplitude misfit ``loss`` and the median wall seconds per epoch."""

    object: np.ndarray
    probe: np.ndarray
    positions: np.ndarray
    loss: np.ndarray
    seconds_per_epoch: float


class _Geometry:
    """Probe windows on the device: flat window indices per position and sub-pixel ramps."""

    def __init__(self, positions: np.ndarray, n: int, shape: tuple[int, int], device: torch.device, subpixel: bool):
        self.n, self.shape, self.device, self.subpixel = n, shape, device, subpixel
        ar = torch.arange(n, device=device)
        self.offsets = (ar[:, None] * shape[1] + ar[None, :]).view(-1)
        self.set_positions(positions)

    def set_positions(self, positions: np.ndarray) -> None:
        top, frac = physics.split_positions(positions, self.n, self.shape)
        self.positions = np.asarray(positions, dtype=np.float64).copy()
        t = torch.as_tensor(top, device=self.device)
        self.base = t[:, 0] * self.shape[1] + t[:, 1]
        ramps = physics.axis_ramps(frac, self.n)
        ramps[:, 0] /= self.n * self.n  # the unnormalised inverse FFT's factor (sweeps.py)
        self.ramp_r = torch.as_tensor(ramps[:, 0].astype(np.complex64), device=self.device)
        self.ramp_c = torch.as_tensor(ramps[:, 1].astype(np.complex64), device=self.device)

    def clamp(self, positions: np.ndarray) -> np.ndarray:
        """Positions moved (if needed) so every window stays inside the object."""
        lo = self.n / 2.0
        hi = np.asarray(self.shape, dtype=np.float64) - self.n / 2.0 - 0.5
        return np.clip(positions, lo, hi)

    def batch(self, sel: torch.Tensor, amp: torch.Tensor) -> sweeps.Batch:
        idx = (self.base.index_select(0, sel)[:, None] + self.offsets[None, :]).view(-1)
        if not self.subpixel:
            return sweeps.Batch(idx=idx, amp=amp.index_select(0, sel)[:, None], ramp=None, ramp_axes=None)
        rows = self.ramp_r.index_select(0, sel)[:, None, :, None]
        cols = self.ramp_c.index_select(0, sel)[:, None, None, :]
        return sweeps.Batch(idx=idx, amp=amp.index_select(0, sel)[:, None], ramp=rows * cols, ramp_axes=(rows, cols))


def _check_inputs(
    patterns: np.ndarray, positions: np.ndarray, probe: np.ndarray, object_shape, method, epochs, batch_size
):
    if method not in METHODS:
        raise BadInputError(f"method must be one of {METHODS}, got {method!r}")
    if epochs < 1 or batch_size < 1:
        raise BadInputError(f"epochs and batch_size must be >= 1, got {epochs!r} and {batch_size!r}")
    if patterns.ndim != 3 or patterns.shape[1] != patterns.shape[2] or len(patterns) == 0:
        raise BadInputError(f"patterns must be (N, n, n) with N >= 1, got shape {patterns.shape!r}")
    if not np.all(np.isfinite(patterns)):
        raise BadInputError(f"patterns contain NaN or inf ({int(np.sum(~np.isfinite(patterns)))} values)")
    if patterns.min() < 0:
        raise BadInputError(f"patterns must be non-negative intensities, min is {float(patterns.min())!r}")
    n = patterns.shape[-1]
    if probe.shape[-2:] != (n, n) or probe.ndim not in (2, 3) or (probe.ndim == 3 and len(probe) == 0):
        raise BadInputError(
            f"probe must be (n, n) or (modes, n, n) with n = the patterns' {n}, got shape {probe.shape!r}"
        )
    if not np.all(np.isfinite(probe)) or not np.any(probe):
        raise BadInputError("probe must be finite and not all zero")
    if positions.shape != (len(patterns), 2):
        raise BadInputError(
            f"positions must be (N, 2) with N = {len(patterns)} patterns, got shape {positions.shape!r}"
        )
    if len(object_shape) != 2 or min(object_shape) < n:
        raise BadInputError(f"object_shape must be 2D and at least the probe's {n} px, got {tuple(object_shape)!r}")


def _initial_object(object_init: np.ndarray | None, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    if object_init is None:
        return torch.ones(shape, dtype=torch.complex64, device=device)
    init = np.asarray(object_init)
    if init.shape != shape or not np.all(np.isfinite(init)):
        raise BadInputError(f"object_init must be finite with object_shape {shape!r}, got shape {init.shape!r}")
    return torch.as_tensor(init.astype(np.complex64), device=device).clone()


def reconstruct(
    patterns: np.ndarray,
    positions: np.ndarray,
    probe: np.ndarray,
    *,
    object_shape: tuple[int, int],
    method: str = "epie",
    epochs: int = 50,
    batch_size: int = 16,
    refine_positions: bool = False,
    device: str = "cpu",
    object_init: np.ndarray | None = None,
    callback: Callable[[int, PtychoResult], None] | None = None,
    threads: int | None = None,
    alpha: float | None = None,
    beta: float = 1.0,
    subpixel: bool = True,
    max_shift_px: float = 0.5,
    probe_from_epoch: int = 0,
    momentum: float = 0.0,
    seed: int = 0,
) -> PtychoResult:
    """Reconstruct object and probe from far-field ``patterns`` (N, n, n), DC centred.

    Parameters
    ----------
    patterns, positions, probe
        Intensities (N, n, n); probe centres (N, 2) (row, col) in object pixels; the probe guess
        (n, n) or (modes, n, n) (``physics.add_probe_modes`` makes modes from one), rescaled to the
        data's mean photon count over all its modes.
    method
        ``"epie"`` (rPIE with alpha = 1), ``"rpie"`` (alpha 0.1) or ``"lsq"`` (least-squares
        mini-batch with optimal step sizes). ``alpha`` overrides the object's rPIE alpha;
        ``beta`` the probe's.
    refine_positions
        Correct positions from the third epoch (and after 20 % of the epochs) on.
    threads
        ``torch.set_num_threads`` for the call (restored after).

    Raises
    ------
    BadInputError
        Patterns with NaN/inf or negative values, shapes that disagree, positions whose probe
        window leaves the object, an unknown method.
    """
    patterns = np.asarray(patterns)
    positions = np.asarray(positions, dtype=np.float64)
    probe = np.asarray(probe)
    shape = (int(object_shape[0]), int(object_shape[1]))
    _check_inputs(patterns, positions, probe, shape, method, epochs, batch_size)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        dev = torch.device(device)
        with fourier.kept_plans():
            return _run(patterns, positions, probe, shape, method, epochs, batch_size, refine_positions, dev,
                    object_init, callback, _DEFAULT_ALPHA[method] if alpha is None else alpha, beta, subpixel,
                    max_shift_px, probe_from_epoch, momentum, seed)  # fmt: skip
    finally:
        torch.set_num_threads(old_threads)


def _momentum_(obj: torch.Tensor, snap: torch.Tensor, velocity: torch.Tensor | None, eta: float) -> torch.Tensor:
    """Per-epoch object momentum (as mPIE): ``v = eta v + (O - O_start)``; ``O += eta v_old``... in place."""
    change = obj - snap
    if velocity is not None:
        obj.add_(velocity, alpha=eta)
        change.add_(velocity, alpha=eta)
    return change


def _run(patterns, positions, probe, shape, method, epochs, batch_size, refine, dev, object_init, callback,
         alpha, beta, subpixel, max_shift_px, probe_from, momentum, seed) -> PtychoResult:  # fmt: skip
    n = patterns.shape[-1]
    geom = _Geometry(positions, n, shape, dev, subpixel)
    amp = torch.as_tensor(np.sqrt(np.fft.ifftshift(patterns.astype(np.float32), axes=(-2, -1))), device=dev)
    p0 = probe.reshape(-1, n, n).astype(np.complex64)
    p0 = p0 * np.float32(np.sqrt(float(patterns.sum(axis=(1, 2)).mean()) / (n * n * float(np.sum(np.abs(p0) ** 2)))))
    prb = torch.as_tensor(p0, device=dev)
    obj = _initial_object(object_init, shape, dev)
    obj_flat = obj.view(-1)
    rng = np.random.default_rng(seed)
    batches = [torch.as_tensor(b, device=dev) for b in
               sweeps.separated_batches(positions, metrics.probe_diameter(p0), batch_size, rng)]  # fmt: skip

    def built() -> list[sweeps.Batch]:
        """Every batch of the view, when they fit in KEEP_BATCHES_BYTES; else none (built per sweep)."""
        return [geom.batch(sel, amp) for sel in batches] if amp.numel() * 20 <= KEEP_BATCHES_BYTES else []

    kept = built()
    total = float((amp.double() ** 2).sum())
    gen = torch.Generator(device="cpu").manual_seed(seed)
    refine_from = max(2, epochs // 5)
    velocity: torch.Tensor | None = None
    losses: list[float] = []
    times: list[float] = []

    def result() -> PtychoResult:
        return PtychoResult(obj.cpu().numpy().copy(), prb.cpu().numpy().copy(), geom.positions.copy(),
                            np.asarray(losses), float(np.median(times)) if times else float("nan"))  # fmt: skip

    for epoch in range(epochs):
        t0 = time.perf_counter()
        order = torch.randperm(len(batches), generator=gen).tolist()
        upd_probe = epoch >= probe_from
        shifts = torch.zeros((len(patterns), 2), dtype=torch.float32, device=dev) if refine else None
        grads = sweeps.object_gradients(obj) if refine and epoch >= refine_from else None
        err = torch.zeros((), device=dev)
        snap = obj.clone() if momentum > 0 else None
        for k in order:
            sel = batches[k]
            batch = kept[k] if kept else geom.batch(sel, amp)
            if method == "lsq":
                prb, out = sweeps.lsq_update(obj_flat, prb, batch, update_probe=upd_probe)
            else:
                prb, out = sweeps.pie_update(obj_flat, prb, batch, alpha=alpha, beta=beta, update_probe=upd_probe)
            err += out.err
            if grads is not None and shifts is not None:
                shifts[sel] = sweeps.position_shift(out, grads, batch).float()
        if snap is not None:
            velocity = _momentum_(obj, snap, velocity, momentum)
        if upd_probe and len(prb) > 1:
            prb = orthogonal_modes(prb)
        if grads is not None and shifts is not None:
            step = shifts.cpu().numpy().astype(np.float64)
            step = np.clip(np.nan_to_num(step), -max_shift_px, max_shift_px)
            geom.set_positions(geom.clamp(geom.positions + step - step.mean(axis=0)))
            kept = built()
        losses.append(float(err) / total)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t0)
        if callback is not None:
            callback(epoch, result())
    return result()


def orthogonal_modes(probe: torch.Tensor) -> torch.Tensor:
    """Probe modes (modes, n, n) made orthogonal, strongest first, spanning the same space and
    keeping the summed intensity ``sum_k |P_k|^2`` (the eigenvectors of the modes' overlap matrix)."""
    flat = probe.reshape(len(probe), -1)
    _, vectors = torch.linalg.eigh(flat @ flat.conj().T)
    return (vectors.flip(1).conj().T @ flat).reshape(probe.shape)


def data_error(
    patterns: np.ndarray, positions: np.ndarray, probe: np.ndarray, obj: np.ndarray, *, batch_size: int = 64
) -> float:
    """The relative amplitude misfit ``sum (|F(P O)| - sqrt(I))^2 / sum I`` of an object and probe
    (the units of :class:`PtychoResult`'s ``loss``), e.g. for a result of another solver."""
    n = patterns.shape[-1]
    dev = torch.device("cpu")
    geom = _Geometry(np.asarray(positions, dtype=np.float64), n, obj.shape, dev, True)
    amp = torch.as_tensor(np.sqrt(np.fft.ifftshift(patterns.astype(np.float32), axes=(-2, -1))))
    obj_flat = torch.as_tensor(np.ascontiguousarray(obj, dtype=np.complex64)).view(-1)
    prb = torch.as_tensor(np.asarray(probe, dtype=np.complex64).reshape(-1, n, n))
    with fourier.kept_plans():
        err = sum(
            float(sweeps.project(obj_flat, prb, geom.batch(torch.arange(i, min(i + batch_size, len(amp))), amp)).err)
            for i in range(0, len(amp), batch_size)
        )
    return err / float((amp.double() ** 2).sum())
