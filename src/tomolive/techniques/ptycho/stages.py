"""Ptychography's stages, each on the :class:`~tomolive.stages.Stage` protocol.

In pipeline order: :class:`ReconstructViewsStage` (one Dask task per view, then the arrays
written under ``processed/<uid>/``) and :class:`PtychoQualityStage` (QC numbers and alerts).
A rotation series then goes on to the 3D step, which reads the per-view complex objects and
their angles that the reconstruction stage leaves in ``ctx.results["objects"]`` (list of
complex64 (rows, cols)) and ``ctx.results["angles"]`` (degrees).

Arrays of a plain scan: ``object_phase``, ``object_amplitude`` (rows, cols), ``probe_amplitude``,
``probe_phase`` (modes, n, n), ``positions`` (N, 2) refined, ``loss`` (epochs,); a rotation
series adds a leading view axis to each. ``object_phase`` has its offset and linear ramp
(fitted inside the scanned area) removed; QC records what was removed.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from ...engine.cluster import gpu_resources
from ...stages import StageContext
from . import metrics
from .params import PtychoParams
from .views import View

logger = logging.getLogger(__name__)
ARRAYS = ("object_phase", "object_amplitude", "probe_amplitude", "probe_phase", "positions", "loss")


def reconstruct_view(view: View, probe: np.ndarray, object_shape: tuple[int, int], params: PtychoParams) -> Any:
    """Dask task: the :class:`PtychoResult` of one view, with the worker's thread count (or ``params``')."""
    from .solver import reconstruct  # torch: imported on the worker

    threads = params.threads_per_task or worker_threads()
    if params.method.startswith("ptychi-"):
        from .ptychi_backend import reconstruct_ptychi_isolated

        return reconstruct_ptychi_isolated(
            view.patterns,
            view.positions,
            probe,
            object_shape=object_shape,
            method=params.method.removeprefix("ptychi-"),
            epochs=params.epochs,
            batch_size=params.batch_size,
            threads=threads,
            device=params.device,
        )
    return reconstruct(
        view.patterns,
        view.positions,
        probe,
        object_shape=object_shape,
        method=params.method,
        epochs=params.epochs,
        batch_size=params.batch_size,
        refine_positions=params.refine_positions,
        device=params.device,
        threads=threads,
    )


def worker_threads() -> int:
    """The threads of the Dask worker running this task (1 on tomolive's LocalCluster)."""
    from distributed import get_worker

    try:
        return int(get_worker().state.nthreads)
    except ValueError:  # not on a worker (called directly)
        return 1


def flattened_phase(obj: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """The phase of ``obj`` less its offset and linear ramp fitted inside ``mask``, and what was removed.

    The ramp's bulk comes from neighbour phase differences (:func:`.metrics.mean_phase_slope`),
    so a ramp steep enough to wrap inside the scanned area is still removed whole.
    """
    rr, cc = np.indices(obj.shape, dtype=np.float64)
    slope = metrics.mean_phase_slope(obj, mask)
    obj = obj * np.exp(-1j * (slope[0] * rr + slope[1] * cc))
    offset = float(np.angle(np.sum(obj[mask])))
    phase = np.angle(obj * np.exp(-1j * offset)).astype(np.float64)
    plane = metrics.fit_phase_ramp(phase, mask)
    slope = (slope[0] + float(plane[1, 0] - plane[0, 0]), slope[1] + float(plane[0, 1] - plane[0, 0]))
    rows, cols = np.nonzero(mask)
    extent = (np.ptp(rows) + 1, np.ptp(cols) + 1) if rows.size else (0, 0)
    removed = {
        "offset_rad": round(offset + float(plane[0, 0]), 6),
        "ramp_rad_per_px": [round(slope[0], 8), round(slope[1], 8)],
        "ramp_rad_across_scan": round(abs(slope[0]) * extent[0] + abs(slope[1]) * extent[1], 4),
    }
    return (phase - plane).astype(np.float32), removed


class ReconstructViewsStage:
    """Every view's object and probe, one Dask task per view; the arrays written to the store."""

    name = "ptycho"

    def run(self, ctx: StageContext) -> None:
        acquisition = ctx.acquisition
        views: list[View] = acquisition.views()
        shape, probe, params = acquisition.setup.object_shape, acquisition.probe_guess, ctx.params
        client = ctx.dask_client()
        started = time.perf_counter()
        with ctx.provenance.stage("ptycho"):
            scattered = client.scatter(views)  # patterns travel once, not inside the task graph
            resources = gpu_resources(client) if params.device != "cpu" else None
            args = [(view, probe, shape, params) for view in scattered]
            results = ctx.run_blocks("ptycho", reconstruct_view, args, resources=resources)
        seconds = time.perf_counter() - started
        masks = [metrics.scanned_mask(shape, r.positions, probe.shape[-1]) for r in results]
        flat = [flattened_phase(r.object, mask) for r, mask in zip(results, masks)]
        ctx.results.update(
            objects=[np.asarray(r.object, dtype=np.complex64) for r in results],
            angles=[float(v.angle_deg) for v in views],
            views=views,
            ptycho=results,
            masks=masks,
            phase_removed=[removed for _, removed in flat],
        )
        series = len(views) > 1
        arrays = {
            "object_phase": [phase for phase, _ in flat],
            "object_amplitude": [np.abs(r.object) for r in results],
            "probe_amplitude": [np.abs(_modes(r.probe)) for r in results],
            "probe_phase": [np.angle(_modes(r.probe)) for r in results],
            "positions": [np.asarray(r.positions, dtype=np.float64) for r in results],
            "loss": [np.asarray(r.loss, dtype=np.float64) for r in results],
        }
        for key, per_view in arrays.items():
            write_array(ctx.store, key, np.stack(per_view) if series else per_view[0], UNITS[key])
        ctx.metadata["ptycho_recon"] = {
            "n_views": len(views),
            "n_patterns": [len(v.patterns) for v in views],
            "object_shape": list(shape),
            "pixel_size_um": acquisition.setup.pixel_um,
            "probe_modes": int(_modes(results[0].probe).shape[0]),
            "method": params.method,
            "epochs": params.epochs,
            "seconds_per_epoch": float(np.median([r.seconds_per_epoch for r in results])),
            "seconds": round(seconds, 3),
            "arrays": list(ARRAYS),
            "view_axis": series,
        }


UNITS: dict[str, dict[str, Any]] = {
    "object_phase": {"units": "rad", "note": "offset and linear ramp removed inside the scanned area"},
    "object_amplitude": {"units": "transmission"},
    "probe_amplitude": {"units": "sqrt(counts)", "axes": ["mode", "row", "col"]},
    "probe_phase": {"units": "rad", "axes": ["mode", "row", "col"]},
    "positions": {"units": "object pixels", "axes": ["position", "(row, col)"], "note": "probe centres, refined"},
    "loss": {"units": "data error", "axes": ["epoch"]},
}


def _modes(probe: np.ndarray) -> np.ndarray:
    """A probe as (modes, n, n)."""
    probe = np.asarray(probe)
    return probe if probe.ndim == 3 else probe[None]


def write_array(store: Any, key: str, array: np.ndarray, metadata: dict[str, Any]) -> None:
    """Write a whole (small) array as one chunk of ``processed/<uid>/<key>``."""
    dtype = np.dtype(np.float64) if array.dtype == np.float64 else np.dtype(np.float32)
    array = np.ascontiguousarray(array, dtype=dtype)
    target = store.new_volume(key, array.shape, array.shape[0], dtype=dtype, metadata=metadata)
    target.write_block(0, array)


class PtychoQualityStage:
    """QC numbers and alerts of every view: final data error, probe overlap, the phase ramp removed."""

    name = "qc"

    def run(self, ctx: StageContext) -> None:
        with ctx.provenance.stage("qc"):
            ctx.metadata["qc"] = self.numbers(ctx.results, ctx.params)

    @staticmethod
    def numbers(results_so_far: dict[str, Any], params: PtychoParams) -> dict[str, Any]:
        """The QC record: the worst view's numbers, alerts and (for a series) every view's."""
        results, views = results_so_far["ptycho"], results_so_far["views"]
        per_view = []
        for index, (result, view) in enumerate(zip(results, views)):
            loss = np.asarray(result.loss, dtype=np.float64)
            numbers = {
                "data_error": float(loss[-1]) if loss.size else float("nan"),
                "data_error_first": float(loss[0]) if loss.size else float("nan"),
                "probe_overlap": metrics.probe_overlap(view.positions, _modes(result.probe)),
                "phase_removed": results_so_far["phase_removed"][index],
            }
            per_view.append(numbers)
        alerts = quality_alerts(per_view, [v.angle_deg for v in views], params)
        for alert in alerts:
            logger.warning("tomolive QC: %s", alert)
        worst = {
            "data_error": max(q["data_error"] for q in per_view),
            "probe_overlap": min(q["probe_overlap"] for q in per_view),
            "phase_removed": max((q["phase_removed"] for q in per_view), key=lambda r: r["ramp_rad_across_scan"]),
        }
        qc: dict[str, Any] = {**worst, "alerts": alerts}
        if len(per_view) > 1:
            qc["per_view"] = per_view
        return qc


def quality_alerts(per_view: list[dict[str, Any]], angles: list[float], params: PtychoParams) -> list[str]:
    """Alert lines for views whose numbers pass the thresholds of ``params``."""
    alerts = []
    for q, angle in zip(per_view, angles):
        where = f"view at {angle:g} deg" if len(per_view) > 1 else "the scan"
        if q["probe_overlap"] < params.min_overlap:
            alerts.append(
                f"{where}: probe overlap {q['probe_overlap']:.2f} is below {params.min_overlap:.2f}; "
                "the object may be ambiguous: scan with a smaller step."
            )
        if not q["data_error"] <= params.max_data_error:
            alerts.append(
                f"{where}: final data error {q['data_error']:.3g} is above {params.max_data_error:.3g}; "
                "the reconstruction may not have converged (more epochs, or check probe and geometry)."
            )
        ramp = q["phase_removed"]["ramp_rad_across_scan"]
        if ramp > params.max_phase_ramp_rad:
            alerts.append(
                f"{where}: a phase ramp of {ramp:.2f} rad across the scanned area was removed (above "
                f"{params.max_phase_ramp_rad:.2f}); the phase may have wrapped before removal: check the "
                "detector centre and the probe guess."
            )
        if q["data_error"] > q["data_error_first"]:
            alerts.append(f"{where}: the data error rose during the reconstruction; the solver diverged.")
    return alerts
