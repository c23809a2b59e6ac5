"""A PtychoNN-class surrogate: one far-field pattern -> the amplitude and phase of the lit object patch.

Trained on the *iterative* solver's results of earlier views or scans (no ground truth): each
measured pattern is paired with the patch of the solver's object under the probe there, and
more pairs are simulated exactly by re-illuminating the solver's objects with its probe at new
positions (:func:`training_set`). Labels are the central ``n/2`` square of each window (the lit
core of a probe whose aperture spans half its window), phase with each view's offset and ramp
removed.

A single pattern does not fix its patch's constant phase (``|F(P O e^{ic})|^2`` is the same
for every ``c``), so the phase loss is blind to it (``1 - |sum w e^{i(pred - label)}| / sum w``,
``w`` the probe intensity) and :func:`stitch` solves the per-patch offsets by least squares over
the overlaps before it averages the patches (as phasors, weighted by the probe intensity).
Without that step a network can only learn the mean phase: the flat image.

:func:`check_trust` forward-models the stitched object with the probe and compares it with the
measured amplitudes; the surrogate is trusted when its misfit, relative to the flat object's,
stays under the threshold calibrated on a validation view (:func:`calibrate`) and the training
set was large enough.
"""

from __future__ import annotations

import copy
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tomolive.errors import BadInputError

from . import metrics, physics

MIN_TRAINING_PAIRS = 1000
"""Below this many training pairs the surrogate is never trusted."""


class PtychoNN(nn.Module):
    """Pattern amplitudes ``(B, n, n)`` -> amplitude and phase of the central ``(B, n/2, n/2)`` patch.

    Conv encoder (three conv + max-pool levels), a dense layer at the ``n/8`` bottleneck (the
    inversion is global: every pattern pixel speaks for every object pixel), conv decoder to
    ``n/2``. Inputs are ``log1p(100 sqrt(I / flux))`` standardised with buffers set in training.
    """

    in_mean: torch.Tensor
    in_std: torch.Tensor

    def __init__(self, n: int = 32, channels: int = 16):
        super().__init__()
        if n % 8:
            raise BadInputError(f"n: the pattern size must be a multiple of 8, got {n!r}")
        c = channels
        self.arch = {"n": n, "channels": c}
        self.encoder = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * c, 4 * c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.bottleneck = (2 * c, n // 8)
        self.dense = nn.Sequential(nn.Flatten(), nn.Linear(4 * c * (n // 8) ** 2, 2 * c * (n // 8) ** 2), nn.ReLU())
        self.decoder = nn.Sequential(
            nn.Upsample(scale_factor=2), nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.ReLU(),
            nn.Upsample(scale_factor=2), nn.Conv2d(2 * c, c, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c, 2, 3, padding=1),
        )  # fmt: skip
        self.register_buffer("in_mean", torch.zeros(()))
        self.register_buffer("in_std", torch.ones(()))

    def forward(self, amplitudes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (torch.log1p(100.0 * amplitudes).unsqueeze(1) - self.in_mean) / self.in_std
        code = self.dense(self.encoder(x)).view(-1, self.bottleneck[0], self.bottleneck[1], self.bottleneck[1])
        out = self.decoder(code)
        return 1.0 + out[:, 0], out[:, 1]


def normalised_amplitudes(patterns: np.ndarray) -> np.ndarray:
    """``sqrt(I / flux)`` float32, ``flux`` the scan's mean counts per pattern (keeps relative transmission)."""
    patterns = np.asarray(patterns, dtype=np.float32)
    if patterns.ndim != 3 or patterns.shape[1] != patterns.shape[2] or len(patterns) == 0:
        raise BadInputError(f"patterns must be (N, n, n) with N >= 1, got shape {patterns.shape!r}")
    if not np.all(np.isfinite(patterns)) or patterns.min() < 0:
        raise BadInputError("patterns must be finite, non-negative intensities")
    flux = float(patterns.sum(axis=(1, 2)).mean())
    if flux <= 0:
        raise BadInputError("patterns hold no counts")
    return np.sqrt(patterns / flux).astype(np.float32)


def core_slice(n: int) -> slice:
    """Rows (and columns) of the central ``n/2`` square of an ``n`` window: the predicted patch."""
    return slice(n // 4, n // 4 + n // 2)


def view_labels(obj: np.ndarray, positions: np.ndarray, probe: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The solver's object as label images: amplitude (over its median) and phase (offset + ramp removed).

    Both are fitted over the area ``probe`` lit (metrics.illuminated_mask), so labels from
    different views share one reference. Phase is wrapped to (-pi, pi]. :func:`label_probe`
    gives the probe that matches these labels.
    """
    obj = np.asarray(obj)
    if not np.iscomplexobj(obj) or obj.ndim != 2:
        raise BadInputError(f"obj: expected the solver's 2D complex object, got {obj.dtype} {obj.shape!r}")
    mask = metrics.illuminated_mask(obj.shape, positions, probe)
    flat = metrics._unwrapped_difference(obj, np.ones_like(obj), mask)
    phase = np.angle(np.exp(1j * metrics.remove_phase_ramp(flat, mask)))
    amp = np.abs(obj)
    return (amp / max(float(np.median(amp[mask])), 1e-12)).astype(np.float32), phase.astype(np.float32)


def _probe2d(probe: np.ndarray) -> np.ndarray:
    p = np.asarray(probe)
    if p.ndim == 3:
        p = p[0]
    if p.ndim != 2 or p.shape[0] != p.shape[1]:
        raise BadInputError(f"probe must be (n, n) or (modes, n, n), got shape {np.asarray(probe).shape!r}")
    return p.astype(np.complex64)


def label_probe(obj: np.ndarray, positions: np.ndarray, probe: np.ndarray) -> np.ndarray:
    """The solver's probe times the linear phase ramp :func:`view_labels` took off its object.

    ``probe * object`` is what the data fix; this probe and the label object give the solver's
    exit waves (up to one constant phase per position), so they forward-model the data.
    """
    prb = _probe2d(probe)
    obj = np.asarray(obj)
    _, phase = view_labels(obj, positions, prb)
    mask = metrics.illuminated_mask(obj.shape, positions, prb)
    d = obj.astype(np.complex128) * np.exp(-1j * phase.astype(np.float64))
    both_r, both_c = mask[1:] & mask[:-1], mask[:, 1:] & mask[:, :-1]
    slope_r = np.angle(np.sum((d[1:] * np.conj(d[:-1]))[both_r]))
    slope_c = np.angle(np.sum((d[:, 1:] * np.conj(d[:, :-1]))[both_c]))
    y, x = np.mgrid[: prb.shape[0], : prb.shape[1]]
    return (prb * np.exp(1j * (slope_r * y + slope_c * x))).astype(np.complex64)


def extra_positions(positions: np.ndarray, n: int, shape: tuple[int, int], count: int, rng) -> np.ndarray:
    """``count`` new integer-window probe centres within 2 px of a scan position (the solved area)."""
    gen = np.random.default_rng(rng)
    lo, hi = positions.min(axis=0) - 2, positions.max(axis=0) + 2
    lo, hi = np.maximum(lo, n / 2), np.minimum(hi, np.asarray(shape) - n / 2)
    out: list[np.ndarray] = []
    while sum(len(o) for o in out) < count:
        cand = np.round(gen.uniform(lo, hi, (4 * count, 2)) - n / 2) + n / 2
        dist = np.min(np.linalg.norm(cand[:, None] - positions[None], axis=2), axis=1)
        out.append(cand[dist <= 2.0])
    return np.concatenate(out)[:count]


def training_set(
    patterns: np.ndarray,
    positions: np.ndarray,
    obj: np.ndarray,
    probe: np.ndarray,
    *,
    extra: int = 0,
    rng: int | None = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input amplitudes, amplitude labels, phase labels) of one solved view, ``(N + extra, ...)``.

    ``patterns``/``positions`` are the measured scan, ``obj``/``probe`` the iterative solver's
    result. ``extra`` more pairs are simulated from ``obj`` and ``probe`` (Poisson, the scan's
    flux) at new positions in the solved area: exact physics, still no ground truth. Labels are
    cut under the probe's first (strongest) mode; new patterns are lit by all its modes.
    """
    positions = np.asarray(positions, dtype=np.float64)
    prb = _probe2d(probe)
    n = prb.shape[0]
    amp_img, phase_img = view_labels(obj, positions, prb)
    pats, pos = [np.asarray(patterns, dtype=np.float32)], [positions]
    if extra > 0:
        new = extra_positions(positions, n, obj.shape, extra, rng)
        flux = float(np.mean(pats[0].sum(axis=(1, 2))))
        intensity = physics.far_field(obj, np.asarray(probe), new)  # every mode: the beam as solved
        intensity *= flux / float(np.mean(intensity.sum(axis=(1, 2))))
        pats.append(np.random.default_rng(rng).poisson(intensity).astype(np.float32))
        pos.append(new)
    inputs = np.concatenate([normalised_amplitudes(p) for p in pats])
    top, _ = physics.split_positions(np.concatenate(pos), n, obj.shape)
    top = top + n // 4
    return inputs, physics.extract_patches(amp_img, top, n // 2), physics.extract_patches(phase_img, top, n // 2)


@dataclass
class Surrogate:
    """A trained network with what it needs to be used and judged: the probe (:func:`label_probe`),
    the number of training pairs, the trust threshold and training's record."""

    net: PtychoNN
    probe: np.ndarray
    n_train: int
    threshold: float = float("inf")
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def weight(self) -> np.ndarray:
        """The probe intensity over the predicted core, max 1: the stitching weight."""
        core = core_slice(self.probe.shape[0])
        w = np.abs(self.probe[core, core]) ** 2
        return (w / w.max()).astype(np.float32)

    def predict(self, patterns: np.ndarray, *, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """Amplitude and phase patches ``(N, n/2, n/2)`` float32 of ``patterns`` (batched forward passes)."""
        x = normalised_amplitudes(patterns)
        n = int(self.net.arch["n"])
        if x.shape[1:] != (n, n):
            raise BadInputError(f"patterns: expected (N, {n}, {n}) for this surrogate, got {x.shape!r}")
        self.net.eval()
        amps, phases = [], []
        with torch.no_grad():
            for chunk in torch.from_numpy(x).split(batch_size):
                a, p = self.net(chunk)
                amps.append(a.numpy())
                phases.append(p.numpy())
        return np.concatenate(amps), np.concatenate(phases)

    def image(self, patterns: np.ndarray, positions: np.ndarray, object_shape: tuple[int, int]) -> np.ndarray:
        """The stitched complex object (:func:`stitch`) of a scan."""
        amp, phase = self.predict(patterns)
        return stitch(amp, phase, positions, self.weight, object_shape)


def _weighted_loss(pa, pp, ta, tp, w) -> torch.Tensor:
    """Amplitude MSE + offset-blind phase loss ``1 - |sum w e^{i(dp)}| / sum w``, both weighted by ``w``."""
    d = pp - tp
    re, im = (w * torch.cos(d)).sum(dim=(1, 2)), (w * torch.sin(d)).sum(dim=(1, 2))
    phase = 1.0 - torch.sqrt(re**2 + im**2 + 1e-12) / w.sum()
    amp = (w * (pa - ta) ** 2).sum(dim=(1, 2)) / w.sum()
    return (phase + amp).mean()


def train(
    inputs: np.ndarray,
    amplitude: np.ndarray,
    phase: np.ndarray,
    probe: np.ndarray,
    *,
    epochs: int = 12,
    batch_size: int = 64,
    lr: float = 2e-3,
    channels: int = 16,
    seed: int = 0,
    threads: int | None = None,
    init: PtychoNN | None = None,
) -> Surrogate:
    """Train a :class:`PtychoNN` on :func:`training_set` pairs (Adam, one-cycle schedule); CPU.

    ``init`` fine-tunes a copy of an earlier network (its architecture and input normalisation
    kept) instead of starting from random weights.
    """
    if not len(inputs) == len(amplitude) == len(phase) or len(inputs) < 2:
        raise BadInputError(f"training pairs disagree or are too few: {len(inputs)}, {len(amplitude)}, {len(phase)}")
    prb = _probe2d(probe)
    n = prb.shape[0]
    core = core_slice(n)
    weight = (np.abs(prb[core, core]) ** 2).astype(np.float32)
    weight /= weight.max()
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        torch.manual_seed(seed)
        x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
        if init is None:
            net = PtychoNN(n, channels)
            feats = torch.log1p(100.0 * x)
            net.in_mean.fill_(float(feats.mean()))
            net.in_std.fill_(float(feats.std()) or 1.0)
        else:
            net = copy.deepcopy(init)
        a, p, w = (torch.from_numpy(np.asarray(v, dtype=np.float32)) for v in (amplitude, phase, weight))
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        steps = epochs * -(-len(x) // batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
        gen = torch.Generator().manual_seed(seed)
        losses: list[float] = []
        t0 = time.perf_counter()
        net.train()
        for _ in range(epochs):
            total = 0.0
            for sel in torch.randperm(len(x), generator=gen).split(batch_size):
                amp_out, phase_out = net(x[sel])
                loss = _weighted_loss(amp_out, phase_out, a[sel], p[sel], w)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(sel)
            losses.append(total / len(x))
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(old)
    record = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "seconds": round(seconds, 2),
              "loss": [round(v, 5) for v in losses], "params": sum(q.numel() for q in net.parameters()), "fine_tuned": init is not None}  # fmt: skip
    return Surrogate(net.eval(), prb, len(x), record=record)


def _pair_offsets(phase: np.ndarray, weight: np.ndarray, top: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Per-patch constant phases ``c`` (N,) that best agree over overlaps (weighted least squares, mean 0).

    For overlapping patches i, j the overlap sum ``s_ij = sum w_i w_j e^{i(phi_i - phi_j)}`` is one
    lag of their cross-correlation (evaluated from zero-padded FFTs); ``c_i - c_j = angle(s_ij)``
    is solved with weights ``|s_ij|`` through the normal equations (a graph Laplacian).
    """
    n_patch, m = len(top), phase.shape[-1]
    diff = top[None, :, :] - top[:, None, :]
    ii, jj = np.nonzero(np.all(np.abs(diff) < m, axis=2) & np.triu(np.ones((n_patch,) * 2, bool), 1))
    if len(ii) == 0:
        return np.zeros(n_patch)
    spec = np.fft.fft2(weight[None] * np.exp(1j * phase), s=(2 * m, 2 * m)).astype(np.complex64)
    k = np.fft.fftfreq(2 * m).astype(np.float32)
    sums = np.empty(len(ii), np.complex64)
    for a in range(0, len(ii), chunk):
        i, j = ii[a : a + chunk], jj[a : a + chunk]
        d = diff[i, j].astype(np.float32)
        rows, cols = np.exp(2j * np.pi * d[:, 0, None] * k), np.exp(2j * np.pi * d[:, 1, None] * k)
        cross = spec[i] * np.conj(spec[j])
        sums[a : a + chunk] = np.einsum("pab,pa,pb->p", cross, rows, cols, optimize=True) / (2 * m) ** 2
    w, b = np.abs(sums).astype(np.float64), np.angle(sums).astype(np.float64)
    lap = np.zeros((n_patch, n_patch))
    np.add.at(lap, (ii, ii), w)
    np.add.at(lap, (jj, jj), w)
    np.add.at(lap, (ii, jj), -w)
    np.add.at(lap, (jj, ii), -w)
    rhs = np.zeros(n_patch)
    np.add.at(rhs, ii, w * b)
    np.add.at(rhs, jj, -w * b)
    lap += w.max() * 1e-6 * np.eye(n_patch) + w.max() / n_patch  # fixes the free constant (mean 0)
    return np.linalg.solve(lap, rhs)


def stitch(
    amplitude: np.ndarray,
    phase: np.ndarray,
    positions: np.ndarray,
    weight: np.ndarray,
    object_shape: tuple[int, int],
    *,
    align: bool = True,
) -> np.ndarray:
    """Core patches ``(N, m, m)`` at probe ``positions`` -> a complex64 object of ``object_shape``.

    ``align`` first removes each patch's constant phase (:func:`_pair_offsets`); patches are then
    averaged as phasors weighted by ``weight`` (the probe intensity over the core). Unlit pixels are 1.
    """
    m = phase.shape[-1]
    n = 2 * m
    top, _ = physics.split_positions(positions, n, object_shape)
    top = top + n // 4
    if align and len(top) > 1:
        phase = phase - _pair_offsets(phase, weight, top)[:, None, None]
    w = np.broadcast_to(weight, phase.shape)
    w_sum = physics.insert_patches(np.zeros(object_shape), w, top)
    a_sum = physics.insert_patches(np.zeros(object_shape), w * amplitude, top)
    ph_sum = physics.insert_patches(np.zeros(object_shape, np.complex128), w * np.exp(1j * phase), top)
    lit = w_sum > 1e-3 * w_sum.max()
    out = np.ones(object_shape, np.complex128)
    out[lit] = a_sum[lit] / w_sum[lit] * np.exp(1j * np.angle(ph_sum[lit]))
    return out.astype(np.complex64)


def misfit(obj: np.ndarray, probe: np.ndarray, patterns: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Per-pattern relative amplitude misfit ``sum (s|F(P O)| - sqrt(I))^2 / sum I`` (N,), ``s`` one scale fitted."""
    model = np.sqrt(physics.far_field(obj, _probe2d(probe), positions)).astype(np.float64)
    meas = np.sqrt(np.asarray(patterns, dtype=np.float64))
    scale = float(np.sum(model * meas) / max(float(np.sum(model**2)), 1e-30))
    return np.sum((scale * model - meas) ** 2, axis=(1, 2)) / np.maximum(np.sum(meas**2, axis=(1, 2)), 1e-30)


@dataclass(frozen=True)
class TrustReport:
    """The stitched image against the data: its misfit over the flat object's (``ratio``), the threshold,
    the training set's size; ``trusted`` only when both pass, with the reason when not."""

    ratio: float
    threshold: float
    misfit: float
    flat_misfit: float
    n_train: int
    trusted: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def misfit_ratio(
    sur: Surrogate,
    patterns: np.ndarray,
    positions: np.ndarray,
    object_shape: tuple[int, int],
    image: np.ndarray | None = None,
):
    """(ratio, surrogate misfit, flat misfit): mean misfits of the stitched (``image``, when
    already made) and of a flat (all-ones) object."""
    obj = sur.image(patterns, positions, object_shape) if image is None else image
    mine = float(np.mean(misfit(obj, sur.probe, patterns, positions)))
    flat = float(np.mean(misfit(np.ones(object_shape, np.complex64), sur.probe, patterns, positions)))
    return mine / max(flat, 1e-30), mine, flat


def calibrate(
    sur: Surrogate, patterns: np.ndarray, positions: np.ndarray, object_shape: tuple[int, int], *, margin: float = 1.5
) -> float:
    """Set (and return) ``sur.threshold``: ``margin`` times the misfit ratio on a validation scan it did not see.

    Needs only the measured patterns: no iterative solve of the validation scan.
    """
    ratio, _, _ = misfit_ratio(sur, patterns, positions, object_shape)
    sur.threshold = float(min(margin * ratio, 1.0))
    return sur.threshold


def check_trust(
    sur: Surrogate,
    patterns: np.ndarray,
    positions: np.ndarray,
    object_shape: tuple[int, int],
    *,
    min_train: int = MIN_TRAINING_PAIRS,
    image: np.ndarray | None = None,
) -> TrustReport:
    """Whether the surrogate's image of this scan (``image``, when already made) can be shown
    as is (see the module docstring)."""
    ratio, mine, flat = misfit_ratio(sur, patterns, positions, object_shape, image)
    reasons = []
    if sur.n_train < min_train:
        reasons.append(f"trained on {sur.n_train} pairs (< {min_train})")
    if not ratio <= sur.threshold:
        reasons.append(f"misfit {ratio:.3f} of the flat object's exceeds the threshold {sur.threshold:.3f}")
    return TrustReport(ratio, sur.threshold, mine, flat, sur.n_train, not reasons, "; ".join(reasons) or "ok")


def save(sur: Surrogate, path: str | Path | io.BytesIO) -> None:
    """Write the surrogate (architecture, weights, probe, threshold, record) with torch.save."""
    blob = {"arch": dict(sur.net.arch), "state": sur.net.state_dict(), "probe": torch.from_numpy(sur.probe),
            "n_train": sur.n_train, "threshold": sur.threshold, "record": sur.record}  # fmt: skip
    torch.save(blob, path)


def load(path: str | Path | io.BytesIO) -> Surrogate:
    """Read a surrogate written by :func:`save` (``weights_only``: no code is unpickled)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    net = PtychoNN(int(blob["arch"]["n"]), int(blob["arch"]["channels"]))
    net.load_state_dict(blob["state"])
    return Surrogate(net.eval(), blob["probe"].numpy(), int(blob["n_train"]), float(blob["threshold"]), blob["record"])
