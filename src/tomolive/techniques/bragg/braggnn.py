"""BraggNN: a small CNN that puts a Bragg peak's centre in an 11x11 patch (Liu et al., IUCrJ 2022).

The layout follows the paper: a 3x3 convolution, a non-local (self-attention) block over
its feature map, two more 3x3 convolutions (11 -> 9 -> 7 -> 5 pixels, no padding), then
fully connected layers down to the centre ``(row, col)`` in patch pixels scaled to [0, 1].
Each patch is min-max normalised on its own, so the model does not care about intensity.
The widths here are smaller than the paper's (16/16/8 channels instead of 64/32/8): on
simulated peaks this one is as accurate as the pseudo-Voigt fit, and one CPU core runs it
hundreds of times faster than the fit (bench/bragg.py).

Weights are saved as a torch state dict beside a JSON record holding the architecture,
training summary and the file's sha256 (:func:`save_model`, :func:`load_model`); the
default model ships in ``tomolive/weights/braggnn.pt`` (made by scripts/train_braggnn.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...errors import BadInputError
from ...ml.model_store import ModelIntegrityError

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"
DEFAULT_MODEL = "braggnn"
PATCH = 11


@dataclass(frozen=True)
class BraggNNConfig:
    """Channel widths of the three convolutions and sizes of the hidden dense layers."""

    channels: tuple[int, int, int] = (8, 16, 8)
    dense: tuple[int, ...] = (32, 16)
    patch: int = PATCH


class NonLocalBlock(nn.Module):
    """Embedded-Gaussian self-attention over all pixels of a feature map, added back (Wang et al. 2018)."""

    def __init__(self, channels: int):
        super().__init__()
        inner = max(1, channels // 2)
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1)
        self.g = nn.Conv2d(channels, inner, 1)
        self.out = nn.Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        theta = self.theta(x).flatten(2).transpose(1, 2)  # (b, hw, inner)
        phi = self.phi(x).flatten(2)  # (b, inner, hw)
        g = self.g(x).flatten(2).transpose(1, 2)
        attention = torch.softmax(theta @ phi, dim=-1)
        y = (attention @ g).transpose(1, 2).reshape(b, -1, h, w)
        return x + self.out(y)


class BraggNN(nn.Module):
    """(B, 1, 11, 11) patches, each min-max normalised -> (B, 2) centres (row, col) / (patch - 1)."""

    def __init__(self, config: BraggNNConfig | None = None):
        super().__init__()
        self.config = config or BraggNNConfig()
        c1, c2, c3 = self.config.channels
        act = nn.LeakyReLU(0.01)
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3), act, nn.Conv2d(c1, c2, 3), act, nn.Conv2d(c2, c3, 3), act, NonLocalBlock(c3)
        )
        side = self.config.patch - 6
        sizes = [c3 * side * side, *self.config.dense]
        layers: list[nn.Module] = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(n_in, n_out), nn.LeakyReLU(0.01)]
        self.head = nn.Sequential(nn.Flatten(), *layers, nn.Linear(sizes[-1], 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def normalise(patches: np.ndarray) -> np.ndarray:
    """Each patch scaled to [0, 1] by its own minimum and maximum; (P, 1, s, s) float32."""
    patches = np.asarray(patches, dtype=np.float32)
    if patches.ndim != 3 or patches.shape[1] != patches.shape[2]:
        raise BadInputError(f"patches have shape {patches.shape!r}; expected a stack (P, size, size).")
    low = patches.min(axis=(1, 2), keepdims=True)
    span = patches.max(axis=(1, 2), keepdims=True) - low
    return ((patches - low) / np.where(span > 0, span, 1.0))[:, None]


def predict_centres(model: BraggNN, patches: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Centres ``(P, 2)`` (row, col) in patch pixels of a stack of patches, in batches."""
    size = model.config.patch
    if np.ndim(patches) != 3 or np.shape(patches)[1:] != (size, size):
        raise BadInputError(f"patches have shape {np.shape(patches)!r}; this model takes (P, {size}, {size}).")
    inputs = normalise(patches)
    out = np.empty((len(inputs), 2), dtype=np.float64)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(inputs), batch_size):
            batch = torch.from_numpy(inputs[start : start + batch_size])
            out[start : start + len(batch)] = model(batch).numpy()
    return out * (size - 1)


def _augment(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random flip/transpose of the batch (peaks have no preferred direction); y in [0, 1]."""
    if torch.rand(1, generator=gen).item() < 0.5:
        x, y = x.flip(-2), torch.stack([1 - y[:, 0], y[:, 1]], 1)
    if torch.rand(1, generator=gen).item() < 0.5:
        x, y = x.flip(-1), torch.stack([y[:, 0], 1 - y[:, 1]], 1)
    if torch.rand(1, generator=gen).item() < 0.5:
        x, y = x.transpose(-1, -2), y.flip(1)
    return x, y


def train(
    model: BraggNN,
    patches: np.ndarray,
    centres: np.ndarray,
    *,
    epochs: int = 20,
    lr: float = 2e-3,
    batch_size: int = 256,
    seed: int = 0,
) -> tuple[BraggNN, dict[str, Any]]:
    """Train ``model`` in place on patches and their centres (patch pixels); return it and a history.

    Adam with a cosine-decayed learning rate on the mean squared error of the scaled centres;
    random flips and transposes of each batch. The history holds the loss per epoch, the
    hyper-parameters and the seconds taken.
    """
    size = model.config.patch
    centres = np.asarray(centres, dtype=np.float32)
    if centres.shape != (len(patches), 2):
        raise BadInputError(f"centres have shape {centres.shape!r}; expected ({len(patches)}, 2) for the patches.")
    if not np.isfinite(centres).all():
        raise BadInputError("centres hold NaN or infinite values; leave unlabelled patches out of the training data.")
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise BadInputError(f"epochs, batch_size and lr must be positive; got {epochs!r}, {batch_size!r}, {lr!r}.")
    x_all = torch.from_numpy(normalise(patches))
    y_all = torch.from_numpy(centres / (size - 1))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * max(1, -(-len(x_all) // batch_size))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    losses, started = [], time.perf_counter()
    model.train()
    for _ in range(epochs):
        order, total = torch.randperm(len(x_all), generator=gen), 0.0
        for start in range(0, len(order), batch_size):
            pick = order[start : start + batch_size]
            x, y = _augment(x_all[pick], y_all[pick], gen)
            loss = nn.functional.mse_loss(model(x), y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(pick)
        losses.append(total / len(x_all))
    model.eval()
    history = {
        "loss": losses,
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
        "n_samples": len(x_all),
        "seconds": round(time.perf_counter() - started, 2),
    }
    return model, history


def model_bytes(model: BraggNN) -> bytes:
    """The model's state dict as torch.save writes it."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def save_model(model: BraggNN, path: str | Path, record: dict[str, Any]) -> dict[str, Any]:
    """Write ``path`` (.pt) and its JSON record (architecture, ``record``, sha256); return the record."""
    path = Path(path)
    blob = model_bytes(model)
    full = {**record, "kind": "braggnn", "architecture": asdict(model.config), "sha256": sha256(blob)}
    path.write_bytes(blob)
    path.with_suffix(".json").write_text(json.dumps(full, indent=2) + "\n")
    return full


def load_model(path: str | Path | None = None) -> tuple[BraggNN, dict[str, Any]]:
    """A BraggNN and its record from ``path`` (default: the shipped model), hash checked.

    Raises
    ------
    MissingDataError-like FileNotFoundError
        No weights or record at ``path``.
    ModelIntegrityError
        The weights do not match the sha256 in their record.
    """
    path = Path(path) if path is not None else WEIGHTS_DIR / f"{DEFAULT_MODEL}.pt"
    record = json.loads(path.with_suffix(".json").read_text())
    blob = path.read_bytes()
    if sha256(blob) != record.get("sha256"):
        raise ModelIntegrityError(f"{path}: weights do not match the sha256 in {path.with_suffix('.json').name}.")
    arch = record["architecture"]
    config = BraggNNConfig(tuple(arch["channels"]), tuple(arch["dense"]), int(arch["patch"]))
    model = BraggNN(config)
    model.load_state_dict(torch.load(io.BytesIO(blob), weights_only=True))
    return model.eval(), record


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
