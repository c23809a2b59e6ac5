"""Segmentation of reconstructed volumes into material phases, and the numbers scientists read.

Labels follow the house convention: 0 pore (and the air around the sample), 1 solid matrix,
2 dense inclusion (more phases: higher labels for denser material). Two methods:

``"unet"``
    A compact 2.5D U-Net (:mod:`tomolive.unet`) with weights shipped in
    ``tomolive/weights`` (trained on simulated foams and rocks by
    ``scripts/train_segmenter.py``), or fine-tuned on a few labelled slices
    (:func:`fine_tune`).
``"otsu"``
    Multi-Otsu thresholds on lightly smoothed slices: always available, no weights.

``"auto"`` takes the network when usable weights exist and their phase count matches the
data's (``n_phases``), else multi-Otsu; the returned ``info`` says which ran and why.

Intensities are scaled by percentiles of the whole (smoothed) volume (:func:`intensity_range`)
so dose, units and contrast matter little; pass the same range to every block of a volume
segmented piecewise. Voxels outside the reconstruction's inscribed circle are labelled 0.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from skimage.filters import threshold_multiotsu

from .errors import BadInputError, MissingDataError
from .qc import circle_mask
from .unet import IGNORE, TrainSettings, UNet, UNetConfig, pick_device, predict, train

PHASES = ("pore", "solid", "inclusion")
"""Names of labels 0, 1, 2."""
METHODS = ("auto", "unet", "otsu")
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_MODEL = "foam_rock_unet"
"""Name of the shipped weights (``WEIGHTS_DIR / f"{DEFAULT_MODEL}.pt"`` and ``.json``)."""
PERCENTILES = (0.5, 99.5)
"""Percentiles of :func:`intensity_range`, which :func:`normalize` maps to 0 and 1."""
RANGE_SIGMA = 2.0
"""Smoothing (pixels) of the slices :func:`intensity_range` takes percentiles of."""


@dataclass
class SegmentationModel:
    """A network with what it needs to be used and cited.

    Attributes
    ----------
    net : UNet
        The network (eval mode).
    name : str
        Model id (file stem of shipped weights, or given when fine-tuning).
    phases : tuple of str
        Name of each output label.
    record : dict
        Training provenance (the weights' JSON, plus ``parent`` after fine-tuning).
    """

    net: UNet
    name: str
    phases: tuple[str, ...]
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return self.net.config.n_classes

    @property
    def sha256(self) -> str:
        """Hash of the weights' values (independent of file format)."""
        return state_sha256(self.net.state_dict())

    def info(self) -> dict[str, Any]:
        """What provenance records about the model."""
        info = {"name": self.name, "sha256": self.sha256, "phases": list(self.phases)}
        if "parent" in self.record:
            info["parent"] = self.record["parent"]
        return info


def state_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of a state_dict, in name order."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def load_model(name_or_path: str | Path = DEFAULT_MODEL, *, device: str | None = None) -> SegmentationModel:
    """Load weights (``.pt`` state_dict beside a ``.json`` record) and check their hash.

    Parameters
    ----------
    name_or_path : str or Path
        A name in ``tomolive/weights`` (default: the shipped foam/rock model) or a path to
        a ``.pt`` file written by :func:`save_model`.
    device : str, optional
        ``"cpu"`` or ``"cuda[:N]"``; default CUDA when available.

    Raises
    ------
    MissingDataError
        The weights or their JSON record are absent.
    BadInputError
        The weights do not match the hash or architecture in their record.
    """
    path = Path(name_or_path)
    if path.suffix != ".pt":
        path = WEIGHTS_DIR / f"{name_or_path}.pt"
    record_path = path.with_suffix(".json")
    if not path.is_file() or not record_path.is_file():
        raise MissingDataError(
            f"model {str(name_or_path)!r}: expected weights {str(path)!r} and record "
            f"{str(record_path)!r}; train them with scripts/train_segmenter.py"
        )
    try:
        record = json.loads(record_path.read_text())
        net = UNet(UNetConfig(**record["architecture"]))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, pickle.UnpicklingError) as err:
        raise BadInputError(f"model {str(path)!r}: cannot read the weights or their record ({err})") from err
    if state_sha256(state) != record["sha256"]:
        raise BadInputError(
            f"model {str(path)!r}: weights hash {state_sha256(state)[:12]}... does not match "
            f"the record's {record['sha256'][:12]}...; the file is corrupt or was replaced"
        )
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise BadInputError(f"model {str(path)!r}: weights do not fit the recorded architecture ({err})") from err
    net.to(pick_device(device)).eval()
    return SegmentationModel(net, record.get("name", path.stem), tuple(record["phases"]), record)


def save_model(model: SegmentationModel, path: str | Path) -> Path:
    """Write ``model`` as ``path`` (``.pt`` state_dict) and its record beside it (``.json``).

    The record gains ``name``, ``phases``, ``architecture`` and ``sha256``. Returns the
    ``.pt`` path.
    """
    path = Path(path).with_suffix(".pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.net.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path.write_bytes(buffer.getvalue())
    record = {
        **model.record,
        "name": model.name,
        "phases": list(model.phases),
        "architecture": asdict(model.net.config),
        "sha256": state_sha256(state),
    }
    path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return path


def new_model(
    name: str, phases: tuple[str, ...] = PHASES, *, base: int = 16, depth: int = 3, device: str | None = None
) -> SegmentationModel:
    """An untrained model (seeded by the caller's ``torch.manual_seed``) for ``phases``."""
    net = UNet(UNetConfig(context=1, n_classes=len(phases), base=base, depth=depth))
    return SegmentationModel(net.to(pick_device(device)).eval(), name, tuple(phases))


def _as_volume(volume: Any, name: str = "volume") -> tuple[Any, bool]:
    """``volume`` as a 3D array-like (a 2D slice gains an axis); whether it was 2D."""
    shape = getattr(volume, "shape", None)
    if shape is None:
        volume = np.asarray(volume)
        shape = volume.shape
    if len(shape) not in (2, 3) or min(shape) < 1 or shape[-2] < 8 or shape[-1] < 8:
        raise BadInputError(
            f"{name}: expected a 3D array (n_slices, ny, nx) with ny, nx >= 8, or one 2D slice; "
            f"got shape {tuple(shape)!r}"
        )
    if len(shape) == 2:
        return np.asarray(volume)[None], True
    return volume, False


def _slab(volume: Any, start: int, stop: int) -> np.ndarray:
    """Slices ``[start, stop)`` as float32, checked finite (works on Zarr/Tiled arrays too)."""
    slab = np.asarray(volume[start:stop], dtype=np.float32)
    if not np.isfinite(slab).all():
        bad = np.argwhere(~np.isfinite(slab))[0] + np.array([start, 0, 0])
        raise BadInputError(
            f"volume: expected finite values, found NaN/inf at [z, y, x] = {tuple(int(i) for i in bad)!r}"
        )
    return slab


def _sample_slices(n: int, max_slices: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, max_slices)).round().astype(int))


def intensity_range(
    volume: Any,
    percentiles: tuple[float, float] = PERCENTILES,
    *,
    sigma: float = RANGE_SIGMA,
    max_slices: int = 32,
) -> tuple[float, float]:
    """Robust low/high grey values of a volume: percentiles inside the reconstruction circle.

    The percentiles are taken on slices smoothed in-plane by a Gaussian of ``sigma`` pixels,
    so they follow the phases' grey levels rather than the noise's tails: on a simulated
    foam, going from noise-free to 300 photons per pixel moves the pores' scaled level from
    0.01 to 0.06 (0.03 to 0.31 without smoothing). Reads at most ``max_slices`` evenly
    spaced slices (bounded memory on big volumes).

    Examples
    --------
    >>> vol = np.zeros((2, 64, 64), dtype=np.float32); vol[:, 16:48, 16:48] = 3.0
    >>> [round(v, 3) for v in intensity_range(vol)]
    [0.0, 3.0]
    """
    volume, _ = _as_volume(volume)
    mask = circle_mask(volume.shape[1:], 1.0)
    values = np.concatenate(
        [_smooth(_slab(volume, z, z + 1), sigma)[0][mask] for z in _sample_slices(volume.shape[0], max_slices)]
    )
    lo, hi = np.percentile(values, percentiles)
    if not hi > lo:
        hi = lo + 1.0  # a flat volume: any scale will do
    return float(lo), float(hi)


def normalize(slab: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """Map ``value_range`` to [0, 1] linearly (float32; values outside are kept, not clipped)."""
    lo, hi = value_range
    return ((np.asarray(slab, dtype=np.float32) - np.float32(lo)) / np.float32(hi - lo)).astype(np.float32)


def stacks(slab: np.ndarray, context: int) -> np.ndarray:
    """2.5D network inputs ``(n, 2 * context + 1, H, W)`` from a padded slab ``(n + 2 * context, H, W)``."""
    n = slab.shape[0] - 2 * context
    return np.stack([slab[k : k + n] for k in range(2 * context + 1)], axis=1)


def _padded_slab(volume: Any, start: int, stop: int, context: int) -> np.ndarray:
    """Slices ``[start - context, stop + context)``, edge slices repeated past the volume's ends."""
    n = volume.shape[0]
    lo, hi = max(0, start - context), min(n, stop + context)
    slab = _slab(volume, lo, hi)
    return np.pad(slab, ((lo - (start - context), (stop + context) - hi), (0, 0), (0, 0)), mode="edge")


def otsu_thresholds(volume: Any, n_phases: int, *, sigma: float = 1.0, max_slices: int = 32) -> list[float]:
    """Multi-Otsu thresholds of ``n_phases`` classes from smoothed slices inside the circle."""
    volume, _ = _as_volume(volume)
    mask = circle_mask(volume.shape[1:], 1.0)
    values = np.concatenate(
        [_smooth(_slab(volume, z, z + 1), sigma)[0][mask] for z in _sample_slices(volume.shape[0], max_slices)]
    )
    try:
        return [float(t) for t in threshold_multiotsu(values, classes=n_phases)]
    except ValueError as err:
        raise BadInputError(f"volume: cannot find {n_phases} grey-level classes ({err})") from err


def _smooth(slab: np.ndarray, sigma: float) -> np.ndarray:
    """In-plane Gaussian smoothing of each slice (none for ``sigma == 0``)."""
    return ndimage.gaussian_filter(slab, (0, sigma, sigma)) if sigma > 0 else slab


def choose_method(
    method: str = "auto",
    model: SegmentationModel | str | Path | None = None,
    n_phases: int | None = None,
    *,
    device: str | None = None,
) -> tuple[str, SegmentationModel | None, str]:
    """Which method runs, with which model, and why (for provenance).

    :func:`segment_volume` calls this; call it once yourself to segment a volume block by
    block with one decision (pass the method and model it returns to every block).

    Returns
    -------
    (method, model, reason)
        ``"unet"`` with the loaded model, or ``"otsu"`` with None; ``reason`` is a sentence.

    Raises
    ------
    BadInputError, MissingDataError
        ``method="unet"`` and the weights cannot be loaded or label another phase count.
    """
    if method not in METHODS:
        raise BadInputError(f"method: expected one of {METHODS}, got {method!r}")
    if method == "otsu":
        return "otsu", None, "requested"
    try:
        net = model if isinstance(model, SegmentationModel) else load_model(model or DEFAULT_MODEL, device=device)
    except (MissingDataError, BadInputError) as err:
        if method == "unet":
            raise
        return "otsu", None, f"no usable network weights ({err})"
    if n_phases is not None and n_phases != net.n_classes:
        if method == "unet":
            raise BadInputError(
                f"n_phases: the data has {n_phases} phases but model {net.name!r} labels "
                f"{net.n_classes} ({', '.join(net.phases)}); use method='otsu' or fine-tune a model"
            )
        return "otsu", None, f"model {net.name!r} labels {net.n_classes} phases, the data has {n_phases}"
    if method == "unet":
        return "unet", net, "requested"
    if n_phases is None:
        return "unet", net, f"n_phases not given: using the {net.n_classes} phases of model {net.name!r}"
    return "unet", net, f"model {net.name!r} labels {net.n_classes} phases, as the data has"


def segment_volume(
    volume: Any,
    method: str = "auto",
    model: SegmentationModel | str | Path | None = None,
    *,
    n_phases: int | None = None,
    context: tuple[int, int] = (0, 0),
    value_range: tuple[float, float] | None = None,
    thresholds: list[float] | None = None,
    sigma: float = 1.0,
    batch_size: int = 4,
    tile: int = 512,
    device: str | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Label every voxel of a reconstructed volume with its phase.

    Parameters
    ----------
    volume : array-like
        ``(n_slices, ny, nx)`` float grey values (numpy, Zarr or a Tiled array client), or
        one 2D slice. Read ``batch_size`` slices at a time.
    method : {"auto", "unet", "otsu"}
        ``"auto"``: the network when weights load and match ``n_phases``, else multi-Otsu.
    model : SegmentationModel or str, optional
        The network, or a name/path for :func:`load_model`; default the shipped weights.
    n_phases : int, optional
        Phases in the sample (pore and air count as one). Default: the model's, or 3 for Otsu.
    context : (int, int)
        Slices at the start and end of ``volume`` that are context only (a block cut from
        a bigger volume with a halo): they are read but not labelled.
    value_range : (float, float), optional
        Grey values mapped to 0 and 1 (:func:`intensity_range`); default: this volume's.
        Pass the whole volume's range when segmenting it block by block.
    thresholds : list of float, optional
        Multi-Otsu thresholds (:func:`otsu_thresholds`); default: this volume's.
    sigma : float
        In-plane Gaussian smoothing (pixels) before Otsu thresholds (0 for none).
    batch_size : int
        Slices per network pass (memory bound).
    tile : int
        Largest tile side (pixels) per network pass; bigger slices are tiled with overlap.
    device : str, optional
        Where a model given by name is loaded: ``"cpu"`` or ``"cuda[:N]"``; default CUDA
        when available (a given :class:`SegmentationModel` runs where it is).

    Returns
    -------
    labels : numpy.ndarray
        uint8, the shape of ``volume`` less the context slices.
    info : dict
        JSON-able: ``method`` run, ``requested``, ``reason``, ``phases``, ``value_range``,
        ``thresholds`` (Otsu) or ``model`` (name, sha256), ``device``, ``seconds``.

    Raises
    ------
    BadInputError
        Bad shapes, NaN/inf, unknown method, ``method="unet"`` without usable weights or
        with a phase count that differs from ``n_phases``.

    Examples
    --------
    >>> vol = np.zeros((3, 32, 32), dtype=np.float32); vol[:, 8:24, 8:24] = 1.0
    >>> labels, info = segment_volume(vol, "otsu", n_phases=2, sigma=0)
    >>> int(labels[1, 16, 16]), int(labels[1, 2, 2]), info["method"]
    (1, 0, 'otsu')
    """
    start_time = time.perf_counter()
    volume, was_2d = _as_volume(volume)
    first, last = _check_context(context, volume.shape[0])
    if batch_size < 1 or tile < 32:
        raise BadInputError(f"batch_size >= 1 and tile >= 32 expected; got {batch_size!r}, {tile!r}")
    chosen, net, reason = choose_method(method, model, n_phases, device=device)
    n_phases = net.n_classes if net is not None else (n_phases or len(PHASES))
    info: dict[str, Any] = {
        "method": chosen,
        "requested": method,
        "reason": reason,
        "n_phases": n_phases,
        "phases": list(net.phases if net else _phase_names(n_phases)),
    }
    if net is not None:
        value_range = value_range or intensity_range(volume)
        labels = _segment_unet(volume, first, last, net, value_range, batch_size, tile)
        info.update(
            model=net.info(),
            value_range=list(value_range),
            device=str(next(net.net.parameters()).device),
            tile=tile,
            batch_size=batch_size,
        )
    else:
        thresholds = thresholds or otsu_thresholds(volume, n_phases, sigma=sigma)
        labels = _segment_otsu(volume, first, last, thresholds, sigma, batch_size)
        info.update(thresholds=list(map(float, thresholds)), sigma=sigma)
    labels[:, ~circle_mask(labels.shape[1:], 1.0)] = 0
    info["seconds"] = round(time.perf_counter() - start_time, 3)
    return (labels[0] if was_2d else labels), info


def _check_context(context: tuple[int, int], n: int) -> tuple[int, int]:
    try:
        before, after = (int(c) for c in context)
    except (TypeError, ValueError) as err:
        raise BadInputError(f"context: expected two slice counts (before, after), got {context!r}") from err
    if before < 0 or after < 0 or before + after >= n:
        raise BadInputError(f"context: {context!r} leaves no slice to label in a volume of {n} slices")
    return before, n - after


def _phase_names(n: int) -> tuple[str, ...]:
    return PHASES[:n] if n <= len(PHASES) else PHASES + tuple(f"phase{k}" for k in range(len(PHASES), n))


def _batches(first: int, last: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(first, last, size):
        yield start, min(last, start + size)


def _segment_unet(
    volume: Any,
    first: int,
    last: int,
    model: SegmentationModel,
    value_range: tuple[float, float],
    batch_size: int,
    tile: int,
) -> np.ndarray:
    context = model.net.config.context
    device = next(model.net.parameters()).device
    out = np.empty((last - first, *volume.shape[1:]), dtype=np.uint8)
    for start, stop in _batches(first, last, batch_size):
        slab = normalize(_padded_slab(volume, start, stop, context), value_range)
        out[start - first : stop - first] = predict(model.net, stacks(slab, context), tile=tile, device=device)
    return out


def _segment_otsu(
    volume: Any, first: int, last: int, thresholds: list[float], sigma: float, batch_size: int
) -> np.ndarray:
    out = np.empty((last - first, *volume.shape[1:]), dtype=np.uint8)
    for start, stop in _batches(first, last, batch_size):
        out[start - first : stop - first] = np.digitize(_smooth(_slab(volume, start, stop), sigma), thresholds)
    return out


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
    model: SegmentationModel | str | Path | None,
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
        :func:`segment_volume` will use).
    seed : int
        Seed of crops and augmentation.

    Returns
    -------
    SegmentationModel
        ``record["parent"]`` names the starting model and ``record["fine_tune"]`` the slices
        and settings.
    """
    parent = model if isinstance(model, SegmentationModel) else load_model(model or DEFAULT_MODEL, device=device)
    volume, _ = _as_volume(volume)
    labelled = _labelled_slices(labels, tuple(volume.shape), parent.n_classes)
    value_range = value_range or intensity_range(volume)
    context = parent.net.config.context
    inputs = np.concatenate(
        [stacks(normalize(_padded_slab(volume, z, z + 1, context), value_range), context) for z in labelled]
    )
    targets = np.stack(list(labelled.values()))
    targets[:, ~circle_mask(targets.shape[1:], 1.0)] = IGNORE
    net = UNet(parent.net.config)
    net.load_state_dict(parent.net.state_dict())
    settings = TrainSettings(steps=steps, lr=lr, batch_size=4, crop=96, freeze_norm=True, seed=seed)
    losses = train(net, inputs, targets, settings, device=pick_device(device))
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


def dice_scores(labels: np.ndarray, truth: np.ndarray, n_phases: int, mask: np.ndarray | None = None) -> list[float]:
    """Dice coefficient of each label 0..n_phases-1 (NaN where absent from both)."""
    labels, truth = np.asarray(labels), np.asarray(truth)
    if labels.shape != truth.shape:
        raise BadInputError(f"labels has shape {labels.shape!r} but truth has {truth.shape!r}; they must match")
    if mask is not None:
        labels, truth = labels[np.broadcast_to(mask, labels.shape)], truth[np.broadcast_to(mask, truth.shape)]
    scores = []
    for k in range(n_phases):
        a, b = labels == k, truth == k
        total = int(a.sum()) + int(b.sum())
        scores.append(2.0 * int((a & b).sum()) / total if total else float("nan"))
    return scores


def phase_statistics(
    labels: np.ndarray | Iterable[np.ndarray],
    n_phases: int = 3,
    *,
    min_pore_voxels: int = 8,
    phases: tuple[str, ...] | None = None,
    slices_per_block: int = 64,
) -> dict[str, Any]:
    """Phase volume fractions, porosity and connected-pore count of a label volume (JSON-able).

    The sample is, slice by slice, everything inside the outline of the non-pore labels
    (holes filled), so the air around it is not counted as porosity. Pores are 6-connected
    3D components of label 0 inside the sample; those under ``min_pore_voxels`` are noise.
    Works block by block (an array is cut into ``slices_per_block`` slabs; or pass an
    iterable of consecutive slabs, e.g. read from Tiled) with bounded memory.

    Returns
    -------
    dict
        ``phases``, ``sample_voxels``, ``volume_fractions`` (phase name -> fraction of the
        sample), ``porosity``, ``pore_count``, ``largest_pore_fraction`` (largest pore's
        share of the pore volume: 1 when all pores connect), ``min_pore_voxels``.

    Examples
    --------
    >>> lab = np.ones((4, 16, 16), np.uint8); lab[1:3, 4:6, 4:6] = 0; lab[1:3, 9:12, 9:12] = 0
    >>> stats = phase_statistics(lab, 2, min_pore_voxels=1)
    >>> stats["pore_count"], round(stats["porosity"], 4)
    (2, 0.0254)
    """
    names = tuple(phases or _phase_names(n_phases))
    counts = np.zeros(n_phases, dtype=np.int64)
    pores = _PoreCounter()
    for block in _label_blocks(labels, slices_per_block):
        if block.size and int(block.max()) >= n_phases:
            raise BadInputError(f"labels: expected values 0..{n_phases - 1}, found {int(block.max())}")
        sample = np.stack([ndimage.binary_fill_holes(s > 0) for s in block]) if block.size else block.astype(bool)
        counts += np.bincount(block[sample], minlength=n_phases)[:n_phases]
        pores.add((block == 0) & sample)
    total = int(counts.sum())
    fractions = counts / total if total else np.zeros(n_phases)
    sizes = pores.sizes(min_pore_voxels)
    return {
        "phases": list(names),
        "sample_voxels": total,
        "volume_fractions": {name: round(float(f), 6) for name, f in zip(names, fractions)},
        "porosity": round(float(fractions[0]), 6),
        "pore_count": int(sizes.size),
        "largest_pore_fraction": round(float(sizes.max() / sizes.sum()), 6) if sizes.size else 0.0,
        "min_pore_voxels": int(min_pore_voxels),
    }


def _label_blocks(labels: np.ndarray | Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    if hasattr(labels, "shape") and hasattr(labels, "__getitem__"):
        if len(labels.shape) != 3:
            raise BadInputError(f"labels: expected a 3D label volume, got shape {tuple(labels.shape)!r}")
        for start in range(0, labels.shape[0], size):
            yield np.asarray(labels[start : start + size])
        return
    for block in labels:
        block = np.asarray(block)
        if block.ndim != 3:
            raise BadInputError(f"labels: expected 3D blocks (slices, ny, nx), got shape {block.shape!r}")
        yield block


class _PoreCounter:
    """Connected components across consecutive slabs: label each, join at shared faces."""

    def __init__(self) -> None:
        self._parent = np.zeros(0, dtype=np.int64)
        self._size = np.zeros(0, dtype=np.int64)
        self._last: np.ndarray | None = None

    def add(self, pore: np.ndarray) -> None:
        if not pore.size:
            return
        local, n = ndimage.label(pore)
        offset = self._parent.size
        self._parent = np.concatenate([self._parent, np.arange(offset, offset + n)])
        self._size = np.concatenate([self._size, np.bincount(local.ravel(), minlength=n + 1)[1:]])
        ids = np.where(local > 0, local - 1 + offset, -1)
        if self._last is not None and self._last.shape == ids.shape[1:]:
            touching = (self._last >= 0) & (ids[0] >= 0)
            for a, b in np.unique(np.stack([self._last[touching], ids[0][touching]], axis=1), axis=0):
                self._union(int(a), int(b))
        self._last = ids[-1]

    def _find(self, i: int) -> int:
        while self._parent[i] != i:
            self._parent[i] = self._parent[self._parent[i]]
            i = int(self._parent[i])
        return i

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self._parent[rb] = ra

    def sizes(self, min_voxels: int) -> np.ndarray:
        """Voxel counts of the joined pores of at least ``min_voxels``."""
        roots = np.array([self._find(i) for i in range(self._parent.size)], dtype=np.int64)
        sizes = np.bincount(roots, weights=self._size, minlength=self._parent.size).astype(np.int64)
        return sizes[sizes >= max(1, min_voxels)]
