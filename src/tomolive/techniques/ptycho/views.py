"""One ptychographic view: the diffraction patterns and probe positions measured at one rotation angle.

A plain scan is one view at angle 0; a rotation series (``ptycho_tomo_scan``) is one view per
angle. The acquisition hands its views to the stages (``PtychoAcquisition.views()``), and the
3D step reads the per-view objects the reconstruction stage leaves behind.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class View(NamedTuple):
    """Patterns and positions of one view.

    Attributes
    ----------
    angle_deg : float
        Rotation angle of the sample for this view, degrees (0 for a plain 2D scan).
    patterns : ndarray, shape (N, n, n), float32
        Far-field intensities, DC at the centre (fftshifted), one per position.
    positions : ndarray, shape (N, 2), float64
        Probe centres in object pixels, (row, col), as read back from the stages.
    """

    angle_deg: float
    patterns: np.ndarray
    positions: np.ndarray
