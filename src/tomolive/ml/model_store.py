"""The model store: every trained network, in Tiled under ``models/<id>`` or in local files.

One serialised form (:func:`model_to_bytes`: format, kind, architecture and tensors), one
hash (SHA-256 of those bytes) and one error set for both places. A Tiled model is one node:
the bytes as a 1D uint8 array, and metadata saying what it is and where it came from
(sample class, training scan uids, steps, loss curve, hyper-parameters, torch version,
SHA-256). Its id is derived from the hash, so the same weights are stored once. A local
model is ``<name>.pt`` (the bytes) beside ``<name>.json`` (its record, with ``sha256``).
Loading checks the hash and reads tensors only (``torch.load(..., weights_only=True)``):
no pickled code runs.

Examples
--------
Given a Tiled ``client`` and a :class:`tomolive.ml.noise2inverse.TrainResult` ``result``::

    model_id = save_model(client, result.model, sample_class="foam", training=result,
                          scan_uids=[uid])
    [newest, *_] = find_models(client, sample_class="foam")
    model = load_model(client, newest.id)
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tiled.client.base import BaseClient
from tiled.queries import Key
from tiled.structures.core import Spec

import tomolive

from ..engine.provenance import compute_device, git_commit, package_versions
from ..errors import BadInputError, MissingDataError
from ..store import fetched_here, jsonable, now
from .device import choose_device
from .network import NETWORKS, NormalisedUNet, UNet, UNetConfig

MODELS = "models"
MODEL_SPEC = Spec("tomolive-model", version="1")
WEIGHTS_FORMAT = "tomolive-weights/1"


class ModelIntegrityError(BadInputError):
    """Stored weights do not match their recorded SHA-256: they are refused, not loaded."""


class TrainingRun(Protocol):
    """What a training run tells the store about itself (e.g. ``noise2inverse.TrainResult``)."""

    def summary(self) -> dict[str, Any]:
        """``{"training": steps, seconds, loss curve..., "hyperparameters": {...}}``."""
        ...


@dataclass(frozen=True)
class StoredModel:
    """A model's id in the store and its metadata (provenance)."""

    id: str
    metadata: dict[str, Any]


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data`` (the model store's hash of serialised weights)."""
    return hashlib.sha256(data).hexdigest()


def model_to_bytes(net: UNet) -> bytes:
    """Serialise a network of the family: format, kind, architecture and tensors."""
    buffer = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    torch.save({"format": WEIGHTS_FORMAT, "kind": net.kind, "arch": net.config.as_dict(), "state_dict": state}, buffer)
    return buffer.getvalue()


def model_from_bytes(data: bytes, device: str | torch.device | None = "cpu", source: str = "weights") -> UNet:
    """Rebuild a network from :func:`model_to_bytes` output, in eval mode on ``device``.

    Raises
    ------
    BadInputError
        ``data`` is not a tomolive weights file (``source`` names it in the message), or
        its tensors do not fit its architecture.
    """
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (RuntimeError, ValueError, EOFError, OSError, pickle.UnpicklingError) as err:
        raise BadInputError(f"{source}: cannot read the weights: not a loadable tomolive weights file ({err})") from err
    if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise BadInputError(f"{source}: expected weights format {WEIGHTS_FORMAT!r}, got {found!r}")
    if payload.get("kind") not in NETWORKS:
        raise BadInputError(f"{source}: expected a network kind in {sorted(NETWORKS)}, got {payload.get('kind')!r}")
    try:
        net = NETWORKS[payload["kind"]](UNetConfig(**payload["arch"]))
        net.load_state_dict(payload["state_dict"])
    except (TypeError, KeyError, RuntimeError) as err:
        raise BadInputError(f"{source}: the weights do not fit their recorded architecture ({err})") from err
    return net.to(choose_device(device)).eval()


def verify_sha256(blob: bytes, expected: Any, source: str) -> bytes:
    """``blob`` when it hashes to ``expected``; ModelIntegrityError (naming ``source``) when not."""
    digest = sha256(blob)
    if digest != expected:
        raise ModelIntegrityError(
            f"{source}: weights hash to sha256 {digest}, which does not match the record's "
            f"{expected!r}; refusing to load modified or corrupt weights"
        )
    return blob


# ---------------------------------------------------------------------------- local files


def write_model_file(net: UNet, path: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write ``net`` as ``path`` (``.pt``) and ``record`` beside it (``.json``, gains ``sha256``)."""
    path = Path(path).with_suffix(".pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = model_to_bytes(net)
    path.write_bytes(blob)
    full = {**record, "kind": net.kind, "architecture": net.config.as_dict(), "sha256": sha256(blob)}
    path.with_suffix(".json").write_text(json.dumps(full, indent=2) + "\n")
    return path


def read_model_file(path: str | os.PathLike, device: str | torch.device | None = "cpu") -> tuple[UNet, dict[str, Any]]:
    """Load ``path`` (``.pt``) after checking it against its ``.json`` record; (network, record).

    Raises
    ------
    MissingDataError
        The weights or their record are absent.
    ModelIntegrityError
        The weights do not hash to the record's ``sha256``.
    BadInputError
        The record or the weights cannot be read.
    """
    path = Path(path)
    record_path = path.with_suffix(".json")
    if not path.is_file() or not record_path.is_file():
        raise MissingDataError(f"model {str(path)!r}: expected weights {str(path)!r} and record {str(record_path)!r}")
    try:
        record = json.loads(record_path.read_text())
        blob = path.read_bytes()
    except (OSError, ValueError) as err:
        raise BadInputError(f"model {str(path)!r}: cannot read the weights or their record ({err})") from err
    net = model_from_bytes(blob, device, source=f"model {str(path)!r}")
    verify_sha256(blob, record.get("sha256"), f"model {str(path)!r}")
    return net, record


# ---------------------------------------------------------------------------- Tiled


def models_root(client: BaseClient) -> BaseClient:
    """The ``models`` container, created on first use."""
    if MODELS not in client:
        client.create_container(MODELS, metadata={"description": "tomolive trained models"})
    return client[MODELS]


def save_model(
    client: BaseClient,
    model: UNet,
    *,
    sample_class: str,
    training: TrainingRun | None = None,
    scan_uids: Iterable[str] = (),
    parent: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> str:
    """Store ``model`` under ``models/<id>`` with its provenance; return the id.

    Parameters
    ----------
    client : tiled client
        The server root (``tomolive.store.connect``).
    model : UNet
        Trained weights (any network of :mod:`tomolive.ml.network`).
    sample_class : str
        What the model is for (e.g. ``"foam"``, ``"sandstone"``); :func:`find_models` key.
    training : TrainingRun, optional
        The run that made it (steps, seconds, loss curve, hyper-parameters).
    scan_uids : iterable of str
        Raw run uids it was trained on.
    parent : str, optional
        The id of the model it was fine-tuned from.
    metadata : dict, optional
        Extra searchable keys (the provenance keys win on a clash).

    Returns
    -------
    str
        ``<model.id_prefix>-<first 16 hex digits of the weights' SHA-256>``; saving the
        same weights again returns the existing id.
    """
    if not isinstance(sample_class, str) or not sample_class:
        raise BadInputError(f"sample_class: expected a non-empty string, got {sample_class!r}")
    blob = model_to_bytes(model)
    digest = sha256(blob)
    model_id = f"{model.id_prefix}-{digest[:16]}"
    root = models_root(client)
    if model_id in root:
        return model_id
    run = training.summary() if training is not None else {"training": None, "hyperparameters": None}
    record = {
        "model_id": model_id,
        "kind": model.kind,
        "format": WEIGHTS_FORMAT,
        "sample_class": sample_class,
        "sha256": digest,
        "size_bytes": len(blob),
        "architecture": model.config.as_dict(),
        **_normalisation(model),
        **run,
        "scan_uids": list(scan_uids),
        "parent_model": parent,
        "torch_version": torch.__version__,
        "tomolive_version": tomolive.__version__,
        "git_commit": git_commit(),
        "packages": package_versions(),
        "device": compute_device(),
        "created": now(),
    }
    root.write_array(
        np.frombuffer(blob, dtype=np.uint8),
        key=model_id,
        dims=["byte"],
        metadata=jsonable({**(metadata or {}), **record}),
        specs=[MODEL_SPEC],
    )
    return model_id


def _normalisation(model: UNet) -> dict[str, Any]:
    if isinstance(model, NormalisedUNet):
        return {"normalisation": {"offset": float(model.offset), "scale": float(model.scale)}}
    return {}


def find_models(client: BaseClient, sample_class: str | None = None, **equal: Any) -> list[StoredModel]:
    """Stored models whose metadata match, newest first.

    ``sample_class="foam"`` and any other top-level key (``kind=...``, ``model_id=...``)
    become ``Key(name) == value`` Tiled queries.
    """
    if sample_class is not None:
        equal["sample_class"] = sample_class
    results = models_root(client)
    for key, value in equal.items():
        results = results.search(Key(key) == value)
    found = [StoredModel(key, dict(node.metadata)) for key, node in results.items()]
    return sorted(found, key=lambda m: m.metadata.get("created") or "", reverse=True)


def model_record(client: BaseClient, model_id: str) -> StoredModel:
    """The stored model ``model_id`` (id and metadata), without loading the weights."""
    root = models_root(client)
    if model_id not in root:
        raise MissingDataError(f"model_id: no model {model_id!r} under {MODELS}/ in this Tiled server")
    return StoredModel(model_id, dict(root[model_id].metadata))


def load_model(client: BaseClient, model_id: str, device: str | torch.device | None = "cpu") -> UNet:
    """Load ``models/<model_id>`` after checking its SHA-256; tensors only, no pickled code.

    Raises
    ------
    MissingDataError
        No such model.
    ModelIntegrityError
        The stored bytes do not hash to the recorded ``sha256``.
    """
    record = model_record(client, model_id)
    with fetched_here():
        blob = np.asarray(models_root(client)[model_id].read(), dtype=np.uint8).tobytes()
    verify_sha256(blob, record.metadata.get("sha256"), f"model_id {model_id!r}")
    return model_from_bytes(blob, device, source=f"model_id {model_id!r}")
