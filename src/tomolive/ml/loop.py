"""The data-centre-to-edge retraining loop, for any technique with a surrogate model.

Roles (one protocol each): a :class:`Labeller` makes ground-truth labels the slow,
conventional way (a pseudo-Voigt fit for Bragg peaks, an iterative reconstruction for
ptychography); a :class:`Trainer` fine-tunes a model or trains one from scratch on labelled
samples; a :class:`Validator` scores a model on held-back labelled samples (lower is better).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

Labelled = tuple[np.ndarray, np.ndarray]
"""(samples, labels), stacked along axis 0."""


class Labeller(Protocol):
    """The conventional method: labels for ``samples`` (same length along axis 0)."""

    def label(self, samples: np.ndarray) -> np.ndarray:
        """Labels for ``samples``."""
        ...


class Trainer(Protocol):
    """Trains models of one architecture; both methods return a new model and leave inputs untouched."""

    def fine_tune(self, model: Any, data: Labelled) -> Any:
        """A copy of ``model`` trained further on ``data``."""
        ...

    def from_scratch(self, data: Labelled) -> Any:
        """A new model trained on ``data`` from random weights."""
        ...


class Validator(Protocol):
    """The metric the loop compares models with; lower is better."""

    def score(self, model: Any, held_out: Labelled) -> float:
        """``model``'s error on ``held_out``."""
        ...
