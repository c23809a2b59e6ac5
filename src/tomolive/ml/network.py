"""The U-Net family: one 2.5D U-Net for every network tomolive trains.

``2 * context + 1`` neighbouring slices go in as channels and the centre slice's map comes
out (2.5D: some 3D context for the price of 2D convolutions). :class:`UNet` gives logits
per class (segmentation); :class:`NormalisedUNet` works in the data's units (denoising).
Parameter names are those of the shipped segmentation weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BadInputError

NORMS = ("batch", "none")
ACTIVATIONS = ("relu", "leaky_relu")


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a U-Net; stored with the weights so they load without guessing.

    Parameters
    ----------
    context : int
        Slices on each side of the centre slice fed as extra channels.
    out_channels : int
        Output maps (classes for segmentation, 1 for denoising).
    base : int
        Channels at full resolution, doubled at each of ``depth`` halvings.
    depth : int
        Number of 2x down-samplings; inputs must be multiples of ``2**depth``.
    norm : {"batch", "none"}
        Batch norm, or none (then convolutions have biases). Not group/instance norm: their
        statistics span the whole input, so a tile's output would depend on the whole tile.
    activation : {"relu", "leaky_relu"}
        ReLU, or leaky ReLU with slope 0.1.
    """

    context: int = 1
    out_channels: int = 3
    base: int = 16
    depth: int = 3
    norm: str = "batch"
    activation: str = "relu"

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise BadInputError(f"UNetConfig.norm: expected one of {NORMS}, got {self.norm!r}")
        if self.activation not in ACTIVATIONS:
            raise BadInputError(f"UNetConfig.activation: expected one of {ACTIVATIONS}, got {self.activation!r}")

    @property
    def in_channels(self) -> int:
        return 2 * self.context + 1

    @property
    def multiple(self) -> int:
        """Input sizes must be multiples of this (one halving per level)."""
        return 2**self.depth

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _activation(kind: str) -> nn.Module:
    return nn.ReLU(inplace=True) if kind == "relu" else nn.LeakyReLU(0.1, inplace=True)


def _block(c_in: int, c_out: int, config: UNetConfig) -> nn.Sequential:
    """Two 3x3 convolutions, each with normalisation and activation."""
    bias = config.norm == "none"
    layers: list[nn.Module] = []
    for channels in (c_in, c_out):
        layers += [
            nn.Conv2d(channels, c_out, 3, padding=1, bias=bias),
            nn.BatchNorm2d(c_out) if config.norm == "batch" else nn.Identity(),
            _activation(config.activation),
        ]
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """U-Net with ``depth`` halvings and ``base * 2**level`` channels; one map per output channel."""

    kind: ClassVar[str] = "segmentation-unet2.5d"
    """What the network is for, as the model store records it."""
    id_prefix: ClassVar[str] = "seg"
    """Prefix of its ids in the model store."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        widths = [config.base * 2**level for level in range(config.depth + 1)]
        self.down = nn.ModuleList(
            [_block(config.in_channels, widths[0], config)]
            + [_block(widths[i], widths[i + 1], config) for i in range(config.depth)]
        )
        # built deepest level first (the order the decoder runs), then indexed by level
        levels = range(config.depth - 1, -1, -1)
        ups = [nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in levels]
        merges = [_block(2 * widths[i], widths[i], config) for i in levels]
        self.up = nn.ModuleList(ups[::-1])
        self.merge = nn.ModuleList(merges[::-1])
        self.head = nn.Conv2d(widths[0], config.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, block in enumerate(self.down):
            x = block(x if level == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for level in reversed(range(self.config.depth)):
            x = self.merge[level](torch.cat([self.up[level](x), skips[level]], dim=1))
        return self.head(x)


class NormalisedUNet(UNet):
    """A :class:`UNet` in the data's units: ``offset`` and ``scale`` (buffers, saved with the
    weights) normalise the input and un-normalise the output.

    The output is the centre slice itself, not a residual added to the input: a residual
    network must learn to cancel the noise exactly and trains worse.
    """

    kind: ClassVar[str] = "noise2inverse-unet2.5d"
    id_prefix: ClassVar[str] = "n2i"

    offset: torch.Tensor
    scale: torch.Tensor

    def __init__(self, config: UNetConfig) -> None:
        super().__init__(config)
        self.register_buffer("offset", torch.zeros(()))
        self.register_buffer("scale", torch.ones(()))

    @property
    def neighbours(self) -> int:
        """Slices on each side of the centre slice (``config.context``)."""
        return self.config.context

    @property
    def depth(self) -> int:
        return self.config.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward((x - self.offset) / self.scale) * self.scale + self.offset


NETWORKS: dict[str, type[UNet]] = {cls.kind: cls for cls in (UNet, NormalisedUNet)}
"""Network classes by the ``kind`` the model store records."""
