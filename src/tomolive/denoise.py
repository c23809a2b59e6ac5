"""Noise2Inverse self-supervised denoising (Hendriksen et al. 2020) with a 2.5D U-Net.

The scan's projections are split into ``k`` disjoint angle subsets (``angles[j::k]``) and
each subset is reconstructed on its own (:func:`split_reconstructions`). The subsets'
noise is independent while the sample is the same, so a network trained to predict one
split's slice from the mean of the other ``k - 1`` splits (a slice and its ``+/- n``
neighbours as channels) learns the clean signal without any clean target. The denoised
volume is the network's prediction averaged over the ``k`` choices of held-out split.

Splits are any array indexed ``[k, z, y, x]`` (numpy, or a Zarr array on disk for volumes
that do not fit in memory): training reads bounded slabs of slices, inference reads and
writes a few slices at a time.

Examples
--------
>>> cfg = DenoiseConfig(steps=2, patch=16, batch=2, features=4, time_budget=None)
>>> splits = np.random.default_rng(0).normal(size=(2, 4, 16, 16)).astype(np.float32)
>>> result = train(splits, cfg)
>>> result.steps, len(result.losses)
(2, 2)
>>> denoise(result.model, splits).shape
(4, 16, 16)
"""

from __future__ import annotations

import io
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import BadInputError
from .recon import reconstruct
from .recon.fbp import torch_threads

CHECKPOINT_FORMAT = "tomolive-n2i-checkpoint/1"
WEIGHTS_FORMAT = "tomolive-n2i-weights/1"
_ARCH_KEYS = ("neighbours", "features", "depth")


@dataclass(frozen=True)
class DenoiseConfig:
    """Every knob of Noise2Inverse training and inference (all of it goes into provenance).

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
        Adam learning rate (constant: a short self-supervised run is far from converged,
        and a cosine decay over 400 steps lost 0.8 dB on the test scan).
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
        keeps torch's setting (all cores). Give 1 per single-threaded Dask worker: two
        torch threads on a busy core are ~10x slower than one.
    amp : bool
        Mixed precision (float16 autocast + gradient scaling) on CUDA; ignored on CPU.

    Notes
    -----
    The defaults come from runs on the 24 x 128 x 128 test scan (300 photons/pixel) at
    equal CPU time: a narrow, deep net (8 features, depth 3) trained for more steps beat
    16 features at depth 2 (+0.5 dB); batches of 8 beat 16; 5 neighbour slices did as well
    as 9; k = 4 matched k = 2 at twice the inference cost.
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
        resolve_device(self.device)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= minimum


def _require(config: DenoiseConfig, name: str, ok: bool, expected: str) -> None:
    """Raise a BadInputError naming ``DenoiseConfig.<name>`` unless ``ok``."""
    if not ok:
        raise BadInputError(f"DenoiseConfig.{name}: expected {expected}, got {getattr(config, name)!r}")


# ---------------------------------------------------------------------------- splits


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


# ---------------------------------------------------------------------------- network


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.LeakyReLU(0.1, inplace=True),
    )


class UNet25D(nn.Module):
    """A compact 2.5D U-Net: ``2n + 1`` neighbouring slices in, the centre slice out.

    Works in the data's units: ``offset`` and ``scale`` (buffers, saved with the weights)
    normalise the input and un-normalise the output. The output is not a residual added
    to the noisy centre slice: at Noise2Inverse noise levels a residual network must learn
    to cancel the noise exactly, and trained to 23.1 dB where this one reached 26.0 dB in
    the same 400 steps (24-slice test scan).

    Parameters
    ----------
    neighbours : int
        ``n``: slices on each side of the centre slice.
    features : int
        Channels of the first level, doubled at each level below.
    depth : int
        Number of 2x down-samplings; inputs must be multiples of ``2**depth`` in y and x.
    """

    def __init__(self, neighbours: int = 2, features: int = 8, depth: int = 3):
        super().__init__()
        self.neighbours, self.features, self.depth = int(neighbours), int(features), int(depth)
        widths = [features * 2**i for i in range(depth + 1)]
        self.register_buffer("offset", torch.zeros(()))
        self.register_buffer("scale", torch.ones(()))
        self.encoders = nn.ModuleList(
            _block(c_in, c_out) for c_in, c_out in zip([2 * neighbours + 1, *widths[:-2]], widths[:-1])
        )
        self.bottom = _block(widths[-2], widths[-1])
        self.ups = nn.ModuleList(nn.ConvTranspose2d(w * 2, w, 2, stride=2) for w in reversed(widths[:-1]))
        self.decoders = nn.ModuleList(_block(w * 2, w) for w in reversed(widths[:-1]))
        self.head = nn.Conv2d(features, 1, 1)

    def arch(self) -> dict[str, int]:
        """The constructor arguments (what a saved state dict needs to be loaded)."""
        return {"neighbours": self.neighbours, "features": self.features, "depth": self.depth}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.offset) / self.scale
        skips = []
        h = z
        for encoder in self.encoders:
            h = encoder(h)
            skips.append(h)
            h = nn.functional.max_pool2d(h, 2)
        h = self.bottom(h)
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips)):
            h = decoder(torch.cat([up(h), skip], dim=1))
        return self.head(h) * self.scale + self.offset


def new_model(config: DenoiseConfig) -> UNet25D:
    """A freshly initialised U-Net for ``config``, seeded by ``config.seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return UNet25D(config.neighbours, config.features, config.depth)


def model_to_bytes(model: UNet25D) -> bytes:
    """Serialise the architecture and weights (tensors and plain types only)."""
    buffer = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"format": WEIGHTS_FORMAT, "arch": model.arch(), "state_dict": state}, buffer)
    return buffer.getvalue()


def model_from_bytes(data: bytes, device: str | torch.device = "cpu") -> UNet25D:
    """Rebuild a :class:`UNet25D` from :func:`model_to_bytes` output (``weights_only`` load)."""
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or unsafe files
        raise BadInputError(f"weights: not a loadable tomolive weights file ({err})") from err
    if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT:
        raise BadInputError(f"weights: expected format {WEIGHTS_FORMAT!r}, got {type(payload).__name__}")
    model = UNet25D(**{key: int(payload["arch"][key]) for key in _ARCH_KEYS})
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval()


def load_torchscript(path: str | os.PathLike, device: str | None = None) -> torch.jit.ScriptModule:
    """Load a user-supplied TorchScript denoiser for :func:`denoise`.

    The module must map float32 ``(batch, 2n + 1, y, x)`` slices in attenuation units to
    ``(batch, 1, y, x)``; give ``n`` to :func:`denoise` as ``neighbours=`` unless the module
    has a ``neighbours`` attribute. Slices are padded to multiples of ``2**depth`` (the
    module's ``depth`` attribute, else ``DenoiseConfig.depth``). (TorchScript is deprecated
    in torch; it is still how most users ship a model file.)

    Raises
    ------
    BadInputError
        The file is missing or is not a TorchScript archive.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"path: TorchScript file {str(path)!r} does not exist")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            module = torch.jit.load(str(path), map_location=resolve_device(device or "auto"))
        except RuntimeError as err:
            raise BadInputError(f"path: {str(path)!r} is not a TorchScript archive ({err})") from err
    return module.eval()


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; other names as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise BadInputError(f"device: expected 'auto', 'cpu' or 'cuda[:N]', got {device!r}") from err


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


def _read_rows(splits: Any, start: int, stop: int) -> np.ndarray:
    """Rows ``[start, stop)`` of every split as float32 (k, rows, y, x), checked finite."""
    slab = np.asarray(splits[:, start:stop], dtype=np.float32)
    if not np.isfinite(slab).all():
        raise BadInputError(f"splits: found NaN/inf in slices [{start}, {stop})")
    return slab


def _neighbour_index(z: np.ndarray, n: int, nz: int, first: int) -> np.ndarray:
    """Slab indices of slices ``z - n .. z + n`` (edge slices repeated) in a slab starting at ``first``."""
    return np.clip(np.asarray(z)[..., None] + np.arange(-n, n + 1), 0, nz - 1) - first


def _inputs(slab: np.ndarray, total: np.ndarray, held_out: int, index: np.ndarray) -> np.ndarray:
    """Mean of the splits other than ``held_out`` (``total`` = their sum over all splits)
    at slab slices ``index``: (..., 2n + 1, y, x)."""
    return ((total - slab[held_out]) / (slab.shape[0] - 1))[index]


# ---------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    """A trained model and how it got there (goes into the model's provenance)."""

    model: UNet25D
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


def calibrate(model: UNet25D, splits: Any, samples: int = 16) -> None:
    """Set the model's input normalisation from up to ``samples`` evenly spaced slices."""
    nz = int(splits.shape[1])
    rows = np.unique(np.linspace(0, nz - 1, min(samples, nz)).round().astype(int))
    values = np.stack([_read_rows(splits, r, r + 1).mean(axis=0)[0] for r in rows])
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

    def _slab(self, step: int) -> tuple[np.ndarray, int, int]:
        """The slab for ``step``: (data, its first row, its first centre-slice row)."""
        slab_id = 0 if self.core == self.nz else step // self.config.slab_steps
        if slab_id != self._slab_id:
            rng = np.random.default_rng([self.config.seed, slab_id, 1])
            z0 = int(rng.integers(0, self.nz - self.core + 1)) if self.core < self.nz else 0
            first = max(0, z0 - self.config.neighbours)
            stop = min(self.nz, z0 + self.core + self.config.neighbours)
            self._held = (_read_rows(self.splits, first, stop), first, z0)
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
            index = _neighbour_index(z[i], n, self.nz, first)
            window = data[:, index, y[i] : y[i] + p, x[i] : x[i] + p]  # (k, 2n + 1, p, p)
            inputs[i] = (window.sum(axis=0) - window[held_out[i]]) / (self.k - 1)
            targets[i, 0] = window[held_out[i], n]
        return inputs, targets


def train(
    splits: Any,
    config: DenoiseConfig = DenoiseConfig(),
    *,
    model: UNet25D | None = None,
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
    model : UNet25D, optional
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
    device = resolve_device(config.device)
    amp = config.amp and device.type == "cuda"
    if model is None:
        model = new_model(config)
        calibrate(model, splits)
    elif model.arch() != {key: getattr(config, key) for key in _ARCH_KEYS}:
        raise BadInputError(f"model: architecture {model.arch()!r} does not match the config's")
    model = model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    losses: list[float] = []
    step = 0
    if resume:
        step, losses = _restore(checkpoint_dir, model, optimizer, scaler, config)
    sampler = _PatchSampler(splits, config)
    start, first_step = time.perf_counter(), step
    stopped = "steps"
    with torch_threads(config.threads):
        while step < config.steps:
            if config.time_budget is not None and time.perf_counter() - start >= config.time_budget:
                stopped = "time"
                break
            inputs, targets = sampler.batch(step)
            loss = _train_step(model, optimizer, scaler, inputs, targets, device, amp)
            losses.append(loss)
            step += 1
            if on_step is not None:
                on_step(step, loss)
            if checkpoint_dir is not None and step % config.checkpoint_every == 0:
                save_checkpoint(checkpoint_dir, model, optimizer, scaler, config, step, losses)
    if checkpoint_dir is not None and step > first_step and step % config.checkpoint_every:
        save_checkpoint(checkpoint_dir, model, optimizer, scaler, config, step, losses)
    seconds = time.perf_counter() - start
    return TrainResult(model.eval(), config, losses, step, round(seconds, 3), stopped, first_step)


def _train_step(model, optimizer, scaler, inputs, targets, device, amp) -> float:
    x = torch.from_numpy(inputs).to(device)
    y = torch.from_numpy(targets).to(device)
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
        loss = nn.functional.mse_loss(model(x) / model.scale, y / model.scale)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return float(loss.detach())


# ---------------------------------------------------------------------------- checkpoints


def _checkpoints(directory: Path) -> list[Path]:
    return sorted(directory.glob("checkpoint-*.pt"))


def save_checkpoint(
    directory: str | os.PathLike,
    model: UNet25D,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    config: DenoiseConfig,
    step: int,
    losses: list[float],
    keep: int = 2,
) -> Path:
    """Write ``checkpoint-<step>.pt`` atomically in ``directory``; keep the last ``keep``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"checkpoint-{step:09d}.pt"
    state = {
        "format": CHECKPOINT_FORMAT,
        "step": int(step),
        "losses": [float(v) for v in losses],
        "config": config.as_dict(),
        "arch": model.arch(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
    }
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    os.replace(partial, path)
    for old in _checkpoints(directory)[:-keep]:
        old.unlink()
    return path


def _restore(directory, model, optimizer, scaler, config) -> tuple[int, list[float]]:
    """Load the last checkpoint in ``directory`` into the training state; (step, losses)."""
    found = _checkpoints(Path(directory))
    if not found:
        return 0, []
    state = torch.load(found[-1], map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise BadInputError(f"checkpoint_dir: {str(found[-1])!r} is not a tomolive checkpoint")
    wanted = {key: getattr(config, key) for key in _ARCH_KEYS}
    if state["arch"] != wanted or state["config"]["k"] != config.k:
        raise BadInputError(
            f"checkpoint_dir: {str(found[-1])!r} holds architecture {state['arch']!r} "
            f"(k={state['config']['k']}), but the config asks for {wanted!r} (k={config.k})"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    return int(state["step"]), list(state["losses"])


def last_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest checkpoint file in ``directory``, or None."""
    found = _checkpoints(Path(directory))
    return found[-1] if found else None


# ---------------------------------------------------------------------------- inference


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of tiles of size ``tile`` covering ``length`` with at least ``overlap`` shared."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]


def _ramp(tile: int, overlap: int) -> np.ndarray:
    """Blending weights along one tile axis: ramps over ``overlap`` pixels at both ends."""
    t = np.arange(tile, dtype=np.float32)
    edge = np.minimum(t + 0.5, tile - t - 0.5) / max(overlap, 1)
    return np.clip(edge, 1e-3, 1.0)


def _forward(model: nn.Module, x: np.ndarray, multiple: int, device: torch.device, amp: bool) -> np.ndarray:
    """``model`` on (b, c, h, w) float32, reflect-padded up to a multiple of ``multiple``."""
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    tensor = torch.from_numpy(np.ascontiguousarray(x)).to(device)
    if pad_h or pad_w:
        mode = "reflect" if min(h, w) > max(pad_h, pad_w) else "replicate"
        tensor = nn.functional.pad(tensor, (0, pad_w, 0, pad_h), mode=mode)
    with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
        out = model(tensor)
    return out[:, 0, :h, :w].float().cpu().numpy()


def _predict_slices(model, x: np.ndarray, tile: int, overlap: int, multiple: int, device, amp):
    """Prediction for (b, c, y, x) inputs, tiled with blended overlaps when larger than ``tile``."""
    ny, nx = x.shape[-2:]
    if ny <= tile and nx <= tile:
        return _forward(model, x, multiple, device, amp)
    total = np.zeros((x.shape[0], ny, nx), dtype=np.float32)
    weight = np.zeros((ny, nx), dtype=np.float32)
    ty, tx = min(tile, ny), min(tile, nx)
    w = _ramp(ty, overlap)[:, None] * _ramp(tx, overlap)[None, :]
    for y0 in _tile_starts(ny, tile, overlap):
        for x0 in _tile_starts(nx, tile, overlap):
            out = _forward(model, x[..., y0 : y0 + ty, x0 : x0 + tx], multiple, device, amp)
            total[:, y0 : y0 + ty, x0 : x0 + tx] += out * w
            weight[y0 : y0 + ty, x0 : x0 + tx] += w
    return total / weight


def _neighbours_of(model: nn.Module, neighbours: int | None) -> int:
    if neighbours is not None:
        return int(neighbours)
    value = getattr(model, "neighbours", None)
    if value is None:
        raise BadInputError(
            "neighbours: this model has no 'neighbours' attribute; pass neighbours= "
            "(its input has 2 * neighbours + 1 channels)"
        )
    return int(value)


def denoise(
    model: nn.Module,
    splits: Any,
    *,
    rows: tuple[int, int] | None = None,
    out: Any = None,
    neighbours: int | None = None,
    config: DenoiseConfig = DenoiseConfig(),
) -> Any:
    """Denoise a volume: the model's prediction averaged over the ``k`` held-out splits.

    Parameters
    ----------
    model : torch.nn.Module
        A trained :class:`UNet25D` (or a TorchScript module from :func:`load_torchscript`).
    splits : array-like
        ``[k, z, y, x]`` split reconstructions (numpy or zarr); read a few slices at a time.
    rows : (start, stop), optional
        Denoise only slices ``[start, stop)`` (neighbours outside are still read), e.g.
        one Dask block; default all.
    out : array-like, optional
        Where to write the (stop - start, y, x) result (numpy or zarr); default a new
        numpy array.
    neighbours : int, optional
        Slices on each side the model expects; default ``model.neighbours``.
    config : DenoiseConfig
        Uses ``tile``, ``overlap``, ``slices_per_batch``, ``depth``, ``device``, ``amp``.

    Returns
    -------
    numpy.ndarray or the given ``out``
        float32 (stop - start, y, x).
    """
    k, nz, ny, nx = check_splits(splits)
    start, stop = _check_rows(rows, nz)
    n = _neighbours_of(model, neighbours)
    if out is None:
        out = np.empty((stop - start, ny, nx), dtype=np.float32)
    elif tuple(out.shape) != (stop - start, ny, nx):
        raise BadInputError(f"out: expected shape {(stop - start, ny, nx)!r}, got {tuple(out.shape)!r}")
    device = resolve_device(config.device)
    amp = config.amp and device.type == "cuda"
    model = model.to(device).eval()
    multiple = 2 ** int(getattr(model, "depth", config.depth))
    with torch_threads(config.threads):
        for z0 in range(start, stop, config.slices_per_batch):
            z1 = min(stop, z0 + config.slices_per_batch)
            first = max(0, z0 - n)
            slab = _read_rows(splits, first, min(nz, z1 + n))
            index = _neighbour_index(np.arange(z0, z1), n, nz, first)
            total = slab.sum(axis=0)
            prediction = np.zeros((z1 - z0, ny, nx), dtype=np.float32)
            for held_out in range(k):
                x = _inputs(slab, total, held_out, index)
                prediction += _predict_slices(model, x, config.tile, config.overlap, multiple, device, amp)
            out[z0 - start : z1 - start] = prediction / k
    return out


def _check_rows(rows: tuple[int, int] | None, nz: int) -> tuple[int, int]:
    if rows is None:
        return 0, nz
    start, stop = (int(r) for r in rows)
    if not 0 <= start < stop <= nz:
        raise BadInputError(f"rows: expected (start, stop) with 0 <= start < stop <= {nz}, got {rows!r}")
    return start, stop
