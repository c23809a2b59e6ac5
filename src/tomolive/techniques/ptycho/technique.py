"""Ptychography on the engine: what it claims, how it reads frames, its stages and its layout."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ...stages import Stage
from .acquisition import PREVIEW_KEYS, PtychoAcquisition
from .documents import PtychoDocuments
from .params import PtychoParams
from .stages import ARRAYS, PtychoQualityStage, ReconstructViewsStage
from .tomo3d import PtychoTomoStage

if TYPE_CHECKING:
    from ...engine.run import Run


class PtychoTechnique:
    """Far-field ptychography: diffraction patterns at scanned probe positions -> complex object and probe.

    Parameters
    ----------
    params : PtychoParams, optional
        Solver, preview and QC knobs (recorded in provenance).
    """

    name = "ptycho"
    layout = (*PREVIEW_KEYS, *ARRAYS)

    def __init__(self, params: PtychoParams | None = None):
        self.params = params or PtychoParams()

    def claims(self, start_doc: Mapping[str, Any]) -> bool:
        """Runs whose start document carries a ``ptycho`` block (``ptycho_scan`` writes it)."""
        return "ptycho" in start_doc

    def run_metadata(self, start_doc: Mapping[str, Any]) -> dict[str, Any]:
        """Sample, scan id, plan, pixel size, energy, time and the ``ptycho`` block."""
        keys = ("sample", "scan_id", "plan_name", "pixel_size_um", "energy_kev", "time")
        md = {key: start_doc[key] for key in keys if key in start_doc}
        md.setdefault("sample", "unknown")
        block = start_doc["ptycho"]
        md["ptycho"] = dict(block) if isinstance(block, Mapping) else repr(block)
        return md

    def reader(self, start_doc: dict[str, Any], run: Run) -> PtychoDocuments:
        return PtychoDocuments(start_doc, run)

    def acquisition(self, run: Run) -> PtychoAcquisition:
        return PtychoAcquisition(run, run.metadata.get("ptycho"))

    def stages(self) -> list[Stage]:
        """Every view reconstructed (one Dask task each), QC, a rotation series' 3D phase volume, then
        (unless ``params.surrogate`` is ``"off"``) the surrogate trained on the views."""
        stages: list[Stage] = [ReconstructViewsStage(), PtychoQualityStage(), PtychoTomoStage()]
        if self.params.surrogate != "off":
            from .learning import SurrogateStage  # torch: imported when the stages are made

            stages.append(SurrogateStage())
        return stages

    def frame_steps(self) -> list[str]:
        """What is done to each pattern as it arrives: checks, and the live preview (surrogate or sweeps)."""
        return ["check", "preview"]
