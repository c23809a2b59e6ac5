"""The provenance record attached to every result: what ran, where, with which parameters."""

from __future__ import annotations

import json
import platform
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import tomolive

PACKAGES = ("numpy", "scipy", "torch", "dask", "distributed", "zarr", "tiled", "bluesky", "event-model", "finufft")


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages results depend on (None if absent)."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    """The git commit of the tomolive source tree, or None for an installed wheel."""
    source = Path(tomolive.__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def compute_device() -> str:
    """``cuda:<name>`` when torch sees a GPU, else ``cpu``."""
    try:
        import torch
    except ImportError:
        return "cpu"
    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return "cpu"


@dataclass
class Provenance:
    """Accumulates the record of one processing run; :meth:`as_dict` is what Tiled stores."""

    parameters: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage: ``with prov.stage("recon"): ...``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds[name] = round(time.perf_counter() - start, 4)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tomolive_version": tomolive.__version__,
            "git_commit": git_commit(),
            "packages": package_versions(),
            "python": platform.python_version(),
            "host": socket.gethostname(),
            "platform": platform.platform(),
            "device": compute_device(),
            "started": _iso(self.started),
            "finished": _iso(time.time()),
            "parameters": self.parameters,
            "inputs": self.inputs,
            "seconds_per_stage": self.stage_seconds,
            **self.results,
        }


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(timestamp))


def changed_parameters(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The parameters that differ between two provenance records, by dotted name: ``{name: {"before", "now"}}``."""
    flat_before, flat_after = _flatten(_as_json(before)), _flatten(_as_json(after))
    return {
        name: {"before": flat_before.get(name), "now": flat_after.get(name)}
        for name in sorted(set(flat_before) | set(flat_after))
        if flat_before.get(name) != flat_after.get(name)
    }


def _as_json(tree: Any) -> Any:
    """``tree`` as stored (tuples become lists), so a parameter compares equal to its stored self."""
    return json.loads(json.dumps(tree, default=str))


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat
