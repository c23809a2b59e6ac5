"""A compact 2.5D U-Net for phase segmentation: the network, tiled inference and training steps.

The network sees ``2 * context + 1`` neighbouring slices as channels and labels the middle
one (2.5D: some 3D context for the price of 2D convolutions). Inputs are slices already
scaled by :func:`tomolive.segment.normalize` (pores near 0, dense phases near 1). Inference
runs on bounded tiles of bounded batches, so memory does not grow with the slice size.
:mod:`tomolive.segment` is the public entry point; this module knows nothing of volumes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import BadInputError

IGNORE = 255
"""Target value of unlabelled pixels (no loss)."""


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of :class:`UNet`; stored with the weights so they load without guessing.

    ``context`` slices each side are input channels; ``base`` channels at full resolution,
    doubled at each of ``depth`` halvings; ``norm`` is ``"batch"`` or ``"none"``.
    """

    context: int = 1
    n_classes: int = 3
    base: int = 16
    depth: int = 3
    norm: str = "batch"

    @property
    def in_channels(self) -> int:
        return 2 * self.context + 1

    @property
    def multiple(self) -> int:
        """Input sizes must be multiples of this (one halving per level)."""
        return 2**self.depth


def _norm(kind: str, channels: int) -> nn.Module:
    """Batch norm, or none. Not group/instance norm: their statistics span the whole input,
    so a tile's labels would depend on the rest of the tile, not only on its neighbourhood."""
    if kind not in ("batch", "none"):
        raise BadInputError(f"UNetConfig.norm: expected 'batch' or 'none', got {kind!r}")
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.Identity()


def _block(c_in: int, c_out: int, norm: str) -> nn.Sequential:
    """Two 3x3 convolutions with normalisation and ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=norm == "none"),
        _norm(norm, c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=norm == "none"),
        _norm(norm, c_out),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net with ``depth`` halvings, ``base * 2**level`` channels, logits per class."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        widths = [config.base * 2**level for level in range(config.depth + 1)]
        self.down = nn.ModuleList(
            [_block(config.in_channels, widths[0], config.norm)]
            + [_block(widths[i], widths[i + 1], config.norm) for i in range(config.depth)]
        )
        self.up = nn.ModuleList(
            [nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(config.depth)]
        )
        self.merge = nn.ModuleList([_block(2 * widths[i], widths[i], config.norm) for i in range(config.depth)])
        self.head = nn.Conv2d(widths[0], config.n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, block in enumerate(self.down):
            x = block(x if level == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for level in reversed(range(self.config.depth)):
            x = self.merge[level](torch.cat([skips[level], self.up[level](x)], dim=1))
        return self.head(x)


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as given, else CUDA when torch sees a GPU, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def tile_starts(n: int, tile: int, overlap: int) -> list[int]:
    """Starts of tiles of ``tile`` pixels covering ``n`` with ``overlap`` pixels each side.

    Consecutive tiles' cores (a tile less ``overlap`` at inner edges) meet without gaps.
    """
    if n <= tile:
        return [0]
    stride = tile - 2 * overlap
    starts = list(range(0, n - tile, stride))
    return starts + [n - tile]


def _core(start: int, tile: int, n: int, overlap: int) -> tuple[int, int]:
    """The part of a tile ``[start, start + tile)`` whose labels are kept."""
    lo = start + overlap if start > 0 else 0
    hi = start + tile - overlap if start + tile < n else n
    return lo, hi


@torch.no_grad()
def predict(
    net: UNet,
    stacks: np.ndarray,
    *,
    tile: int = 512,
    overlap: int = 32,
    device: torch.device,
) -> np.ndarray:
    """Labels (uint8, ``(n, H, W)``) of normalised 2.5D stacks ``(n, C, H, W)``.

    Slices larger than ``tile`` are cut into tiles overlapping by ``overlap`` (at most a
    quarter of the tile) on each side; each keeps its core.
    """
    n, _, height, width = stacks.shape
    overlap = min(overlap, tile // 4)
    tile_y, tile_x = min(tile, height), min(tile, width)
    out = np.empty((n, height, width), dtype=np.uint8)
    batch = torch.from_numpy(np.ascontiguousarray(stacks, dtype=np.float32)).to(device)
    for y0 in tile_starts(height, tile_y, overlap):
        for x0 in tile_starts(width, tile_x, overlap):
            logits = _logits(net, batch[:, :, y0 : y0 + tile_y, x0 : x0 + tile_x])
            (ya, yb), (xa, xb) = _core(y0, tile_y, height, overlap), _core(x0, tile_x, width, overlap)
            labels = logits.argmax(dim=1).to(torch.uint8).cpu().numpy()
            out[:, ya:yb, xa:xb] = labels[:, ya - y0 : yb - y0, xa - x0 : xb - x0]
    return out


def _logits(net: UNet, x: torch.Tensor) -> torch.Tensor:
    """Logits of ``x``, edge-padded up to the network's size multiple and cropped back."""
    m = net.config.multiple
    height, width = x.shape[-2:]
    pad_y, pad_x = -height % m, -width % m
    if pad_y or pad_x:
        x = F.pad(x, (0, pad_x, 0, pad_y), mode="replicate")
    return net(x)[..., :height, :width]


@dataclass(frozen=True)
class TrainSettings:
    """Knobs of :func:`train`: optimiser, crops, augmentation and seed."""

    steps: int = 200
    lr: float = 2e-3
    batch_size: int = 8
    crop: int = 96
    gain_jitter: float = 0.2
    offset_jitter: float = 0.1
    dice_weight: float = 0.5
    freeze_norm: bool = False
    seed: int = 0


def train(
    net: UNet,
    inputs: np.ndarray,
    targets: np.ndarray,
    settings: TrainSettings,
    *,
    device: torch.device,
) -> list[float]:
    """Train ``net`` in place on 2.5D stacks ``(n, C, H, W)`` and labels ``(n, H, W)``.

    Each step draws random crops with flips, 90-degree turns and an intensity gain/offset
    (robustness to contrast and dose), and minimises cross-entropy plus soft Dice over
    labelled pixels (``IGNORE`` marks the others). Adam with cosine decay. With
    ``settings.freeze_norm`` batch-norm statistics stay as they are (fine-tuning on a few
    slices). Returns the loss of each step.
    """
    rng = np.random.default_rng(settings.seed)
    torch.manual_seed(settings.seed)
    net.to(device).train()
    if settings.freeze_norm:
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
    optimiser = torch.optim.Adam(net.parameters(), lr=settings.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(1, settings.steps))
    losses = []
    for x, y in _batches(inputs, targets, settings, net.config.multiple, rng):
        x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        loss = _loss(net(x), y, net.config.n_classes, settings.dice_weight)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
    net.eval()
    return losses


def _batches(
    inputs: np.ndarray, targets: np.ndarray, settings: TrainSettings, multiple: int, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``settings.steps`` augmented random batches (float32 inputs, int64 targets); square
    crops of at most ``settings.crop``, a multiple of ``multiple``, fitting every slice."""
    n, _, height, width = inputs.shape
    crop = min(settings.crop, height, width) // multiple * multiple
    if crop < multiple:
        raise BadInputError(f"slices of {height}x{width} pixels are too small to train on; need >= {multiple}")
    for _ in range(settings.steps):
        xs, ys = [], []
        for i in rng.integers(0, n, settings.batch_size):
            y0, x0 = rng.integers(0, height - crop + 1), rng.integers(0, width - crop + 1)
            x = inputs[i, :, y0 : y0 + crop, x0 : x0 + crop]
            y = targets[i, y0 : y0 + crop, x0 : x0 + crop]
            turns, flip = int(rng.integers(4)), bool(rng.integers(2))
            x, y = np.rot90(x, turns, axes=(1, 2)), np.rot90(y, turns)
            if flip:
                x, y = x[:, :, ::-1], y[:, ::-1]
            gain = 1.0 + rng.uniform(-settings.gain_jitter, settings.gain_jitter)
            offset = rng.uniform(-settings.offset_jitter, settings.offset_jitter)
            xs.append(x * gain + offset)
            ys.append(y)
        yield np.stack(xs).astype(np.float32), np.stack(ys).astype(np.int64)


def _loss(logits: torch.Tensor, target: torch.Tensor, n_classes: int, dice_weight: float) -> torch.Tensor:
    """Cross-entropy plus ``dice_weight`` times (1 - soft Dice) over labelled pixels."""
    ce = F.cross_entropy(logits, target, ignore_index=IGNORE)
    if dice_weight == 0:
        return ce
    valid = (target != IGNORE).unsqueeze(1)
    probs = logits.softmax(dim=1) * valid
    onehot = F.one_hot(target.clamp(max=n_classes - 1), n_classes).permute(0, 3, 1, 2) * valid
    dims = (0, 2, 3)
    overlap = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    present = onehot.sum(dims) > 0
    dice = (2 * overlap[present] + 1.0) / (total[present] + 1.0)
    return ce + dice_weight * (1.0 - dice.mean())
