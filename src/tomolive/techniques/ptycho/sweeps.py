"""One mini-batch of a ptychographic sweep, in torch: PIE-family and least-squares updates.

The object lives flattened (``H*W`` complex64) so a batch's windows are one ``index_select``
and their updates one ``scatter_add_`` (overlaps sum; twice as fast as ``index_add_`` on CPU).
Sub-pixel positions shift the probe by a Fourier phase ramp built per batch as the outer product
of two 1D ramps (see physics.py). Measured amplitudes are stored ``ifftshift``-ed so no shift is
needed per sweep. Inverse FFTs are unnormalised (fourier.py): their ``1/(n*n)`` rides on the
ramps and on the modulus factor. The probe is (modes, n, n): incoherent modes whose intensities
add in the far field; exit waves and their corrections carry a mode axis, (B, modes, n, n).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree

from .fourier import fft2, ifft2_unnormalised

EPS = 1e-6
LSQ_DELTA = 0.3  # preconditioner floor, relative to the illumination maximum (0.1 with batch-summed illumination)
LSQ_DAMPING = 0.1  # relative Tikhonov damping of the 2x2 step-size system (object and probe steps correlate)


@dataclass
class Batch:
    """Everything a sweep needs about one mini-batch of positions."""

    idx: torch.Tensor  # (B*n*n,) int64 flat object indices of the windows
    amp: torch.Tensor  # (B, 1, n, n) float32 measured amplitudes, DC at [0, 0]
    ramp: torch.Tensor | None  # (B, 1, n, n) complex64 sub-pixel shift ramps / (n*n), or None (no sub-pixel shift)
    ramp_axes: tuple[torch.Tensor, torch.Tensor] | None  # ramp's factors: rows (B, 1, n, 1), columns (B, 1, 1, n)


@dataclass
class BatchOut:
    """What a modulus projection leaves: windows, shifted probes, exit waves and their correction."""

    ob: torch.Tensor  # (B, 1, n, n) object windows
    ps: torch.Tensor  # (B, modes, n, n) probe modes as seen at each position (shifted)
    chi: torch.Tensor  # (B, modes, n, n) corrected minus modelled exit waves
    err: torch.Tensor  # scalar: sum of squared amplitude misfit


def abs2(x: torch.Tensor) -> torch.Tensor:
    """|x|^2 of a complex tensor as float32 (a third of the time of ``x.abs()**2`` on CPU)."""
    parts = torch.view_as_real(x).square()
    return torch.add(parts[..., 0], parts[..., 1])


def abs2_sum(x: torch.Tensor) -> torch.Tensor:
    """``sum |x|^2`` over axis 0, keeping it as length 1 (the squares summed before re and im meet)."""
    parts = torch.view_as_real(x).square().sum(0, keepdim=True)
    return torch.add(parts[..., 0], parts[..., 1])


def scale_(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Multiply complex ``x`` in place by real ``w`` (broadcast; much faster than through ``view_as_real``)."""
    return x.mul_(w)


def mode_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over the mode axis (1) of (B, modes, ...), kept as length 1; ``x`` itself for one mode."""
    return x if x.shape[1] == 1 else x.sum(1, keepdim=True)


def project(obj_flat: torch.Tensor, probe: torch.Tensor, batch: Batch) -> BatchOut:
    """Forward model and modulus projection of one batch: chi = P_M(psi) - psi, every mode
    scaled by the one factor that makes the modes' summed intensity match the measurement."""
    modes, n = probe.shape[0], probe.shape[-1]
    ob = obj_flat.index_select(0, batch.idx).view(-1, 1, n, n)
    if batch.ramp is not None:
        ps = ifft2_unnormalised(fft2(probe) * batch.ramp, overwrite_x=True)
    else:
        ps = probe.expand(ob.shape[0], modes, n, n)
    psi = ps * ob
    spec = fft2(psi)
    mag = mode_sum(abs2(spec)).sqrt_()
    err = (mag - batch.amp).square_().sum()
    scale_(spec, batch.amp / mag.add_(EPS).mul_(n * n))
    chi = ifft2_unnormalised(spec, overwrite_x=True).sub_(psi)
    return BatchOut(ob, ps, chi, err)


def unshift_sum(g: torch.Tensor, ramp_axes: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """Sum over the batch of per-position probe-frame terms (B, modes, n, n), each shifted back by
    its sub-pixel ramp (the adjoint of the shift in :func:`project`): (modes, n, n). ``g`` is
    overwritten. The conjugate ramp is applied one axis at a time: no (B, n, n) conjugate is made."""
    if ramp_axes is None:
        return g.sum(0)
    rows, cols = ramp_axes
    return ifft2_unnormalised(fft2(g, overwrite_x=True).mul_(rows.conj()).mul_(cols.conj()).sum(0))


def pie_update(
    obj_flat: torch.Tensor,
    probe: torch.Tensor,
    batch: Batch,
    *,
    alpha: float,
    beta: float,
    update_probe: bool,
) -> tuple[torch.Tensor, BatchOut]:
    """rPIE update of object (in place) and probe; returns (new probe, the batch's projection).

    Object, at each window: ``conj(P) chi / ((1 - alpha) |P|^2 + alpha max |P|^2)`` (alpha = 1 is
    ePIE), added into the object (``scatter_add_``). The batch's positions lie a probe diameter
    apart (:func:`separated_batches`), so their updates do not interact and the batch steps as
    far as sequential ePIE would. Probe: the batch's mean ePIE/rPIE step, beta, for every mode.
    ``|P|^2`` and ``conj(P) chi`` are summed over the modes.
    """
    out = project(obj_flat, probe, batch)
    step = mode_sum(out.chi * out.ps.conj())
    if alpha == 1.0:  # ePIE needs only the peak: the probe's own, one window's worth of work
        _rpie_divide_(step, None, abs2_sum(probe).amax(), alpha)
    else:
        illumination = mode_sum(abs2(out.ps))
        _rpie_divide_(step, illumination, illumination.amax(), alpha)
    obj_flat.scatter_add_(0, batch.idx, step.view(-1))
    if update_probe:
        grad, o2 = probe_gradient(out, batch.ramp_axes)
        probe = probe + _rpie_divide_(grad, o2, o2.max(), beta)
    return probe, out


def _rpie_divide_(step: torch.Tensor, weight: torch.Tensor | None, peak: torch.Tensor, alpha: float) -> torch.Tensor:
    """``step / ((1 - alpha) weight + alpha peak)`` in place (``weight`` is unused, and may be None, at alpha = 1)."""
    if alpha == 1.0 or weight is None:
        return step.mul_(peak.reciprocal())  # complex div_ by a real scalar is 8x slower on CPU
    return scale_(step, weight.mul_(1.0 - alpha).add_(alpha * peak).reciprocal_())


def probe_gradient(
    out: BatchOut, ramp_axes: tuple[torch.Tensor, torch.Tensor] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``sum conj(O) chi`` over the batch, shifted back to the probe's frame (modes, n, n), and
    ``sum |O|^2`` (1, n, n), the probe step's preconditioner."""
    return unshift_sum(out.chi * out.ob.conj(), ramp_axes), abs2_sum(out.ob)[0]


def separated_batches(
    positions: np.ndarray, distance: float, batch_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Positions (indices) in batches of at most ``batch_size`` whose members lie ``distance`` or more apart.

    Greedy first fit in a random order: each position joins the first batch with room and no
    member nearer than ``distance`` (a probe diameter: the updates of one batch then touch
    disjoint lit areas). Dense or small scans give smaller batches, never closer ones.
    """
    pairs = cKDTree(positions).query_pairs(distance, output_type="ndarray")
    neighbours: list[list[int]] = [[] for _ in range(len(positions))]
    for a, b in pairs:
        neighbours[a].append(b)
        neighbours[b].append(a)
    batch_of = np.full(len(positions), -1)
    batches: list[list[int]] = []
    for index in rng.permutation(len(positions)):
        taken = {batch_of[j] for j in neighbours[index]}
        home = next((k for k, members in enumerate(batches) if len(members) < batch_size and k not in taken), None)
        if home is None:
            home = len(batches)
            batches.append([])
        batches[home].append(int(index))
        batch_of[index] = home
    return [np.asarray(members) for members in batches]


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Re sum conj(a) b, over everything."""
    ra, rb = torch.view_as_real(a), torch.view_as_real(b)
    return (ra * rb).sum()


def lsq_update(
    obj_flat: torch.Tensor,
    probe: torch.Tensor,
    batch: Batch,
    *,
    update_probe: bool,
) -> tuple[torch.Tensor, BatchOut]:
    """Least-squares (LSQML-like) mini-batch step: preconditioned directions, optimal step sizes.

    Directions ``dO = conj(P) chi / (|P|^2 + delta)`` at each window and ``dP = sum conj(O) chi /
    (sum |O|^2 + delta)``; the step sizes ``(a, b)`` minimise ``|| chi - a P dO - b dP O ||^2`` over
    the batch and the modes (a 2x2 normal system), clamped to [0, 1.5]. The batch's positions lie
    a probe diameter apart (:func:`separated_batches`), so ``a dO`` is added into the object as is.
    """
    out = project(obj_flat, probe, batch)
    p2 = mode_sum(abs2(out.ps))
    d_obj = scale_(mode_sum(out.chi * out.ps.conj()), p2.add_(LSQ_DELTA * p2.amax()).reciprocal_())
    u = out.ps * d_obj
    if update_probe:
        grad, o2 = probe_gradient(out, batch.ramp_axes)
        d_probe = scale_(grad, 1.0 / (o2 + LSQ_DELTA * o2.max()))
        v = d_probe * out.ob
        a11, a12, a22 = _dot(u, u), _dot(u, v), _dot(v, v)
        a11, a22 = a11 * (1 + LSQ_DAMPING), a22 * (1 + LSQ_DAMPING)
        b1, b2 = _dot(u, out.chi), _dot(v, out.chi)
        det = a11 * a22 - a12 * a12 + 1e-20
        step_o = ((a22 * b1 - a12 * b2) / det).clamp(0.0, 1.5)
        step_p = ((a11 * b2 - a12 * b1) / det).clamp(0.0, 1.5)
        probe = probe + step_p * d_probe
    else:
        step_o = (_dot(u, out.chi) / (_dot(u, u) + 1e-20)).clamp(0.0, 1.5)
    obj_flat.scatter_add_(0, batch.idx, d_obj.mul_(step_o).view(-1))
    return probe, out


def object_gradients(obj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Central-difference gradients of the (H, W) object along rows and columns, flattened."""
    grad_r = torch.zeros_like(obj)
    grad_c = torch.zeros_like(obj)
    grad_r[1:-1] = (obj[2:] - obj[:-2]) * 0.5
    grad_c[:, 1:-1] = (obj[:, 2:] - obj[:, :-2]) * 0.5
    return grad_r.view(-1), grad_c.view(-1)


def position_shift(out: BatchOut, grads: tuple[torch.Tensor, torch.Tensor], batch: Batch) -> torch.Tensor:
    """Least-squares position correction (B, 2) (rows, cols) px for each position of the batch.

    Linearises ``psi(x + dx) = P O(r + x + dx) ~ psi + dx . P grad O`` and solves for ``dx``
    per position from the exit-wave correction ``chi`` (one 2x2 system each).
    """
    n = out.ob.shape[-1]
    gr = out.ps * grads[0].index_select(0, batch.idx).view(-1, 1, n, n)
    gc = out.ps * grads[1].index_select(0, batch.idx).view(-1, 1, n, n)
    rr, cc, rc = (_dots(gr, gr), _dots(gc, gc), _dots(gr, gc))
    br, bc = _dots(gr, out.chi), _dots(gc, out.chi)
    det = rr * cc - rc * rc
    det = torch.where(det.abs() > 1e-20, det, torch.full_like(det, float("inf")))
    return torch.stack([(cc * br - rc * bc) / det, (rr * bc - rc * br) / det], dim=1)


def _dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Re sum conj(a) b per batch element (over its modes and pixels), (B,)."""
    return (torch.view_as_real(a) * torch.view_as_real(b)).flatten(1).sum(1)
