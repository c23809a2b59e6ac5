"""Training segmentation networks: from scratch on simulated scans, or fine-tuned on a few
user-labelled slices.

Each step draws random crops with flips, 90-degree turns and an intensity gain/offset
(robustness to contrast and dose), and minimises cross-entropy plus soft Dice over labelled
pixels (:data:`IGNORE` marks the others).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import BadInputError
from ..qc import circle_mask
from ..segment import as_volume, intensity_range, normalize, padded_slab, stacks
from .device import choose_device
from .network import UNet
from .segmentation import DEFAULT_MODEL, SegmentationModel, load_segmenter
from .training import freeze_batch_norm, train_step

IGNORE = 255
"""Target value of unlabelled pixels (no loss)."""


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


def train_segmenter(
    net: UNet,
    inputs: np.ndarray,
    targets: np.ndarray,
    settings: TrainSettings,
    *,
    device: torch.device,
) -> list[float]:
    """Train ``net`` in place on 2.5D stacks ``(n, C, H, W)`` and labels ``(n, H, W)``.

    Adam with cosine decay over ``settings.steps`` augmented batches. With
    ``settings.freeze_norm`` batch-norm statistics stay as they are (fine-tuning on a few
    slices). Returns the loss of each step.
    """
    rng = np.random.default_rng(settings.seed)
    torch.manual_seed(settings.seed)
    net.to(device).train()
    if settings.freeze_norm:
        freeze_batch_norm(net)
    optimiser = torch.optim.Adam(net.parameters(), lr=settings.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(1, settings.steps))
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    n_classes = net.config.out_channels

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return segmentation_loss(net(x), y, n_classes, settings.dice_weight)

    losses = []
    for x, y in _batches(inputs, targets, settings, net.config.multiple, rng):
        losses.append(train_step(optimiser, scaler, loss_of, x, y, device))
        schedule.step()
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


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, n_classes: int, dice_weight: float) -> torch.Tensor:
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


def _labelled_slices(
    labels: Mapping[int, np.ndarray] | Any, shape: tuple[int, ...], n_classes: int
) -> dict[int, np.ndarray]:
    """``{slice index: uint8 labels with IGNORE for unlabelled}`` from a dict or a volume."""
    if not isinstance(labels, Mapping):
        array = np.asarray(labels)
        if array.shape != tuple(shape):
            raise BadInputError(f"labels: expected the volume's shape {tuple(shape)!r}, got {array.shape!r}")
        labels = {z: array[z] for z in range(array.shape[0]) if np.any((array[z] >= 0) & (array[z] != IGNORE))}
    out = {}
    for z, lab in labels.items():
        lab = np.asarray(lab)
        if not 0 <= int(z) < shape[0] or lab.shape != tuple(shape[1:]):
            raise BadInputError(
                f"labels[{z!r}]: expected a slice index in [0, {shape[0]}) and shape {tuple(shape[1:])!r}, "
                f"got shape {lab.shape!r}"
            )
        lab = np.where((lab < 0) | (lab == IGNORE), IGNORE, lab)
        if np.any((lab >= n_classes) & (lab != IGNORE)):
            raise BadInputError(
                f"labels[{z!r}]: values must be 0..{n_classes - 1} or -1/{IGNORE} (unlabelled); "
                f"got {sorted(set(np.unique(lab).tolist()) - {IGNORE})!r}"
            )
        out[int(z)] = lab.astype(np.uint8)
    if not out or all(np.all(lab == IGNORE) for lab in out.values()):
        raise BadInputError("labels: no labelled pixel given (all unlabelled or empty)")
    return out


def fine_tune(
    model: SegmentationModel | str | os.PathLike | None,
    volume: Any,
    labels: Mapping[int, np.ndarray] | Any,
    *,
    steps: int = 100,
    lr: float = 1e-3,
    name: str | None = None,
    value_range: tuple[float, float] | None = None,
    seed: int = 0,
    device: str | None = None,
) -> SegmentationModel:
    """A copy of ``model`` trained further on a few user-labelled slices of ``volume``.

    Parameters
    ----------
    model : SegmentationModel or str, optional
        The starting point (default: the shipped weights); it is not modified.
    volume : array-like
        ``(n_slices, ny, nx)`` grey values of the sample class to learn.
    labels : dict or array-like
        ``{slice index: (ny, nx) labels}``, or a label volume of ``volume``'s shape (a Tiled
        array works) where -1 or 255 mark unlabelled pixels (whole slices may be unlabelled).
    steps, lr : int, float
        Adam steps (batches of random crops) and start learning rate (cosine decay).
    name : str, optional
        The new model's id (default: ``<parent>-finetuned``).
    value_range : (float, float), optional
        Grey values mapped to 0 and 1; default :func:`intensity_range` of ``volume`` (as
        :func:`~tomolive.ml.segmentation.segment_volume` will use).
    seed : int
        Seed of crops and augmentation.

    Returns
    -------
    SegmentationModel
        ``record["parent"]`` names the starting model and ``record["fine_tune"]`` the slices
        and settings.
    """
    parent = model if isinstance(model, SegmentationModel) else load_segmenter(model or DEFAULT_MODEL, device=device)
    volume, _ = as_volume(volume)
    labelled = _labelled_slices(labels, tuple(volume.shape), parent.n_classes)
    value_range = value_range or intensity_range(volume)
    context = parent.net.config.context
    inputs = np.concatenate(
        [stacks(normalize(padded_slab(volume, z, z + 1, context), value_range), context) for z in labelled]
    )
    targets = np.stack(list(labelled.values()))
    targets[:, ~circle_mask(targets.shape[1:], 1.0)] = IGNORE
    net = UNet(parent.net.config)
    net.load_state_dict(parent.net.state_dict())
    settings = TrainSettings(steps=steps, lr=lr, batch_size=4, crop=96, freeze_norm=True, seed=seed)
    losses = train_segmenter(net, inputs, targets, settings, device=choose_device(device))
    record = {
        "parent": {"name": parent.name, "sha256": parent.sha256},
        "fine_tune": {
            "slices": sorted(labelled),
            "labelled_pixels": int((targets != IGNORE).sum()),
            "steps": steps,
            "lr": lr,
            "seed": seed,
            "value_range": list(value_range),
            "final_loss": round(float(np.mean(losses[-10:])), 4),
        },
    }
    return replace(parent, net=net, name=name or f"{parent.name}-finetuned", record=record)
