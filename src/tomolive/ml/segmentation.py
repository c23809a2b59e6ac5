"""Phase segmentation of reconstructed volumes by a 2.5D U-Net, with multi-Otsu as fallback.

Labels follow :mod:`tomolive.segment` (0 pore and air, 1 solid, 2 inclusion...). Methods:

``"unet"``
    A :class:`~tomolive.ml.network.UNet` with weights shipped in ``tomolive/weights``
    (trained on simulated foams and rocks by ``scripts/train_segmenter.py``), or fine-tuned
    on a few labelled slices (:func:`tomolive.ml.segmenter_training.fine_tune`).
``"otsu"``
    Multi-Otsu thresholds on lightly smoothed slices: always available, no weights.

``"auto"`` takes the network when usable weights exist and their phase count matches the
data's (``n_phases``), else multi-Otsu; the returned ``info`` says which ran and why.

Intensities are scaled by percentiles of the whole (smoothed) volume
(:func:`tomolive.segment.intensity_range`) so dose, units and contrast matter little; pass
the same range to every block of a volume segmented piecewise. Voxels outside the
reconstruction's inscribed circle are labelled 0.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import BadInputError, MissingDataError
from ..qc import circle_mask
from ..segment import (
    PHASES,
    as_volume,
    check_context,
    intensity_range,
    normalize,
    otsu_thresholds,
    padded_slab,
    phase_names,
    segment_otsu,
    slice_batches,
    stacks,
)
from .device import choose_device
from .model_store import model_to_bytes, read_model_file, sha256, write_model_file
from .network import UNet, UNetConfig
from .tiling import pad_to_multiple, tile_core, tile_corners

METHODS = ("auto", "unet", "otsu")
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
DEFAULT_MODEL = "foam_rock_unet"
"""Name of the shipped weights (``WEIGHTS_DIR / f"{DEFAULT_MODEL}.pt"`` and ``.json``)."""


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
        return self.net.config.out_channels

    @property
    def sha256(self) -> str:
        """The model store's hash of the serialised weights."""
        return sha256(model_to_bytes(self.net))

    def info(self) -> dict[str, Any]:
        """What provenance records about the model."""
        info = {"name": self.name, "sha256": self.sha256, "phases": list(self.phases)}
        if "parent" in self.record:
            info["parent"] = self.record["parent"]
        return info


def load_segmenter(name_or_path: str | os.PathLike = DEFAULT_MODEL, *, device: str | None = None) -> SegmentationModel:
    """Load segmentation weights (a model-store ``.pt`` beside its ``.json`` record).

    Parameters
    ----------
    name_or_path : str or Path
        A name in ``tomolive/weights`` (default: the shipped foam/rock model) or a path to
        a ``.pt`` file written by :func:`save_segmenter`.
    device : str, optional
        ``"cpu"`` or ``"cuda[:N]"``; default CUDA when available.

    Raises
    ------
    MissingDataError
        The weights or their JSON record are absent.
    BadInputError
        The weights do not match the hash in their record, or are not a segmentation network.
    """
    path = Path(name_or_path)
    if path.suffix != ".pt":
        path = WEIGHTS_DIR / f"{name_or_path}.pt"
    net, record = read_model_file(path, device)
    if type(net) is not UNet or "phases" not in record:
        raise BadInputError(f"model {str(path)!r}: expected segmentation weights with phases, got a {net.kind}")
    return SegmentationModel(net, record.get("name", path.stem), tuple(record["phases"]), record)


def save_segmenter(model: SegmentationModel, path: str | os.PathLike) -> Path:
    """Write ``model`` as ``path`` (``.pt``) and its record beside it (``.json``); returns the ``.pt`` path.

    The record gains ``name``, ``phases``, ``kind``, ``architecture`` and ``sha256``.
    """
    record = {**model.record, "name": model.name, "phases": list(model.phases)}
    return write_model_file(model.net, path, record)


def new_segmenter(
    name: str, phases: tuple[str, ...] = PHASES, *, base: int = 16, depth: int = 3, device: str | None = None
) -> SegmentationModel:
    """An untrained model (seeded by the caller's ``torch.manual_seed``) for ``phases``."""
    net = UNet(UNetConfig(context=1, out_channels=len(phases), base=base, depth=depth))
    return SegmentationModel(net.to(choose_device(device)).eval(), name, tuple(phases))


def choose_method(
    method: str = "auto",
    model: SegmentationModel | str | os.PathLike | None = None,
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
        net = model if isinstance(model, SegmentationModel) else load_segmenter(model or DEFAULT_MODEL, device=device)
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


@torch.no_grad()
def predict_labels(net: UNet, stacks: np.ndarray, *, tile: int = 512, overlap: int = 32) -> np.ndarray:
    """Labels (uint8, ``(n, H, W)``) of normalised 2.5D stacks ``(n, C, H, W)``, on ``net``'s device.

    Slices larger than ``tile`` are cut into tiles overlapping by ``overlap`` (at most a
    quarter of the tile) on each side; each keeps its core.
    """
    n, _, height, width = stacks.shape
    overlap = min(overlap, tile // 4)
    tile_y, tile_x = min(tile, height), min(tile, width)
    device = next(net.parameters()).device
    out = np.empty((n, height, width), dtype=np.uint8)
    batch = torch.from_numpy(np.ascontiguousarray(stacks, dtype=np.float32)).to(device)
    for y0, x0 in tile_corners(height, width, tile, 2 * overlap):
        x = batch[:, :, y0 : y0 + tile_y, x0 : x0 + tile_x]
        logits = net(pad_to_multiple(x, net.config.multiple))[..., : x.shape[-2], : x.shape[-1]]
        (ya, yb), (xa, xb) = tile_core(y0, tile_y, height, overlap), tile_core(x0, tile_x, width, overlap)
        labels = logits.argmax(dim=1).to(torch.uint8).cpu().numpy()
        out[:, ya:yb, xa:xb] = labels[:, ya - y0 : yb - y0, xa - x0 : xb - x0]
    return out


def segment_volume(
    volume: Any,
    method: str = "auto",
    model: SegmentationModel | str | os.PathLike | None = None,
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
        The network, or a name/path for :func:`load_segmenter`; default the shipped weights.
    n_phases : int, optional
        Phases in the sample (pore and air count as one). Default: the model's, or 3 for Otsu.
    context : (int, int)
        Slices at the start and end of ``volume`` that are context only (a block cut from
        a bigger volume with a halo): they are read but not labelled.
    value_range : (float, float), optional
        Grey values mapped to 0 and 1 (:func:`~tomolive.segment.intensity_range`); default:
        this volume's. Pass the whole volume's range when segmenting it block by block.
    thresholds : list of float, optional
        Multi-Otsu thresholds (:func:`~tomolive.segment.otsu_thresholds`); default: this volume's.
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
    volume, was_2d = as_volume(volume)
    first, last = check_context(context, volume.shape[0])
    if batch_size < 1 or tile < 32:
        raise BadInputError(f"batch_size >= 1 and tile >= 32 expected; got {batch_size!r}, {tile!r}")
    chosen, net, reason = choose_method(method, model, n_phases, device=device)
    n_phases = net.n_classes if net is not None else (n_phases or len(PHASES))
    info: dict[str, Any] = {
        "method": chosen,
        "requested": method,
        "reason": reason,
        "n_phases": n_phases,
        "phases": list(net.phases if net else phase_names(n_phases)),
    }
    if net is not None:
        value_range = value_range or intensity_range(volume)
        labels = _segment_unet(volume, first, last, net.net, value_range, batch_size, tile)
        info.update(
            model=net.info(),
            value_range=list(value_range),
            device=str(next(net.net.parameters()).device),
            tile=tile,
            batch_size=batch_size,
        )
    else:
        thresholds = thresholds or otsu_thresholds(volume, n_phases, sigma=sigma)
        labels = segment_otsu(volume, first, last, thresholds, sigma, batch_size)
        info.update(thresholds=list(map(float, thresholds)), sigma=sigma)
    labels[:, ~circle_mask(labels.shape[1:], 1.0)] = 0
    info["seconds"] = round(time.perf_counter() - start_time, 3)
    return (labels[0] if was_2d else labels), info


def _segment_unet(
    volume: Any, first: int, last: int, net: UNet, value_range: tuple[float, float], batch_size: int, tile: int
) -> np.ndarray:
    context = net.config.context
    out = np.empty((last - first, *volume.shape[1:]), dtype=np.uint8)
    for start, stop in slice_batches(first, last, batch_size):
        slab = normalize(padded_slab(volume, start, stop, context), value_range)
        out[start - first : stop - first] = predict_labels(net, stacks(slab, context), tile=tile)
    return out
