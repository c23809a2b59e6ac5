"""Physics sanity of a tomography scan's frames: the checks that keep a wrong scan from looking complete.

The rules (docs/faults.md): a flat or projection frame that is all zero, or whose pixels
are mostly at the detector's maximum, is refused; flats must be brighter than darks at
almost every pixel; a projection must not be much brighter than the flats. Each failure
names the stream and the frame. The checks read a strided sample of each frame, so they
cost little per frame at any size.
"""

from __future__ import annotations

import numpy as np

from ...errors import BadInputError

MAX_SATURATED_FRACTION = 0.25
"""A frame with more of its pixels at the dtype's maximum than this is saturated."""
MAX_DARK_FLAT_FRACTION = 0.05
"""Flats may be no brighter than darks at this fraction of pixels at most (dead pixels, masks)."""
MAX_TRANSMISSION = 1.5
"""A projection whose median transmission (flat-corrected) exceeds this is brighter than the flats."""
SAMPLE_STEP = 4
"""Every 4th row and column are read by the per-frame checks."""

STREAMS = {"dark": "dark", "flat": "flat", "projection": "primary"}


def check_frame_values(role: str, index: int, frame: np.ndarray) -> None:
    """Refuse an all-zero flat or projection, and a saturated frame of any role."""
    where = f"{role} frame {index} (stream {STREAMS.get(role, role)!r})"
    if role != "dark" and not np.any(frame):
        raise BadInputError(f"{where} is all zero; expected detector counts. Check the detector and the shutter.")
    if np.issubdtype(frame.dtype, np.integer):
        sample = frame[::SAMPLE_STEP, ::SAMPLE_STEP]
        saturated = np.count_nonzero(sample == np.iinfo(frame.dtype).max) / sample.size
        if saturated > MAX_SATURATED_FRACTION:
            raise BadInputError(
                f"{where} is saturated: {saturated:.0%} of its pixels are at the detector's maximum "
                f"{np.iinfo(frame.dtype).max}; reduce the exposure time or the beam intensity."
            )


def check_flats_over_darks(flat: np.ndarray, dark: np.ndarray) -> None:
    """Refuse flats that are not brighter than the darks (flats taken with the beam off, or swapped)."""
    not_brighter = np.count_nonzero(flat <= dark) / flat.size
    if not_brighter > MAX_DARK_FLAT_FRACTION:
        raise BadInputError(
            f"the flats (stream 'flat') are not brighter than the darks (stream 'dark') at {not_brighter:.0%} of "
            f"pixels (median flat {float(np.median(flat)):.4g}, median dark {float(np.median(dark)):.4g}); "
            "expected open-beam flats well above the darks: check that the shutter opened and the sample "
            "was out of the beam for the flats."
        )


def check_transmission(index: int, line_integrals: np.ndarray) -> None:
    """Refuse a projection much brighter than the flats (median transmission above :data:`MAX_TRANSMISSION`)."""
    sample = line_integrals[::SAMPLE_STEP, ::SAMPLE_STEP]
    transmission = float(np.exp(-np.median(sample)))
    if transmission > MAX_TRANSMISSION:
        raise BadInputError(
            f"projection frame {index} (stream 'primary') is brighter than the flats: its median transmission "
            f"is {transmission:.2f} (at most {MAX_TRANSMISSION} expected). The flats were taken with less beam "
            "than the projections (a lower current, a filter), or the streams are mislabelled."
        )
