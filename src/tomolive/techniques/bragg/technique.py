"""Bragg-peak analysis on the engine: what it claims, how it reads frames, its stages and its layout."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ...errors import MissingDataError
from ...ml.deploy import ModelSlot
from ...stages import Stage
from .acquisition import BraggAcquisition
from .documents import BraggDocuments
from .params import BraggParams
from .stages import AuditStage, LoopStage, PeakTableStage

if TYPE_CHECKING:
    from ...engine.run import Run
    from ...ml.deploy import DriftMonitor
    from .live_loop import BraggLoop

OUTBOX_WHY = "edge-only: the run's result store has no model store (Tiled unreachable: kept in the outbox)"


class BraggTechnique:
    """Far-field diffraction: each frame's Bragg peaks found and localised as it arrives.

    Parameters
    ----------
    params : BraggParams, optional
        Peak finding, localisation and audit knobs (recorded in provenance).
    slot : ModelSlot, optional
        Where the deployed localisation model is read for each frame (``slot.current()`` ->
        ``(model, version)``); the retrain loop swaps new versions into it while scans run.
        Default: a slot holding the shipped BraggNN (``tomolive/weights/braggnn.pt``),
        loaded at the first frame.
    monitor : DriftMonitor, optional
        Fed every frame's patches (``monitor.observe(frame, patches, source=uid)``) to audit the
        model and start a retrain when it drifts: the loop wired by hand (bench/bragg_loop.py).
        Without one, ``params.retrain.mode == "auto"`` wires the loop by itself
        (:mod:`.live_loop`) for each run whose result store has a model store (Tiled
        ``models/``); a run kept in the outbox stays edge-only and its metadata says why.

    Examples
    --------
    >>> pipe = TomoPipeline.from_uri(uri, techniques=[BraggTechnique(), TomoTechnique()])  # doctest: +SKIP
    >>> RE(bragg_scan(det, omega, np.linspace(0, 180, 1440)))  # doctest: +SKIP
    >>> from_uri(uri)["processed"][uid]["peaks"].read()  # doctest: +SKIP
    """

    name = "bragg"
    layout = ("peaks",)

    def __init__(
        self,
        params: BraggParams | None = None,
        *,
        slot: ModelSlot[Any] | None = None,
        monitor: DriftMonitor | None = None,
    ):
        self.params = params or BraggParams()
        self.monitor = monitor
        self._slot = slot
        self._shipped_label = "unversioned"
        self._lock = threading.Lock()
        self.loop: BraggLoop | None = None
        self._connector = ThreadPoolExecutor(1, thread_name_prefix="bragg-loop")

    @property
    def automatic(self) -> bool:
        """Whether runs wire the retraining loop by themselves (no hand-made monitor, mode ``auto``)."""
        return self.monitor is None and self.params.retrain.mode == "auto"

    def attach(self, run: Run) -> Future[BraggLoop | str]:
        """Connect ``run`` to the loop off its threads: the loop, or why the run stays edge-only."""
        return self._connector.submit(self._attach, run)

    def _attach(self, run: Run) -> BraggLoop | str:
        models = getattr(run.store.result(), "models_client", None)
        if models is None:
            return OUTBOX_WHY
        with self._lock:
            if self.loop is None:
                from .live_loop import BraggLoop  # torch and the registry: off the import path

                self.loop = BraggLoop.connect(models, run.engine.dask_client(), self._make_slot(), self.params.retrain)
        n_frames = (run.metadata.get("bragg") or {}).get("n_frames")
        self.loop.start_run(run.uid, int(n_frames) if n_frames else None)
        return self.loop

    def retrain_now(self) -> Future[Any]:
        """Retrain now, on request, from the newest peaks the loop's monitor kept (no cost check).

        Returns the pass's future: a dict with the RetrainResult under ``"result"``. Raises
        MissingDataError before any run has connected the loop (no model store seen yet).
        """
        if self.loop is None:
            raise MissingDataError("retrain_now: no run has connected the retraining loop yet (no model store seen)")
        return self.loop.retrain_now()

    @property
    def slot(self) -> ModelSlot[Any]:
        """The slot of the deployed model (the shipped BraggNN, loaded now, unless one was given)."""
        with self._lock:
            return self._make_slot()

    def _make_slot(self) -> ModelSlot[Any]:
        """:attr:`slot`, for a caller holding the technique's lock."""
        if self._slot is None:
            from .default_model import default_model

            model, record = default_model()
            self._shipped_label = f"shipped:{record['sha256'][:12]}"
            self._slot = ModelSlot(model, None)
        return self._slot

    def deployed(self) -> tuple[Any, str]:
        """The deployed model and the label its table rows get (``v<version>``, or the shipped weights')."""
        model, version = self.slot.current()
        return model, (f"v{version}" if version is not None else self._shipped_label)

    def claims(self, start_doc: Mapping[str, Any]) -> bool:
        """Runs whose start document carries a ``bragg`` block (``bragg_scan`` writes it)."""
        return "bragg" in start_doc

    def run_metadata(self, start_doc: Mapping[str, Any]) -> dict[str, Any]:
        """Sample, scan id, plan, time and the ``bragg`` block."""
        keys = ("sample", "scan_id", "plan_name", "time", "bragg")
        md = {key: start_doc[key] for key in keys if key in start_doc}
        md.setdefault("sample", "unknown")
        md["technique"] = self.name
        return md

    def reader(self, start_doc: dict[str, Any], run: Run) -> BraggDocuments:
        return BraggDocuments(start_doc, run)

    def acquisition(self, run: Run) -> BraggAcquisition:
        return BraggAcquisition(run, self)

    def stages(self) -> list[Stage]:
        """The loop's record, the audit (when asked for), then the table."""
        audit: list[Stage] = [AuditStage()] if self.params.audit_fraction > 0 or self.automatic else []
        return [LoopStage(), *audit, PeakTableStage()]

    def frame_steps(self) -> list[str]:
        """What is done to each frame as it arrives."""
        return ["find_peaks", "localise"]
