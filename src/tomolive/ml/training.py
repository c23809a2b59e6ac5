"""Training-loop pieces shared by every network: one optimisation step and checkpoints.

The loops themselves (what a batch is, when to stop) belong to the techniques; these
pieces are what they have in common, so mixed precision, gradient scaling and atomic
checkpoints behave the same everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss(inputs, targets)`` on the device: runs the network and returns a scalar."""


def train_step(
    optimiser: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    loss_of: LossFunction,
    inputs: np.ndarray,
    targets: np.ndarray,
    device: torch.device,
    amp: bool = False,
) -> float:
    """One optimiser step on a numpy batch; returns the loss.

    ``amp`` runs the forward pass under float16 autocast (CUDA); the scaler (disabled
    on CPU) scales the gradients to match.
    """
    x = torch.from_numpy(inputs).to(device)
    y = torch.from_numpy(targets).to(device)
    optimiser.zero_grad(set_to_none=True)
    with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
        loss = loss_of(x, y)
    scaler.scale(loss).backward()
    scaler.step(optimiser)
    scaler.update()
    return float(loss.detach())


def freeze_batch_norm(net: nn.Module) -> None:
    """Keep batch-norm statistics as they are while ``net`` trains (fine-tuning on few slices)."""
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()


def _checkpoints(directory: Path) -> list[Path]:
    return sorted(directory.glob("checkpoint-*.pt"))


def save_checkpoint(directory: str | os.PathLike, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` as ``checkpoint-<step>.pt`` atomically in ``directory``; keep the last ``keep``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"checkpoint-{step:09d}.pt"
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    os.replace(partial, path)
    for old in _checkpoints(directory)[:-keep]:
        old.unlink()
    return path


def last_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest checkpoint file in ``directory``, or None."""
    found = _checkpoints(Path(directory))
    return found[-1] if found else None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's state (tensors and plain types only: no pickled code runs)."""
    return torch.load(path, map_location="cpu", weights_only=True)
