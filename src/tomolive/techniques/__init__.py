"""Techniques on the engine: each says which runs it claims, how it reads them and how it processes them.

Registered explicitly here (no import side effects); see :mod:`tomolive.engine.technique`.
"""

from .bragg import BraggTechnique
from .tomo import TomoTechnique

__all__ = ["BraggTechnique", "TomoTechnique"]
