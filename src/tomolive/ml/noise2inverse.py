"""Noise2Inverse self-supervised denoising (Hendriksen et al. 2020) with a 2.5D U-Net.

The scan's projections are split into ``k`` disjoint angle subsets (``angles[j::k]``) and
each subset is reconstructed on its own (:func:`split_reconstructions`). The subsets'
noise is independent while the sample is the same, so a network trained to predict one
split's slice from the mean of the other ``k - 1`` splits (a slice and its ``+/- n``
neighbours as channels) learns the clean signal without any clean target. The denoised
volume is the network's prediction averaged over the ``k`` choices of held-out split
(:func:`tomolive.ml.denoising.denoise`).

Splits are any array indexed ``[k, z, y, x]`` (numpy, or a Zarr array on disk for volumes
that do not fit in memory): training reads bounded slabs of slices.

Examples
--------
>>> from tomolive.ml.denoising import denoise
>>> cfg = DenoiseConfig(steps=2, patch=16, batch=2, features=4, time_budget=None)
>>> splits = np.random.default_rng(0).normal(size=(2, 4, 16, 16)).astype(np.float32)
>>> result = train(splits, cfg)
>>> result.steps, len(result.losses)
(2, 2)
>>> denoise(result.model, splits).shape
(4, 16, 16)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import BadInputError
from ..recon import reconstruct
from ..recon.fbp import torch_threads
from ..validation import as_float32
from .device import choose_device
from .network import NormalisedUNet, UNetConfig
from .training import last_checkpoint, load_checkpoint, save_checkpoint, train_step

CHECKPOINT_FORMAT = "tomolive-n2i-checkpoint/2"


@dataclass(frozen=True)
class DenoiseConfig:
    """Every knob of Noise2Inverse training and inference (all of it goes into provenance).

    The defaults are the best of the runs listed in ``docs/measurements/ml.md``.

    Parameters
    ----------
    k : int
        Number of angle splits (2 or 4 are usual); inference averages over all ``k``.
    neighbours : int
        Slices on each side of the centre slice fed as extra channels (2.5D): ``2n + 1``
        input channels.
    features : int
        Channels of the U-Net's first level (doubling at each of ``depth`` levels).
    depth : int
        Number of 2x down-samplings in the U-Net.
    patch : int
        Training patch size in pixels (a multiple of ``2**depth``; clipped to the slice).
    batch : int
        Patches per training step.
    steps : int
        Training stops after this many steps in total (counting resumed ones) ...
    time_budget : float or None
        ... or after this many seconds of this call, whichever comes first (None: no limit).
    lr : float
        Adam learning rate, constant: a short self-supervised run is far from converged.
    seed : int
        Seeds weight initialisation and patch sampling: same seed, same data, same model.
    checkpoint_every : int
        Steps between checkpoints when a checkpoint directory is given.
    slab_bytes : int
        Memory for the slices training holds at once (all ``k`` splits plus halos).
    slab_steps : int
        Training steps drawn from one slab before the next is read (when the volume is
        larger than one slab).
    tile : int
        Inference tile size; slices larger than this are processed in overlapping tiles.
    overlap : int
        Overlap between inference tiles (pixels), more than the U-Net's reach.
    slices_per_batch : int
        Slices per inference forward pass.
    device : str
        ``"auto"`` (CUDA when present, else CPU), ``"cpu"`` or ``"cuda[:N]"``.
    threads : int or None
        CPU threads torch may use while training or denoising (restored afterwards); None
        keeps torch's setting (all cores). Give 1 per single-threaded Dask worker: torch
        threads competing for a busy core wait on each other.
    amp : bool
        Mixed precision (float16 autocast + gradient scaling) on CUDA; ignored on CPU.
    """

    k: int = 2
    neighbours: int = 2
    features: int = 8
    depth: int = 3
    patch: int = 64
    batch: int = 8
    steps: int = 5000
    time_budget: float | None = 60.0
    lr: float = 1e-3
    seed: int = 0
    checkpoint_every: int = 100
    slab_bytes: int = 512 * 2**20
    slab_steps: int = 25
    tile: int = 512
    overlap: int = 32
    slices_per_batch: int = 4
    device: str = "auto"
    threads: int | None = None
    amp: bool = True

    def __post_init__(self) -> None:
        positive = (
            "k",
            "features",
            "depth",
            "patch",
            "batch",
            "steps",
            "checkpoint_every",
            "slab_bytes",
            "slab_steps",
            "tile",
            "slices_per_batch",
        )
        for name in positive:
            _require(self, name, _is_int(getattr(self, name), 1), "a positive integer")
        _require(self, "k", self.k >= 2, "k >= 2 splits (Noise2Inverse holds one out)")
        _require(self, "neighbours", _is_int(self.neighbours, 0), "an integer >= 0")
        multiple = 2**self.depth
        _require(self, "patch", self.patch % multiple == 0, f"a multiple of 2**depth = {multiple}")
        _require(self, "tile", self.tile % multiple == 0, f"a multiple of 2**depth = {multiple}")
        _require(self, "overlap", 0 <= self.overlap < self.tile // 2, "0 <= overlap < tile / 2")
        _require(self, "time_budget", self.time_budget is None or self.time_budget > 0, "seconds > 0 or None")
        _require(self, "threads", self.threads is None or _is_int(self.threads, 1), "a positive integer or None")
        _require(self, "lr", self.lr > 0, "a positive learning rate")
        choose_device(self.device)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def network(self) -> UNetConfig:
        """The U-Net these settings describe: one output, no batch norm, leaky ReLU."""
        return UNetConfig(
            context=self.neighbours,
            out_channels=1,
            base=self.features,
            depth=self.depth,
            norm="none",
            activation="leaky_relu",
        )


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and bool(value >= minimum)


def _require(config: DenoiseConfig, name: str, ok: bool, expected: str) -> None:
    """Raise a BadInputError naming ``DenoiseConfig.<name>`` unless ``ok``."""
    if not ok:
        raise BadInputError(f"DenoiseConfig.{name}: expected {expected}, got {getattr(config, name)!r}")


def split_reconstructions(
    projections: np.ndarray,
    angles: np.ndarray,
    center: float | None = None,
    k: int = 2,
    **recon_options: Any,
) -> np.ndarray:
    """Reconstruct each of ``k`` disjoint angle subsets ``angles[j::k]`` on its own.

    Parameters
    ----------
    projections : numpy.ndarray
        float (n_angles, n_rows, n_cols) line integrals, as for :func:`tomolive.recon.reconstruct`.
    angles : numpy.ndarray
        (n_angles,) radians in acquisition order; every subset must still cover 180 degrees.
    center : float, optional
        Rotation-axis column (pixels); default the detector middle.
    k : int
        Number of splits (>= 2).
    **recon_options
        Passed to :func:`tomolive.recon.reconstruct` (``method``, ``filter``, ``ncore``...).

    Returns
    -------
    numpy.ndarray
        float32 (k, n_rows, n_cols, n_cols).

    Raises
    ------
    BadInputError
        ``k`` < 2, fewer than 2 angles per split, or what ``reconstruct`` refuses.
    """
    proj = np.asarray(projections)
    ang = np.asarray(angles)
    if not isinstance(k, (int, np.integer)) or k < 2:
        raise BadInputError(f"k: Noise2Inverse needs an integer k >= 2 angle splits, got {k!r}")
    if proj.ndim != 3:
        raise BadInputError(f"projections: expected a 3D array (n_angles, n_rows, n_cols), got shape {proj.shape!r}")
    if ang.ndim != 1 or ang.shape[0] != proj.shape[0]:
        raise BadInputError(
            f"angles: expected a 1D array of {proj.shape[0]} angles (one per projection), got shape {ang.shape!r}"
        )
    if proj.shape[0] < 2 * k:
        raise BadInputError(f"projections: {proj.shape[0]} angles cannot make k={k} splits of >= 2 angles each")
    n_rows, n_cols = proj.shape[1:]
    out = np.empty((k, n_rows, n_cols, n_cols), dtype=np.float32)
    for j in range(k):
        out[j] = reconstruct(proj[j::k], ang[j::k], center, **recon_options)
    return out


def new_model(config: DenoiseConfig) -> NormalisedUNet:
    """A freshly initialised U-Net for ``config``, seeded by ``config.seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return NormalisedUNet(config.network())


# ---------------------------------------------------------------------------- data access


def check_splits(splits: Any, k: int | None = None) -> tuple[int, int, int, int]:
    """Validate an array-like of split reconstructions ``[k, z, y, x]``; return its shape."""
    shape = getattr(splits, "shape", None)
    if shape is None or len(shape) != 4:
        raise BadInputError(
            "splits: expected an array-like (numpy or zarr) indexed [k, z, y, x] as made by "
            f"split_reconstructions, got shape {shape!r}"
        )
    n_splits, nz, ny, nx = (int(s) for s in shape)
    if n_splits < 2:
        raise BadInputError(f"splits: Noise2Inverse needs k >= 2 splits along axis 0, got shape {tuple(shape)!r}")
    if k is not None and n_splits != k:
        raise BadInputError(f"splits: config.k = {k} but splits has {n_splits} along axis 0")
    if nz < 1 or min(ny, nx) < 8:
        raise BadInputError(f"splits: expected >= 1 slice of >= 8 x 8 pixels, got shape {tuple(shape)!r}")
    return n_splits, nz, ny, nx


def read_rows(splits: Any, start: int, stop: int) -> np.ndarray:
    """Rows ``[start, stop)`` of every split as float32 (k, rows, y, x), checked finite."""
    return as_float32(splits[:, start:stop], f"splits[:, {start}:{stop}]", (4,), "[k, z, y, x]")


def neighbour_index(z: np.ndarray, n: int, nz: int, first: int) -> np.ndarray:
    """Slab indices of slices ``z - n .. z + n`` (edge slices repeated) in a slab starting at ``first``."""
    return np.clip(np.asarray(z)[..., None] + np.arange(-n, n + 1), 0, nz - 1) - first


# ---------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    """A trained model and how it got there (goes into the model's provenance)."""

    model: NormalisedUNet
    config: DenoiseConfig
    losses: list[float]
    steps: int
    seconds: float
    stopped: str
    resumed_from: int = 0

    def loss_curve(self, points: int = 200) -> list[float]:
        """The per-step loss averaged into at most ``points`` bins (for metadata)."""
        if len(self.losses) <= points:
            return [float(v) for v in self.losses]
        bins = np.array_split(np.asarray(self.losses), points)
        return [float(b.mean()) for b in bins]

    def summary(self) -> dict[str, Any]:
        """The run and its hyper-parameters, as the model store records them."""
        run = {
            "steps": self.steps,
            "seconds": self.seconds,
            "stopped": self.stopped,
            "resumed_from": self.resumed_from,
            "final_loss": self.losses[-1] if self.losses else None,
            "loss_curve": self.loss_curve(),
        }
        return {"training": run, "hyperparameters": self.config.as_dict()}


def calibrate(model: NormalisedUNet, splits: Any, samples: int = 16) -> None:
    """Set the model's input normalisation from up to ``samples`` evenly spaced slices."""
    nz = int(splits.shape[1])
    rows = np.unique(np.linspace(0, nz - 1, min(samples, nz)).round().astype(int))
    values = np.stack([read_rows(splits, r, r + 1).mean(axis=0)[0] for r in rows])
    std = float(values.std())
    model.offset.fill_(float(values.mean()))
    model.scale.fill_(std if std > 0 else 1.0)


class _PatchSampler:
    """Random training patches, read one bounded slab of slices at a time.

    Which slab and which patches depend only on ``(seed, step)``, so a resumed run sees
    exactly the patches an uninterrupted one would have.
    """

    def __init__(self, splits: Any, config: DenoiseConfig):
        self.splits, self.config = splits, config
        self.k, self.nz, self.ny, self.nx = check_splits(splits, config.k)
        n = config.neighbours
        per_slice = self.k * self.ny * self.nx * 4
        self.core = int(max(1, min(self.nz, config.slab_bytes // per_slice - 2 * n)))
        if min(self.ny, self.nx) < 2**config.depth:
            raise BadInputError(
                f"splits: slices of {self.ny} x {self.nx} pixels are smaller than the U-Net's "
                f"2**depth = {2**config.depth}; use a smaller DenoiseConfig.depth"
            )
        self.patch = min(config.patch, min(self.ny, self.nx) // 2**config.depth * 2**config.depth)
        self._slab_id: int | None = None
        self._held: tuple[np.ndarray, int, int]

    def _slab(self, step: int) -> tuple[np.ndarray, int, int]:
        """The slab for ``step``: (data, its first row, its first centre-slice row)."""
        slab_id = 0 if self.core == self.nz else step // self.config.slab_steps
        if slab_id != self._slab_id:
            rng = np.random.default_rng([self.config.seed, slab_id, 1])
            z0 = int(rng.integers(0, self.nz - self.core + 1)) if self.core < self.nz else 0
            first = max(0, z0 - self.config.neighbours)
            stop = min(self.nz, z0 + self.core + self.config.neighbours)
            self._held = (read_rows(self.splits, first, stop), first, z0)
            self._slab_id = slab_id
        return self._held

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs (batch, 2n + 1, p, p) and targets (batch, 1, p, p), float32."""
        data, first, z0 = self._slab(step)
        rng = np.random.default_rng([self.config.seed, step, 0])
        b, p, n = self.config.batch, self.patch, self.config.neighbours
        held_out = rng.integers(0, self.k, size=b)
        z = rng.integers(z0, z0 + self.core, size=b)
        y = rng.integers(0, self.ny - p + 1, size=b)
        x = rng.integers(0, self.nx - p + 1, size=b)
        inputs = np.empty((b, 2 * n + 1, p, p), dtype=np.float32)
        targets = np.empty((b, 1, p, p), dtype=np.float32)
        for i in range(b):
            index = neighbour_index(z[i], n, self.nz, first)
            window = data[:, index, y[i] : y[i] + p, x[i] : x[i] + p]  # (k, 2n + 1, p, p)
            inputs[i] = (window.sum(axis=0) - window[held_out[i]]) / (self.k - 1)
            targets[i, 0] = window[held_out[i], n]
        return inputs, targets


def train(
    splits: Any,
    config: DenoiseConfig = DenoiseConfig(),
    *,
    model: NormalisedUNet | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train (or fine-tune) a Noise2Inverse denoiser on split reconstructions.

    Parameters
    ----------
    splits : array-like
        ``[k, z, y, x]`` reconstructions of disjoint angle subsets (numpy or zarr).
    config : DenoiseConfig
        Hyper-parameters and the step/time budget.
    model : NormalisedUNet, optional
        Start from these weights (fine-tuning; its normalisation is kept); default a new
        model seeded by ``config.seed`` and calibrated on ``splits``.
    checkpoint_dir : path, optional
        Save a checkpoint there every ``config.checkpoint_every`` steps and at the end.
    resume : bool
        Continue from the last checkpoint in ``checkpoint_dir`` (if any): weights,
        optimiser state, step count and loss curve; training stops at ``config.steps``
        in total.
    on_step : callable, optional
        ``on_step(step, loss)`` after every step (progress bars, logging).

    Returns
    -------
    TrainResult

    Raises
    ------
    BadInputError
        Bad splits (shape, k, NaN), ``resume`` without ``checkpoint_dir``, or a
        checkpoint made with a different architecture.
    """
    check_splits(splits, config.k)
    if resume and checkpoint_dir is None:
        raise BadInputError("resume: resume=True needs a checkpoint_dir to resume from")
    device = choose_device(config.device)
    amp = config.amp and device.type == "cuda"
    if model is None:
        model = new_model(config)
        calibrate(model, splits)
    elif model.config != config.network():
        raise BadInputError(f"model: architecture {model.config!r} does not match the config's {config.network()!r}")
    net = model.to(device).train()
    optimiser = torch.optim.Adam(net.parameters(), lr=config.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    losses: list[float] = []
    step = 0
    if resume and checkpoint_dir is not None:
        step, losses = _restore(checkpoint_dir, net, optimiser, scaler, config)

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(net(x) / net.scale, y / net.scale)

    def checkpoint(directory: str | os.PathLike) -> None:
        state = {
            "format": CHECKPOINT_FORMAT,
            "step": int(step),
            "losses": [float(v) for v in losses],
            "config": config.as_dict(),
            "model": net.state_dict(),
            "optimizer": optimiser.state_dict(),
            "scaler": scaler.state_dict(),
        }
        save_checkpoint(directory, step, state)

    sampler = _PatchSampler(splits, config)
    start, first_step = time.perf_counter(), step
    stopped = "steps"
    with torch_threads(config.threads):
        while step < config.steps:
            if config.time_budget is not None and time.perf_counter() - start >= config.time_budget:
                stopped = "time"
                break
            inputs, targets = sampler.batch(step)
            loss = train_step(optimiser, scaler, loss_of, inputs, targets, device, amp)
            losses.append(loss)
            step += 1
            if on_step is not None:
                on_step(step, loss)
            if checkpoint_dir is not None and step % config.checkpoint_every == 0:
                checkpoint(checkpoint_dir)
    if checkpoint_dir is not None and step > first_step and step % config.checkpoint_every:
        checkpoint(checkpoint_dir)
    seconds = time.perf_counter() - start
    return TrainResult(net.eval(), config, losses, step, round(seconds, 3), stopped, first_step)


def _restore(
    directory: str | os.PathLike,
    model: NormalisedUNet,
    optimiser: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    config: DenoiseConfig,
) -> tuple[int, list[float]]:
    """Load the last checkpoint in ``directory`` into the training state; (step, losses)."""
    path = last_checkpoint(directory)
    if path is None:
        return 0, []
    state = load_checkpoint(path)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise BadInputError(f"checkpoint_dir: {str(path)!r} is not a tomolive Noise2Inverse checkpoint")
    saved = DenoiseConfig(**state["config"])
    if saved.network() != config.network() or saved.k != config.k:
        raise BadInputError(
            f"checkpoint_dir: {str(path)!r} holds architecture {saved.network()!r} (k={saved.k}), "
            f"but the config asks for {config.network()!r} (k={config.k})"
        )
    model.load_state_dict(state["model"])
    optimiser.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    return int(state["step"]), list(state["losses"])
