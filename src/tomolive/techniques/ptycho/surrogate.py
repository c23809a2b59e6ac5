"""A PtychoNN-class surrogate: one diffraction pattern -> the amplitude and phase of its object patch.

The network (after Cherukara et al., PtychoNN) is a shared convolutional encoder and two
decoders, one for amplitude (sigmoid, scaled) and one for phase (tanh times pi). It is trained
on pairs made from earlier scans or views: each measured pattern and the patch of the
*iterative solver's* object under the probe there (labels from the accurate solver, no ground
truth), with the solver's phase offset and ramp removed over the scanned area so that labels
from different scans share one reference. The phase loss is ``1 - cos`` of the difference, so
labels near +-pi do not wrap.

Use: predicted patches are stitched into a live image, weighted by the probe's intensity
(:func:`stitch`). A pattern is invariant to a patch's constant phase, so the surrogate's
phase is only as good as what the sample's texture tells it; :func:`check_trust` compares the
stitched phase with a few iterative sweeps on a compact subset of positions, and the
surrogate is *not trusted* (the live preview falls back to iterative sweeps) when that phase
NRMSE is above the threshold. Positions are rounded to whole pixels when patches are cut out
and stitched (the surrogate's preview ignores sub-pixel rests; the solver does not).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ...errors import BadInputError
from ...ml.device import choose_device
from .metrics import phase_nrmse, scanned_mask
from .physics import extract_patches, insert_patches, split_positions
from .tomo3d import view_phases

KIND = "ptychonn"


class PtychoNN(nn.Module):
    """Encoder-decoder: raw intensities ``(B, n, n)`` -> amplitude and phase ``(B, n, n)``.

    ``levels`` down blocks (two 3x3 conv + ReLU, 2x2 max-pool), channels doubling from
    ``channels``; each decoder mirrors them with bilinear up-sampling. Inputs are
    ``log1p(I) / input_scale`` (a buffer set from the training patterns).
    """

    def __init__(self, n: int = 32, channels: int = 16, levels: int = 3):
        super().__init__()
        if n % (2**levels):
            raise BadInputError(f"n: the pattern size must be a multiple of 2**levels = {2**levels}; got {n!r}")
        self.arch = {"n": n, "channels": channels, "levels": levels}
        widths = [channels * 2**i for i in range(levels)]
        down: list[nn.Module] = []
        for c_in, c_out in zip([1, *widths[:-1]], widths):
            down += [*_convs(c_in, c_out), nn.MaxPool2d(2)]
        self.encoder = nn.Sequential(*down)
        self.amplitude_head = _decoder(widths, nn.Sigmoid())
        self.phase_head = _decoder(widths, nn.Tanh())
        self.register_buffer("input_scale", torch.ones(()))
        self.register_buffer("amplitude_max", torch.ones(()))

    def forward(self, patterns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.log1p(patterns.clamp_min(0)).unsqueeze(1) / self.input_scale
        code = self.encoder(x)
        amplitude = self.amplitude_head(code).squeeze(1) * self.amplitude_max
        phase = self.phase_head(code).squeeze(1) * np.pi
        return amplitude, phase


def _convs(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU()]


def _decoder(widths: list[int], last: nn.Module) -> nn.Sequential:
    up: list[nn.Module] = []
    for c_in, c_out in zip(widths[::-1], [*widths[::-1][1:], widths[0]]):
        up += [*_convs(c_in, c_out), nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)]
    return nn.Sequential(*up, nn.Conv2d(widths[0], 1, 3, padding=1), last)


def build(arch: dict[str, Any]) -> PtychoNN:
    """The network of ``arch`` (the model store's builder for kind ``"ptychonn"``)."""
    return PtychoNN(int(arch["n"]), int(arch["channels"]), int(arch["levels"]))


BUILDERS = {KIND: build}
"""Builders for :func:`tomolive.ml.model_store.load_module`."""


def training_pairs(
    patterns: np.ndarray, positions: np.ndarray, obj: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(patterns, amplitude patches, phase patches) from one scan and the solver's object ``obj``.

    The object's phase offset and linear ramp are removed over the scanned area first (so
    labels from different scans share a reference); patches are cut at the rounded positions.
    """
    patterns = np.asarray(patterns, dtype=np.float32)
    if patterns.ndim != 3 or patterns.shape[1] != patterns.shape[2] or len(patterns) != len(positions):
        raise BadInputError(
            f"patterns: expected (N, n, n) with N = {len(positions)} positions; got shape {patterns.shape!r}"
        )
    if not np.iscomplexobj(obj) or obj.ndim != 2:
        raise BadInputError(f"obj: expected the solver's 2D complex object; got {obj.dtype} {obj.shape!r}")
    n = patterns.shape[1]
    top, _ = split_positions(positions, n, obj.shape)
    mask = scanned_mask(obj.shape, positions, n)
    phase = view_phases(obj[None], mask)[0][0]
    return patterns, extract_patches(np.abs(obj), top, n).astype(np.float32), extract_patches(phase, top, n)


@dataclass
class TrainSummary:
    """What training did: epochs, seconds, per-epoch loss, hyper-parameters (for the model store)."""

    epochs: int
    seconds: float
    loss: list[float]
    hyperparameters: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "seconds": round(self.seconds, 3),
            "loss": [round(v, 6) for v in self.loss],
            "hyperparameters": self.hyperparameters,
        }


def train_surrogate(
    patterns: np.ndarray,
    amplitude: np.ndarray,
    phase: np.ndarray,
    *,
    epochs: int = 30,
    batch_size: int = 32,
    lr: float = 2e-3,
    channels: int = 16,
    levels: int = 3,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[PtychoNN, TrainSummary]:
    """Train a :class:`PtychoNN` on pairs from :func:`training_pairs` (Adam, amplitude MSE + phase 1-cos)."""
    if not (len(patterns) == len(amplitude) == len(phase)) or len(patterns) < batch_size:
        raise BadInputError(f"training pairs: expected >= {batch_size} of each, got {len(patterns)}, {len(phase)}")
    torch.manual_seed(seed)
    dev = choose_device(device)
    net = PtychoNN(patterns.shape[1], channels, levels)
    net.input_scale.fill_(float(np.log1p(np.maximum(patterns, 0)).max()) or 1.0)
    net.amplitude_max.fill_(max(float(amplitude.max()) * 1.2, 1e-6))
    net.to(dev).train()
    x, a, p = (torch.as_tensor(np.asarray(v, dtype=np.float32), device=dev) for v in (patterns, amplitude, phase))
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, epochs)
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    start = time.perf_counter()
    for _ in range(epochs):
        total = 0.0
        order = torch.randperm(len(x), generator=generator).to(dev)
        for batch in order.split(batch_size):
            amp, ph = net(x[batch])
            loss = torch.mean((amp - a[batch]) ** 2) + torch.mean(1 - torch.cos(ph - p[batch]))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch)
        schedule.step()
        losses.append(total / len(x))
    hyper = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, **net.arch}
    return net.eval(), TrainSummary(epochs, time.perf_counter() - start, losses, hyper)


@torch.no_grad()
def predict(net: PtychoNN, patterns: np.ndarray, *, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Amplitude and phase patches ``(N, n, n)`` float32 for ``patterns`` (one forward pass per batch)."""
    n = int(net.arch["n"])
    patterns = np.asarray(patterns, dtype=np.float32)
    if patterns.ndim != 3 or patterns.shape[1:] != (n, n):
        raise BadInputError(f"patterns: expected (N, {n}, {n}) for this surrogate; got shape {patterns.shape!r}")
    device = next(net.parameters()).device
    out = [
        net(torch.from_numpy(chunk).to(device))
        for chunk in np.array_split(patterns, max(1, -(-len(patterns) // batch_size)))
    ]
    return (torch.cat([o[0] for o in out]).cpu().numpy(), torch.cat([o[1] for o in out]).cpu().numpy())


def stitch(
    amplitude: np.ndarray, phase: np.ndarray, positions: np.ndarray, probe: np.ndarray, object_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patches at ``positions`` -> (amplitude, phase, weight) images of ``object_shape``.

    Each pixel is the average of the patches over it weighted by the probe intensity there
    (where the pattern says most); phase is averaged as unit phasors so it never wraps.
    Pixels no probe reached have weight 0 and value 0.
    """
    n = amplitude.shape[-1]
    top, _ = split_positions(positions, n, object_shape)
    weight = np.broadcast_to(np.abs(np.asarray(probe).reshape(-1, n, n)[0]) ** 2, amplitude.shape)
    w_sum = insert_patches(np.zeros(object_shape), weight, top)
    a_sum = insert_patches(np.zeros(object_shape), weight * amplitude, top)
    phasor = insert_patches(np.zeros(object_shape, np.complex128), weight * np.exp(1j * phase), top)
    covered = w_sum > 1e-3 * w_sum.max()
    image_a = np.where(covered, a_sum / np.where(covered, w_sum, 1.0), 0.0)
    image_p = np.where(covered, np.angle(phasor), 0.0)
    return image_a.astype(np.float32), image_p.astype(np.float32), w_sum.astype(np.float32)


@dataclass(frozen=True)
class TrustReport:
    """The surrogate against a few iterative sweeps on a subset: trusted when ``nrmse <= threshold``."""

    nrmse: float
    threshold: float
    n_positions: int
    epochs: int
    seconds: float

    @property
    def trusted(self) -> bool:
        return bool(self.nrmse <= self.threshold)

    def as_dict(self) -> dict[str, Any]:
        return {
            "phase_nrmse": round(self.nrmse, 4),
            "threshold": self.threshold,
            "trusted": self.trusted,
            "n_positions": self.n_positions,
            "iterative_epochs": self.epochs,
            "seconds": round(self.seconds, 3),
        }


def compact_subset(positions: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` positions nearest the scan's middle: a patch the solver can close."""
    positions = np.asarray(positions, dtype=np.float64)
    middle = np.median(positions, axis=0)
    return np.argsort(np.linalg.norm(positions - middle, axis=1), kind="stable")[:count]


def check_trust(
    net: PtychoNN,
    patterns: np.ndarray,
    positions: np.ndarray,
    probe: np.ndarray,
    object_shape: tuple[int, int],
    *,
    subset: int = 64,
    epochs: int = 30,
    threshold: float = 0.15,
    method: str = "epie",
) -> TrustReport:
    """Stitched surrogate phase vs the iterative solver's, both from the ``subset`` central positions.

    The solver runs ``epochs`` sweeps over those patterns only; the NRMSE (offset and ramp
    removed, over the phase range; :func:`metrics.phase_nrmse`) is measured where the probe
    weight is at least a tenth of its maximum, away from the subset's ragged edge.
    """
    from .solver import reconstruct

    start = time.perf_counter()
    pick = compact_subset(positions, subset)
    sub_patterns, sub_positions = np.asarray(patterns)[pick], np.asarray(positions)[pick]
    result = reconstruct(sub_patterns, sub_positions, probe, object_shape=object_shape, method=method, epochs=epochs)
    amplitude, phase = predict(net, sub_patterns)
    image_a, image_p, weight = stitch(amplitude, phase, sub_positions, np.abs(result.probe), object_shape)
    inside = weight >= 0.1 * weight.max()
    nrmse = phase_nrmse(image_a * np.exp(1j * image_p), result.object, inside)
    return TrustReport(float(nrmse), threshold, len(pick), epochs, time.perf_counter() - start)
