"""The ``"auto"`` decision: registration and Vo's method, then an image-quality check.

Registration runs first (when a partner within ``max_residual`` of 180 degrees exists);
when its correlation is >= 0.5 it narrows Vo's search to +/- max(n_cols/32, 8) px around
it (widened again if Vo's minimum lands on that edge). Vo then stops at its unit-step
estimate, parabola-refined (``refined`` false in its details), on the middle one of its
rows only, unless that lies within 0.5 px of the agreement limit or beyond: then Vo runs
again, refined, on all of its rows.

When registration correlates at >= 0.9 and the two agree to ``agree_px`` (default 2), the
registration result is returned: on real scans it is then the most accurate (tooth.h5,
the sarepy neutron sinogram). Otherwise -- no partner within reach, a partner that had to
be extrapolated across a wide sample (features far from the axis move a few pixels per
step, and the correlation drops), or disagreement -- the image-quality check
(:mod:`.quality`) scans trial reconstructions of one row pair from 2 px below the lower
candidate to 2 px above the higher one and returns the entropy minimum (``method``
``"quality"``), with confidence ``sharpness * (0.5 + 0.5 * agreement)``: agreement is the
fraction of the candidates within ``agree_px`` of it. Every result goes in ``details``.
Numbers behind these choices: docs/measurements/kernels.md.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from ...errors import BadInputError
from .common import CenterResult, check_center_inputs
from .quality import QualityScan, quality_scan
from .registration import find_center_registration
from .vo import find_center_vo, pick_rows

__all__ = ["CENTER_METHODS", "find_center"]

CENTER_METHODS = ("auto", "registration", "vo")
_SEED_CONFIDENCE = 0.5  # registration NCC above which it narrows Vo's search in "auto"
_UNREFINED_PX = 0.5  # error allowed for Vo's unit-step estimate when it only cross-checks
_TRUSTED = 0.9  # registration NCC from which an agreeing registration skips the image check
_QUALITY_REACH = 2.0  # px the image check searches beyond the outermost candidate
_QUALITY_STEP = 0.5  # px between trial centres
_QUALITY_TRIALS = 25  # most trial centres in one scan (the step widens beyond)


def find_center(
    projections: np.ndarray,
    angles: np.ndarray,
    method: Literal["auto", "registration", "vo"] = "auto",
    *,
    search_range: tuple[float, float] | None = None,
    rows: int | list[int] | None = None,
    agree_px: float = 2.0,
    **options: Any,
) -> CenterResult:
    """Find the rotation centre of a parallel-beam scan, sub-pixel.

    Parameters
    ----------
    projections : ndarray
        Line integrals (normalised, ``-log``): a sinogram (n_angles, n_cols) or
        projections (n_angles, n_rows, n_cols). float32 is used internally.
    angles : ndarray
        (n_angles,) rotation angles in radians, covering at least 180 degrees.
    method : {"auto", "registration", "vo"}
        See :mod:`tomolive.preprocess.center`. ``"auto"`` (default) runs both, cross-checks
        them and, unless registration is confident and agrees, decides by image quality.
    search_range : (float, float), optional
        Column range for Vo's coarse search; default the middle +/- n_cols / 8 (in
        ``"auto"``: around the registration result when that is confident).
    rows : int or list of int, optional
        Detector rows for Vo's method; default those of :func:`find_center_vo`, of which
        ``"auto"``'s cross-check of a usable registration takes only the middle one.
    agree_px : float
        In ``"auto"``: largest difference between two methods counted as agreement
        (default 2.0); see :mod:`tomolive.preprocess.center.auto`.
    **options
        Passed to :func:`find_center_registration` (``max_residual``, ``n_pairs``) or
        :func:`find_center_vo` (``step``, ``radius``, ``ratio``).

    Returns
    -------
    CenterResult
        The centre in the package's convention (pixel ``j``'s centre is ``j``;
        ``u = center + x cos(theta) + y sin(theta)``). ``method`` says which method's
        number it is: ``"registration"``, ``"vo"`` or (``"auto"`` only) ``"quality"``.

    Raises
    ------
    BadInputError
        Bad input or options, or a method that cannot run on these angles.

    Examples
    --------
    >>> import numpy as np
    >>> theta = np.linspace(0, np.pi, 180, endpoint=False)
    >>> u = np.arange(128.0)
    >>> blobs = [(20.0, 5.0, 1.0), (-10.0, 30.0, 0.5)]  # (x, y, weight)
    >>> sino = sum(a * np.exp(-0.5 * ((u - 60.6 - x * np.cos(theta)[:, None]
    ...            - y * np.sin(theta)[:, None]) / 2.5) ** 2) for x, y, a in blobs)
    >>> result = find_center(sino, theta)
    >>> abs(result.center - 60.6) < 0.2, result.method
    (True, 'registration')
    """
    if method not in CENTER_METHODS:
        raise BadInputError(f"method must be one of {CENTER_METHODS!r}; got {method!r}.")
    reg_keys = {"max_residual", "n_pairs"}
    vo_keys = {"step", "radius", "ratio"}
    unknown = sorted(set(options) - reg_keys - vo_keys)
    if unknown:
        raise BadInputError(f"unknown option(s) {unknown!r}; allowed: {sorted(reg_keys | vo_keys)!r}.")
    reg_opts = {k: v for k, v in options.items() if k in reg_keys}
    vo_opts = {k: v for k, v in options.items() if k in vo_keys}
    if method == "registration":
        return find_center_registration(projections, angles, **reg_opts)
    if method == "vo":
        return find_center_vo(projections, angles, search_range=search_range, rows=rows, **vo_opts)

    data, theta = check_center_inputs(projections, angles)
    return _cross_checked(data, theta, search_range, rows, agree_px, reg_opts, vo_opts)


def _cross_checked(
    data: np.ndarray,
    theta: np.ndarray,
    search_range: tuple[float, float] | None,
    rows: int | list[int] | None,
    agree_px: float,
    reg_opts: dict[str, Any],
    vo_opts: dict[str, Any],
) -> CenterResult:
    """``"auto"`` on checked inputs: registration seeds Vo's search, Vo cross-checks it."""
    n_cols = data.shape[2]
    reg: CenterResult | None = None
    reg_error = None
    try:
        reg = find_center_registration(data, theta, **reg_opts)
    except BadInputError as err:
        reg_error = str(err)
    usable = reg if reg is not None and reg.confidence >= _SEED_CONFIDENCE else None
    seeded = search_range is None and usable is not None
    vo_range = search_range
    if usable is not None and seeded:
        half = max(n_cols / 32.0, 8.0)
        vo_range = (max(usable.center - half, 0.0), min(usable.center + half, n_cols - 1.0))
    # Vo only cross-checks a usable registration: its unit-step estimate on one row (the
    # middle of its default rows) is enough unless it comes near the agreement limit, where
    # Vo's own centre -- refined, on every row -- may be the one returned.
    check_rows = rows
    if usable is not None and rows is None:
        defaults = pick_rows(data.shape[1], None)
        check_rows = [defaults[len(defaults) // 2]]
    vo = find_center_vo(data, theta, search_range=vo_range, rows=check_rows, refine=usable is None, **vo_opts)
    if seeded and vo.details["at_edge"]:  # registration misled the search: search widely
        seeded = False
        vo_range = search_range
        vo = find_center_vo(data, theta, search_range=vo_range, rows=check_rows, refine=False, **vo_opts)
    if usable is not None and abs(vo.center - usable.center) > agree_px - _UNREFINED_PX:
        vo = find_center_vo(data, theta, search_range=vo_range, rows=rows, **vo_opts)
    details: dict[str, Any] = {
        "vo": vo.as_dict(),
        "registration": None if reg is None else reg.as_dict(),
        "registration_error": reg_error,
        "seeded_by_registration": seeded,
        "quality": None,
    }
    if usable is not None:
        details["difference_px"] = vo.center - usable.center
        details["agree"] = bool(abs(vo.center - usable.center) <= agree_px)
        if details["agree"] and usable.confidence >= _TRUSTED:
            return CenterResult(usable.center, "registration", usable.confidence, details)
    others = [c.center for c in (vo, usable) if c is not None]
    quality = _quality_check(data, theta, rows, others)
    if quality is not None:
        details["quality"] = quality.as_dict()
        agreeing = sum(abs(c - quality.center) <= agree_px for c in others) / len(others)
        details["quality_agreement"] = agreeing
        confidence = quality.sharpness * (0.5 + 0.5 * agreeing)
        return CenterResult(quality.center, "quality", float(confidence), details)
    if usable is None:
        return CenterResult(vo.center, "vo", vo.confidence, details)
    if details["agree"]:
        return CenterResult(usable.center, "registration", usable.confidence, details)
    return CenterResult(vo.center, "vo", 0.5 * vo.confidence, details)


def _quality_check(
    data: np.ndarray, theta: np.ndarray, rows: int | list[int] | None, candidates: list[float]
) -> QualityScan | None:
    """Entropy scan over the candidates +/- 2 px at 0.5 px steps (once more over +/- 4 px
    about the minimum if it lands on an edge); None when the angles cannot be reconstructed."""
    n_cols = data.shape[2]
    picked = pick_rows(data.shape[1], rows)
    use = sorted({picked[len(picked) // 2], picked[0]})  # one gridrec pair
    lo, hi = min(candidates) - _QUALITY_REACH, max(candidates) + _QUALITY_REACH
    try:
        for _ in range(2):
            step = max(_QUALITY_STEP, (hi - lo) / (_QUALITY_TRIALS - 1))
            grid = np.arange(lo, hi + 0.5 * step, step)
            grid = grid[(grid >= 0) & (grid <= n_cols - 1)]
            if grid.size < 3:
                return None
            scan = quality_scan(data, theta, grid, use)
            if not scan.at_edge:
                break
            lo, hi = scan.center - 2.0 * _QUALITY_REACH, scan.center + 2.0 * _QUALITY_REACH
    except BadInputError:  # e.g. an angular gap that reconstruct refuses
        return None
    return scan
