"""The parameters of tomography processing: every knob of every tomo stage, all recorded in provenance."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from ...errors import BadInputError
from ...stages import check_stage_names

if TYPE_CHECKING:  # torch is imported only when the denoise stage runs
    from ...ml.noise2inverse import DenoiseConfig


@dataclass(frozen=True)
class PaganinParams:
    """Single-distance phase retrieval (see :func:`tomolive.preprocess.paganin`).

    Lengths in metres, energy in keV; ``delta_beta`` is the sample's delta/beta ratio.
    """

    pixel_size: float
    distance: float
    energy: float
    delta_beta: float = 1000.0


@dataclass(frozen=True)
class PipelineParams:
    """Every knob of the processing stages; all of it goes into provenance.

    Parameters
    ----------
    flat_reduce : {"median", "mean"}
        How dark and flat stacks are combined.
    zinger_threshold : float or None
        Replace raw pixels brighter than ``(1 + threshold)`` times their 3x3 median
        (e.g. 0.3); None (default) skips zinger removal.
    paganin : PaganinParams or None
        Phase retrieval on each projection; None (default) for plain absorption contrast.
    method : str
        Reconstruction backend name (see :func:`tomolive.recon.available_methods`), or ``"auto"``.
    filter : str
        Reconstruction filter (``"ramp"``, ``"shepp-logan"``, ``"hann"``, ``"parzen"``).
    center : float or None
        Rotation-axis column in pixels (pixel j's centre at j); None finds it automatically.
    center_method : {"auto", "registration", "vo"}
        How the centre is found when ``center`` is None (see :func:`tomolive.preprocess.find_center`).
    center_rows : int
        Detector rows around the middle used to find the centre.
    stripe_method : {"mean", "none", "sort", "combined"}
        Ring-artefact (stripe) removal applied to each block before reconstruction (see
        :mod:`tomolive.preprocess.stripes`). ``"mean"`` (default) removes full, narrow stripes
        (flat-field noise, single defective pixels) for ~1-7 % of the reconstruction's time;
        ``"sort"`` and ``"combined"`` also remove partial and wide ones but cost 1.5-8
        reconstructions (docs/measurements/rings.md).
    rows_per_block : int
        Detector rows per Dask task and per Zarr chunk of the results; even, because the
        gridrec backend reconstructs rows in pairs and blocks must pair rows the same way
        whatever the number of workers.
    preview_rows : tuple of int, or None
        Detector rows reconstructed live during the scan; None for the central row and the
        rows a quarter from each end, ``()`` for no preview.
    preview_size : int
        The preview is binned to at most this many pixels across.
    preview_interval_s : float
        The preview is published to Tiled at most this often (default 2 s); each publish costs
        the server CPU (docs/measurements/engine.md).
    segment : {"auto", "unet", "otsu"} or None
        Segment the volume into phases (``segmented``, porosity, phase fractions, pore count;
        see :mod:`tomolive.techniques.tomo.analysis`); None (default) skips it. ``auto`` takes the shipped
        network when its phases match ``n_phases``, else multi-Otsu.
    n_phases : int or None
        Phases in the sample (pore counts as one); None for the network's (3).
    qc_thresholds : dict or None
        Overrides of :class:`tomolive.qc.QCThresholds` (e.g. ``{"max_ring_severity": 0.01}``);
        QC numbers and alerts are computed for every scan.
    denoise : DenoiseConfig or None
        Noise2Inverse denoising after the reconstruction (see :mod:`tomolive.ml.noise2inverse`):
        ``k`` split reconstructions, a model trained on them (``steps``/``time_budget``),
        stored in Tiled's ``models/`` when the result goes to Tiled, and a ``denoised``
        volume beside ``recon``. None (default) skips it.
    extra_stages : tuple of str
        Stages run after the built-in ones, in order, on ``recon`` block by block (see
        :mod:`tomolive.stages`: built-in names and the ``tomolive.stages`` entry points).
    stage_params : dict or None
        Keyword parameters per extra stage, e.g. ``{"median": {"size": 3}}``.
    """

    flat_reduce: Literal["median", "mean"] = "median"
    zinger_threshold: float | None = None
    paganin: PaganinParams | None = None
    method: str = "auto"
    filter: str = "ramp"
    center: float | None = None
    center_method: Literal["auto", "registration", "vo"] = "auto"
    center_rows: int = 8
    stripe_method: Literal["none", "mean", "sort", "combined"] = "mean"
    rows_per_block: int = 16
    segment: str | None = None
    n_phases: int | None = None
    qc_thresholds: dict[str, float] | None = None
    preview_rows: tuple[int, ...] | None = None
    preview_size: int = 512
    preview_interval_s: float = 2.0
    denoise: DenoiseConfig | None = None
    extra_stages: tuple[str, ...] = ()
    stage_params: dict[str, dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if self.rows_per_block < 2 or self.rows_per_block % 2:
            raise BadInputError(f"rows_per_block must be an even number >= 2; got {self.rows_per_block!r}.")
        if self.center is None and self.center_rows < 1:
            raise BadInputError(f"center_rows must be >= 1 to find the centre; got {self.center_rows!r}.")
        check_stage_names(self.extra_stages, self.stage_params)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
