"""Bragg's stages after the stop, on the :class:`~tomolive.stages.Stage` protocol.

:class:`LoopStage` records what the retraining loop did with the run's peaks (drift
decisions, retrains and their results; it waits for passes still running) in the metadata
``retrain`` and provenance. :class:`AuditStage` fits the sampled peaks with the pseudo-Voigt
labeller on Dask and adds them to the table as ``method="pseudo-voigt"`` rows beside the
model's; their disagreement with the model is recorded. Peaks after a cost-model choice of
the fit are all fitted the same way. :class:`PeakTableStage` writes the table
``processed/<uid>/peaks`` and the frame summary (empty, saturated frames, edge peaks).
"""

from __future__ import annotations

import numpy as np

from ...stages import StageContext
from .acquisition import COLUMNS
from .fitting import fit_patches_dask

FIT_METHOD = "pseudo-voigt"


class LoopStage:
    """The retraining loop's record of the run: ``metadata["retrain"]`` and ``provenance.results["retrain"]``."""

    name = "retrain"

    def run(self, ctx: StageContext) -> None:
        ctx.report("retrain")
        with ctx.provenance.stage("retrain"):
            record = ctx.acquisition.loop_record()
        ctx.metadata["retrain"] = record
        ctx.provenance.results["retrain"] = record


class AuditStage:
    """The sampled peaks fitted on Dask; rows added, and the model-vs-fit disagreement recorded."""

    name = "audit"

    def run(self, ctx: StageContext) -> None:
        acquisition = ctx.acquisition
        n_audit = len(acquisition.audit)
        sample = acquisition.audit + acquisition.refit
        if not sample:
            ctx.metadata["audit"] = {"n": 0, "refit": 0}
            return
        ctx.report("audit")
        with ctx.provenance.stage("audit"):
            patches = np.stack([patch for _, patch, _ in sample])
            fitted = fit_patches_dask(ctx.dask_client(), patches, chunk=ctx.params.fit_chunk)
        rows = acquisition.rows
        distances: list[float] = []
        for k, ((row, _, origin), (fy, fx)) in enumerate(zip(sample, fitted, strict=True)):
            if not np.isfinite(fy):
                continue  # the fit did not find this peak: no row rather than a wrong one
            y, x = origin[0] + fy, origin[1] + fx
            if k < n_audit:
                distances.append(float(np.hypot(y - rows["y"][row], x - rows["x"][row])))
            for name in COLUMNS:
                rows[name].append(rows[name][row])
            rows["y"][-1], rows["x"][-1], rows["method"][-1], rows["model_version"][-1] = y, x, FIT_METHOD, ""
        ctx.metadata["audit"] = {
            "n": n_audit,
            "refit": len(acquisition.refit),  # every peak after the cost model chose the fit
            "method": FIT_METHOD,
            "untrusted": int(np.isnan(fitted[:, 0]).sum()),  # fits that found no peak, left out
            "median_disagreement_px": float(np.median(distances)) if distances else None,
            "p90_disagreement_px": float(np.percentile(distances, 90)) if distances else None,
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
