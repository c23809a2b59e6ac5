"""The options every reconstruction backend takes, checked once before any backend runs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BadInputError
from .filters import FILTERS, PADDINGS

__all__ = ["ReconSettings"]


@dataclass(frozen=True)
class ReconSettings:
    """Filter, padding and resources shared by all backends (see :func:`tomolive.recon.reconstruct`).

    Attributes
    ----------
    filter : {"ramp", "shepp-logan", "cosine", "hamming", "hann", "parzen"}
        Window applied to the ramp filter.
    filter_cutoff : float
        Fraction of Nyquist (0, 1] where the filter ends.
    padding : {"edge", "zero"}
        How the detector is padded before filtering.
    ncore : int or None
        CPU threads for the backend; None for the backend's own default.
    device : str or None
        ``"cpu"`` or ``"cuda[:N]"`` for torch backends; None for automatic.

    Raises
    ------
    BadInputError
        Unknown filter or padding, or ``ncore`` not a positive integer.
    """

    filter: str = "ramp"
    filter_cutoff: float = 1.0
    padding: str = "edge"
    ncore: int | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        if self.filter not in FILTERS:
            raise BadInputError(f"filter: expected one of {FILTERS}, got {self.filter!r}")
        if self.padding not in PADDINGS:
            raise BadInputError(f"padding: expected one of {PADDINGS}, got {self.padding!r}")
        if self.ncore is not None and (not isinstance(self.ncore, (int, np.integer)) or self.ncore < 1):
            raise BadInputError(f"ncore: expected a positive integer or None, got {self.ncore!r}")
        object.__setattr__(self, "filter_cutoff", float(self.filter_cutoff))
