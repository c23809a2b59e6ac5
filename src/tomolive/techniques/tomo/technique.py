"""Tomography on the engine: what it claims, how it reads frames, its stages and its layout."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ...stages import Stage, load_stage
from .acquisition import TomoAcquisition
from .documents import TomoDocuments
from .params import PipelineParams
from .stages import CenterStage, DenoiseStage, QualityStage, ReconStage, SegmentStage

if TYPE_CHECKING:
    from ...engine.run import Run

DEFAULT_EXPECTED_ANGLES = 256
"""Angles the spool makes room for when the start document does not say (it grows as needed)."""


class TomoTechnique:
    """Absorption or phase-contrast tomography: darks, flats and projections -> a volume.

    Parameters
    ----------
    params : PipelineParams, optional
        Every processing knob (recorded in provenance).
    """

    name = "tomo"
    layout = ("preview", "recon", "denoised", "segmented")

    def __init__(self, params: PipelineParams | None = None):
        self.params = params or PipelineParams()

    def claims(self, start_doc: Mapping[str, Any]) -> bool:
        """Runs whose start document carries a ``tomo`` block (``tomo_scan`` writes it)."""
        return "tomo" in start_doc

    def run_metadata(self, start_doc: Mapping[str, Any]) -> dict[str, Any]:
        """Sample, scan id, plan, pixel size, energy, time and the ``tomo`` block (angles left out)."""
        keys = ("sample", "scan_id", "plan_name", "pixel_size_um", "energy_kev", "time")
        md = {key: start_doc[key] for key in keys if key in start_doc}
        md.setdefault("sample", "unknown")
        tomo = start_doc["tomo"]
        md["tomo"] = {k: v for k, v in tomo.items() if k != "angles"} if isinstance(tomo, dict) else repr(tomo)
        return md

    def reader(self, start_doc: dict[str, Any], run: Run) -> TomoDocuments:
        return TomoDocuments(start_doc, run)

    def acquisition(self, run: Run) -> TomoAcquisition:
        tomo = run.metadata.get("tomo")
        n_angles = tomo.get("n_angles") if isinstance(tomo, dict) else None
        if isinstance(n_angles, int) and not isinstance(n_angles, bool) and n_angles > 0:
            return TomoAcquisition(run, n_angles)
        return TomoAcquisition(run, DEFAULT_EXPECTED_ANGLES)

    def stages(self) -> list[Stage]:
        """Centre, volume, then denoise and segment when asked, QC always, then the user's stages."""
        params = self.params
        optional: list[Stage] = [DenoiseStage()] if params.denoise is not None else []
        optional += [SegmentStage()] if params.segment else []
        extra: list[Stage] = [load_stage(name).stage for name in params.extra_stages]
        return [CenterStage(), ReconStage(), *optional, QualityStage(), *extra]

    def frame_steps(self) -> list[str]:
        """What is done to each projection as it arrives (and, for stripes, to each sinogram block)."""
        params = self.params
        steps = {
            "zingers": params.zinger_threshold is not None,
            "paganin": params.paganin is not None,
            "stripes": params.stripe_method != "none",
        }
        return ["normalize", *[name for name, on in steps.items() if on]]
