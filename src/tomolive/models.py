"""The model store: trained denoisers under ``models/<id>`` in Tiled, with their provenance.

Each model is one node: its serialised weights as a 1D uint8 array, and metadata saying
what it is and where it came from (sample class, training scan uids, steps, loss curve,
hyper-parameters, torch version, SHA-256 of the weights). The id is derived from the
hash, so storing the same weights twice stores them once. Loading verifies the hash and
reads tensors only (``torch.load(..., weights_only=True)``): no pickled code runs.

Examples
--------
Given a Tiled ``client`` and a :class:`tomolive.denoise.TrainResult` ``result``::

    model_id = save_model(client, result.model, sample_class="foam", training=result,
                          scan_uids=[uid])
    [newest, *_] = find_models(client, sample_class="foam")
    model = load_model(client, newest.id)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tiled.client.base import BaseClient
from tiled.queries import Key
from tiled.structures.core import Spec

import tomolive

from .denoise import WEIGHTS_FORMAT, TrainResult, UNet25D, model_from_bytes, model_to_bytes
from .engine.provenance import compute_device, git_commit, package_versions
from .errors import BadInputError, MissingDataError, TomoliveError
from .store import fetched_here, jsonable, now

MODELS = "models"
MODEL_KIND = "noise2inverse-unet2.5d"
MODEL_SPEC = Spec("tomolive-model", version="1")


class ModelIntegrityError(TomoliveError, ValueError):
    """Stored weights do not match their recorded SHA-256: they are refused, not loaded."""


@dataclass(frozen=True)
class StoredModel:
    """A model's id in the store and its metadata (provenance)."""

    id: str
    metadata: dict[str, Any]


def models_root(client: BaseClient) -> BaseClient:
    """The ``models`` container, created on first use."""
    if MODELS not in client:
        client.create_container(MODELS, metadata={"description": "tomolive trained models"})
    return client[MODELS]


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def save_model(
    client: BaseClient,
    model: UNet25D,
    *,
    sample_class: str,
    training: TrainResult | None = None,
    scan_uids: Iterable[str] = (),
    parent: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> str:
    """Store ``model`` under ``models/<id>`` with its provenance; return the id.

    Parameters
    ----------
    client : tiled client
        The server root (``tomolive.store.connect``).
    model : UNet25D
        Trained weights.
    sample_class : str
        What the model is for (e.g. ``"foam"``, ``"sandstone"``); :func:`find_models` key.
    training : TrainResult, optional
        Steps, seconds, loss curve and hyper-parameters of the run that made it.
    scan_uids : iterable of str
        Raw run uids it was trained on.
    parent : str, optional
        The id of the model it was fine-tuned from.
    metadata : dict, optional
        Extra searchable keys (the provenance keys win on a clash).

    Returns
    -------
    str
        ``n2i-<first 16 hex digits of the weights' SHA-256>``; saving the same weights
        again returns the existing id.
    """
    if not isinstance(sample_class, str) or not sample_class:
        raise BadInputError(f"sample_class: expected a non-empty string, got {sample_class!r}")
    blob = model_to_bytes(model)
    digest = sha256(blob)
    model_id = f"n2i-{digest[:16]}"
    root = models_root(client)
    if model_id in root:
        return model_id
    record = _record(model, model_id, digest, len(blob), sample_class, training, list(scan_uids), parent)
    root.write_array(
        np.frombuffer(blob, dtype=np.uint8),
        key=model_id,
        dims=["byte"],
        metadata=jsonable({**(metadata or {}), **record}),
        specs=[MODEL_SPEC],
    )
    return model_id


def _record(model, model_id, digest, size, sample_class, training, scan_uids, parent) -> dict[str, Any]:
    """The provenance metadata of a stored model."""
    run = None
    if training is not None:
        run = {
            "steps": training.steps,
            "seconds": training.seconds,
            "stopped": training.stopped,
            "resumed_from": training.resumed_from,
            "final_loss": training.losses[-1] if training.losses else None,
            "loss_curve": training.loss_curve(),
        }
    return {
        "model_id": model_id,
        "kind": MODEL_KIND,
        "format": WEIGHTS_FORMAT,
        "sample_class": sample_class,
        "sha256": digest,
        "size_bytes": size,
        "architecture": model.arch(),
        "normalisation": {"offset": float(model.offset), "scale": float(model.scale)},
        "hyperparameters": training.config.as_dict() if training is not None else None,
        "training": run,
        "scan_uids": scan_uids,
        "parent_model": parent,
        "torch_version": torch.__version__,
        "tomolive_version": tomolive.__version__,
        "git_commit": git_commit(),
        "packages": package_versions(),
        "device": compute_device(),
        "created": now(),
    }


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


def load_model(client: BaseClient, model_id: str, device: str | torch.device = "cpu") -> UNet25D:
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
    expected = record.metadata.get("sha256")
    digest = sha256(blob)
    if digest != expected:
        raise ModelIntegrityError(
            f"model_id: {model_id!r} weights hash to sha256 {digest}, but its record says "
            f"{expected!r}; refusing to load modified or corrupt weights"
        )
    return model_from_bytes(blob, device)
