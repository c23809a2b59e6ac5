"""Automatic, sub-pixel rotation-centre finding for parallel-beam scans.

Convention (shared with :mod:`tomolive.recon`)
-----------------------------------------------
Detector column ``j`` has its centre at coordinate ``j`` (so a 1024-wide detector spans
-0.5 .. 1023.5 and its middle is 511.5). The *centre* is the column coordinate of the
rotation axis. An object point at ``(x, y)`` (pixels, relative to the axis, in the frame
that rotates with the sample) is seen at angle ``theta`` (radians) at column

    u = center + x * cos(theta) + y * sin(theta).

Hence ``p(theta + pi, u) = p(theta, 2 * center - u)``: the projection half a turn later is
the mirror image about the centre. Both methods use that symmetry, one module each:

- ``"registration"`` (:mod:`.registration`) -- register a projection with its mirrored
  180-degree partner. Fast; uses every detector row.
- ``"vo"`` (:mod:`.vo`) -- Vo et al.'s (2014) Fourier-domain metric of the stitched
  360-degree sinogram; per row, the median over rows.
- ``"auto"`` (:mod:`.auto`) -- both: registration seeds and is cross-checked by Vo; unless
  registration is confident and agrees, the entropy of trial reconstructions decides
  (:mod:`.quality`: needs no 180-degree partner, copes with samples wider than the field
  of view).

All functions take line integrals (flat/dark-normalised, ``-log``), either one sinogram
``(n_angles, n_cols)`` or projections ``(n_angles, n_rows, n_cols)``, with ``angles`` in
radians, one per projection, in any order. Accuracy on phantoms and real scans:
docs/measurements/kernels.md.
"""

from .auto import CENTER_METHODS, find_center
from .common import CenterResult
from .registration import find_center_registration
from .vo import find_center_vo

__all__ = [
    "CENTER_METHODS",
    "CenterResult",
    "find_center",
    "find_center_registration",
    "find_center_vo",
]
