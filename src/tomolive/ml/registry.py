"""Versioned models of one architecture in Tiled ``models/<name>/v<n>``, with lineage and rollback.

The model store (:mod:`tomolive.ml.model_store`) keeps U-Nets by content hash; the registry
keeps any torch module as a numbered series, for the retraining loop: each version records
its parent version, the data it was trained on (scan uids, label counts), its validation
metrics, hyper-parameters and the SHA-256 of its weights, and the series records which
version is deployed and every deployment (publish or rollback) in order.

Layout: ``models/<name>`` is a container (spec ``tomolive-model-series``) whose metadata holds
the architecture (keyword arguments of ``build``), ``deployed`` and ``deployments``; each
version is a 1D uint8 array ``v<n>`` of the serialised state dict, its record as metadata.
Loading checks the hash (the model store's check) and reads tensors only
(``torch.load(weights_only=True)``).

Keys: publishing, deploying and rolling back write, so they need a writer key; the edge
needs only a read-only key to ``load`` and ask what is ``deployed``. A write refused by the
server raises :class:`RegistryPermissionError`.

Examples
--------
::

    registry = ModelRegistry(client, "braggnn", build=BraggNN, arch={"imgsz": 11})
    v = registry.publish(model, parent=None, scan_uids=[uid], labels={"fit": 2048},
                         metrics={"val_px": 0.12}, hyperparameters={"lr": 1e-3})
    model = registry.load(registry.deployed())
    registry.rollback(to=1, slot=slot)
"""

from __future__ import annotations

import io
import pickle
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np
import torch
from tiled.client.base import BaseClient
from tiled.structures.core import Spec
from torch import nn

import tomolive

from ..engine.provenance import git_commit
from ..errors import BadInputError, MissingDataError, TomoliveError
from ..store import fetched_here, jsonable, now
from .deploy import ModelSlot
from .model_store import MODELS, sha256, verify_sha256

SERIES_SPEC = Spec("tomolive-model-series", version="1")
VERSION_SPEC = Spec("tomolive-model-version", version="1")
STATE_FORMAT = "tomolive-state-dict/1"
_DEPLOY_LOCK = threading.Lock()
"""Held while a series' deployment record is read and rewritten (Tiled has no compare-and-set):
two loops of one process deploying at once each keep their entry. Processes apart are not covered."""


class RegistryPermissionError(TomoliveError, PermissionError):
    """The server refused a registry write: the key is read-only (or unknown)."""


def state_to_bytes(model: nn.Module) -> bytes:
    """The model's tensors (CPU) in the registry's serialised form."""
    buffer = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"format": STATE_FORMAT, "state_dict": state}, buffer)
    return buffer.getvalue()


def state_from_bytes(data: bytes, source: str) -> dict[str, torch.Tensor]:
    """The state dict in ``data``; tensors only, no pickled code runs."""
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (RuntimeError, ValueError, EOFError, OSError, pickle.UnpicklingError) as err:
        raise BadInputError(f"{source}: cannot read the weights ({err})") from err
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise BadInputError(f"{source}: expected weights format {STATE_FORMAT!r}, got {found!r}")
    return payload["state_dict"]


class ModelRegistry:
    """A numbered series of models of one architecture in Tiled ``models/<name>``.

    Parameters
    ----------
    client : tiled client
        The server root; a writer key to publish, deploy or roll back, a read-only key to load.
    name : str
        The series (e.g. ``"braggnn"``); a key under ``models/``.
    build : callable
        ``build(**arch)`` makes an untrained module of the architecture.
    arch : dict
        Keyword arguments of ``build``, recorded in the series.
    """

    def __init__(
        self, client: BaseClient, name: str, build: Callable[..., nn.Module], arch: dict[str, Any] | None = None
    ) -> None:
        if not isinstance(name, str) or not name.isidentifier():
            raise BadInputError(f"registry name: expected an identifier such as 'braggnn', got {name!r}")
        self.client, self.name, self.build, self.arch = client, name, build, dict(arch or {})

    # ------------------------------------------------------------------ reading (any key)

    def _series(self, create: bool = False) -> BaseClient:
        with self._writing(f"create {MODELS}/{self.name}"):
            if MODELS not in self.client:
                if not create:
                    raise MissingDataError(f"registry {self.name!r}: no {MODELS}/ container on this Tiled server")
                self.client.create_container(MODELS, metadata={"description": "tomolive trained models"})
            root = self.client[MODELS]
            if self.name not in root:
                if not create:
                    raise MissingDataError(f"registry {self.name!r}: nothing published under {MODELS}/{self.name}")
                builder = f"{self.build.__module__}:{self.build.__qualname__}"
                meta = {"registry": self.name, "build": builder, "architecture": self.arch, "deployed": None}
                root.create_container(self.name, metadata=jsonable({**meta, "deployments": []}), specs=[SERIES_SPEC])
            return root[self.name]

    @contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """Turn the server's refusal of a write into a RegistryPermissionError naming ``what``."""
        try:
            yield
        except httpx.HTTPStatusError as err:
            if err.response.status_code not in (401, 403):
                raise
            raise RegistryPermissionError(
                f"registry {self.name!r}: the server refused to {what} ({err.response.status_code}); publishing, "
                "deploying and rolling back need a writer key (docs/security.md), a read-only key can only load"
            ) from err

    def versions(self) -> list[int]:
        """Published version numbers, ascending (empty when nothing is published)."""
        try:
            series = self._series()
        except MissingDataError:
            return []
        return sorted(int(key[1:]) for key in series if key.startswith("v") and key[1:].isdigit())

    def deployed(self) -> int | None:
        """The deployed version (None when nothing is deployed)."""
        try:
            return self._series().metadata.get("deployed")
        except MissingDataError:
            return None

    def deployments(self) -> list[dict[str, Any]]:
        """Every deployment in order: ``{"version", "at", "why"}``."""
        try:
            return list(self._series().metadata.get("deployments") or [])
        except MissingDataError:
            return []

    def record(self, version: int) -> dict[str, Any]:
        """Version ``version``'s record (lineage, metrics, hash) without loading the weights."""
        return dict(self._node(version).metadata)

    def _node(self, version: int) -> BaseClient:
        series = self._series()
        if f"v{version}" not in series:
            raise MissingDataError(
                f"registry {self.name!r}: no version {version!r}; published versions are {self.versions()}"
            )
        return series[f"v{version}"]

    def load(self, version: int | None = None) -> nn.Module:
        """Version ``version`` (default: the deployed one) in eval mode on the CPU, after its SHA-256 check.

        Raises
        ------
        MissingDataError
            No such version (or nothing deployed).
        ModelIntegrityError
            The stored bytes do not hash to the version's recorded ``sha256``.
        """
        if version is None:
            version = self.deployed()
            if version is None:
                raise MissingDataError(f"registry {self.name!r}: no version is deployed yet")
        node = self._node(version)
        with fetched_here():
            blob = np.asarray(node.read(), dtype=np.uint8).tobytes()
        source = f"registry {self.name!r} version {version}"
        verify_sha256(blob, node.metadata.get("sha256"), source)
        model = self.build(**self._series().metadata.get("architecture", self.arch))
        try:
            model.load_state_dict(state_from_bytes(blob, source))
        except RuntimeError as err:
            raise BadInputError(f"{source}: the weights do not fit the series' architecture ({err})") from err
        return model.eval()

    # ------------------------------------------------------------------ writing (writer key)

    def publish(
        self,
        model: nn.Module,
        *,
        parent: int | None,
        metrics: dict[str, Any],
        scan_uids: Iterable[str] = (),
        labels: dict[str, int] | None = None,
        hyperparameters: dict[str, Any] | None = None,
        deploy: bool = True,
    ) -> int:
        """Store ``model`` as the next version (and deploy it unless ``deploy=False``); its number.

        ``parent`` is the version it was fine-tuned from (None: from scratch); ``labels`` counts
        the labelled samples it saw by kind (e.g. ``{"train": 1800, "held_out": 200}``).
        """
        if parent is not None and parent not in self.versions():
            raise BadInputError(f"parent: expected a published version of {self.name!r}, got {parent!r}")
        blob = state_to_bytes(model)
        series = self._series(create=True)
        version = max(self.versions(), default=0) + 1
        record = {
            "registry": self.name,
            "version": version,
            "parent_version": parent,
            "format": STATE_FORMAT,
            "sha256": sha256(blob),
            "size_bytes": len(blob),
            "architecture": series.metadata.get("architecture", self.arch),
            "scan_uids": list(scan_uids),
            "labels": dict(labels or {}),
            "metrics": dict(metrics),
            "hyperparameters": dict(hyperparameters or {}),
            "torch_version": torch.__version__,
            "tomolive_version": tomolive.__version__,
            "git_commit": git_commit(),
            "created": now(),
        }
        array = np.frombuffer(blob, dtype=np.uint8)
        with self._writing(f"publish version {version}"):
            series.write_array(array, key=f"v{version}", dims=["byte"], metadata=jsonable(record), specs=[VERSION_SPEC])
        if deploy:
            self._set_deployed(version, f"published from parent {parent}")
        return version

    def _set_deployed(self, version: int, why: str) -> None:
        with _DEPLOY_LOCK:  # read-modify-write of the history: two threads' deployments must both be kept
            series = self._series()
            history = [*(series.metadata.get("deployments") or []), {"version": version, "at": now(), "why": why}]
            with self._writing(f"deploy version {version}"):
                series.update_metadata(metadata={"deployed": version, "deployments": history})

    def rollback(self, to: int, slot: ModelSlot[Any] | None = None, why: str = "rollback") -> nn.Module:
        """Deploy the earlier version ``to`` again (after its hash check); swap it into ``slot`` if given."""
        model = self.load(to)
        self._set_deployed(to, why)
        if slot is not None:
            slot.swap(model, to)
        return model
