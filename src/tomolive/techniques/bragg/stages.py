"""Bragg's stages after the stop, on the :class:`~tomolive.stages.Stage` protocol.

:class:`AuditStage` fits the sampled peaks with the pseudo-Voigt labeller on Dask and adds
them to the table as ``method="pseudo-voigt"`` rows beside the model's; their disagreement
with the model is recorded. :class:`PeakTableStage` writes the table
``processed/<uid>/peaks`` and the frame summary (empty, saturated frames, edge peaks).
"""

from __future__ import annotations

import numpy as np

from ...stages import StageContext
from .acquisition import COLUMNS
from .fitting import fit_patches_dask

FIT_METHOD = "pseudo-voigt"


class AuditStage:
    """The sampled peaks fitted on Dask; rows added, and the model-vs-fit disagreement recorded."""

    name = "audit"

    def run(self, ctx: StageContext) -> None:
        acquisition = ctx.acquisition
        sample = acquisition.audit
        if not sample:
            ctx.metadata["audit"] = {"n": 0}
            return
        ctx.report("audit")
        with ctx.provenance.stage("audit"):
            patches = np.stack([patch for _, patch, _ in sample])
            fitted = fit_patches_dask(ctx.dask_client(), patches, chunk=ctx.params.fit_chunk)
        rows = acquisition.rows
        distances = []
        for (row, _, origin), (fy, fx) in zip(sample, fitted, strict=True):
            y, x = origin[0] + fy, origin[1] + fx
            distances.append(float(np.hypot(y - rows["y"][row], x - rows["x"][row])))
            for name in COLUMNS:
                rows[name].append(rows[name][row])
            rows["y"][-1], rows["x"][-1], rows["method"][-1], rows["model_version"][-1] = y, x, FIT_METHOD, ""
        ctx.metadata["audit"] = {
            "n": len(sample),
            "method": FIT_METHOD,
            "median_disagreement_px": float(np.median(distances)),
            "p90_disagreement_px": float(np.percentile(distances, 90)),
        }


class PeakTableStage:
    """The table of peaks (one row per peak and method) as ``processed/<uid>/peaks``."""

    name = "peaks"

    def run(self, ctx: StageContext) -> None:
        import pandas as pd

        acquisition = ctx.acquisition
        table = pd.DataFrame({name: acquisition.rows[name] for name in COLUMNS})
        table = table.astype({"frame": "int64", "peak_id": "int64", "omega": "float64", "x": "float64", "y": "float64"})
        table = table.astype({"intensity": "float64", "saturated": "bool", "method": "str", "model_version": "str"})
        summary = acquisition.summary()
        ctx.report("peaks")
        with ctx.provenance.stage("peaks"):
            ctx.store.write_table("peaks", table, metadata={"units": UNITS, "columns": list(COLUMNS)})
        ctx.provenance.results["models"] = summary["model_versions"]
        ctx.metadata["peak_summary"] = summary


UNITS = {
    "x": "detector column (px, pixel centres at integers)",
    "y": "detector row (px)",
    "omega": "deg",
    "intensity": "counts above the patch background",
}
