"""The parameters of Bragg-peak processing, all recorded in provenance."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ...errors import BadInputError


@dataclass(frozen=True)
class BraggParams:
    """Every knob of peak finding, localisation and the audit.

    Parameters
    ----------
    threshold : float
        Counts above a frame's median a pixel needs to belong to a peak; a start document's
        ``bragg.threshold`` (``bragg_scan(threshold=...)``) overrides it for its run.
    min_pixels : int
        Smallest peak (8-connected pixels above the threshold); ``bragg.min_pixels`` overrides it.
    patch_size : int
        Side of the patch around each peak; the model's input size (11 for BraggNN).
    saturation : float or None
        Counts at or above which a pixel is saturated; None: the maximum of an integer
        frame's dtype (no check for float frames).
    batch_size : int
        Patches per forward pass of the model.
    audit_fraction : float
        Fraction of localised peaks also fitted with the pseudo-Voigt labeller on Dask after
        the scan (rows with ``method="pseudo-voigt"`` in the table; their disagreement with the
        model is in the container's ``audit``); 0 for none.
    audit_max : int
        At most this many peaks audited per scan.
    fit_chunk : int
        Patches per Dask task of the audit.
    """

    threshold: float = 30.0
    min_pixels: int = 4
    patch_size: int = 11
    saturation: float | None = None
    batch_size: int = 4096
    audit_fraction: float = 0.05
    audit_max: int = 2000
    fit_chunk: int = 128

    def __post_init__(self) -> None:
        if not (np.isfinite(self.threshold) and self.threshold > 0):
            raise BadInputError(f"threshold must be a positive number of counts; got {self.threshold!r}.")
        if self.min_pixels < 1 or self.batch_size < 1 or self.fit_chunk < 1 or self.audit_max < 0:
            raise BadInputError(
                "min_pixels, batch_size and fit_chunk must be >= 1 and audit_max >= 0; got "
                f"{self.min_pixels!r}, {self.batch_size!r}, {self.fit_chunk!r}, {self.audit_max!r}."
            )
        if self.patch_size < 3 or self.patch_size % 2 == 0:
            raise BadInputError(f"patch_size must be odd and >= 3; got {self.patch_size!r}.")
        if not 0.0 <= self.audit_fraction <= 1.0:
            raise BadInputError(f"audit_fraction must lie in [0, 1]; got {self.audit_fraction!r}.")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
