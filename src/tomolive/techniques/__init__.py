"""Techniques on the engine: each says which runs it claims, how it reads them and how it processes them.

Registered explicitly here (no import side effects); see :mod:`tomolive.engine.technique`.
Each is imported when first named, so a Dask worker running one technique's kernel (e.g.
``tomolive.techniques.bragg.fitting``) does not import every other technique (tomography's
imports torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .bragg import BraggTechnique
    from .ptycho.technique import PtychoTechnique
    from .tomo import TomoTechnique

TECHNIQUES = {"BraggTechnique": ".bragg", "PtychoTechnique": ".ptycho.technique", "TomoTechnique": ".tomo"}
"""Each technique's class name and the subpackage that defines it."""

__all__ = ["BraggTechnique", "PtychoTechnique", "TomoTechnique"]


def __getattr__(name: str) -> Any:
    if name in TECHNIQUES:
        return getattr(importlib.import_module(TECHNIQUES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
