"""The parameters of ptychography processing: solver, live preview and QC knobs, all recorded in provenance."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from ...errors import BadInputError
from .physics import MAX_PROBE_MODES

METHODS = ("epie", "rpie", "lsq", "ptychi-epie", "ptychi-lsqml")
SURROGATE = ("auto", "on", "off")


@dataclass(frozen=True)
class PtychoParams:
    """Every knob of the ptychography stages.

    Parameters
    ----------
    method : {"epie", "rpie", "lsq", "ptychi-epie", "ptychi-lsqml"}
        The iterative solver of :func:`tomolive.techniques.ptycho.solver.reconstruct`, or
        Pty-chi's (:mod:`.ptychi_backend`; where it imports on the Dask workers).
    epochs : int
        Sweeps over every pattern of a view in the final reconstruction.
    batch_size : int
        Patterns updated together at most (mini-batch); tomolive's solvers batch only positions
        a probe diameter apart, so a dense or small scan gives smaller batches.
    probe_modes : int
        Incoherent probe modes to reconstruct (1 to 8): more than one models a partially
        coherent beam, whose patterns a single mode cannot fit (blurred speckle, a data error
        that stalls). The extra modes start from the probe guess times low-order polynomials
        with 10 % of the power (``physics.add_probe_modes``).
    refine_positions : bool
        Refine the probe positions beside object and probe (tomolive's solvers only).
    device : str
        Torch device of the reconstruction tasks (``"cpu"``, ``"cuda"``).
    threads_per_task : int or None
        Torch threads of each view's Dask task; None for the worker's own thread count.
    preview_interval_s : float
        The live stitched preview is published at most this often (default 2 s).
    preview_epochs : int
        Iterative sweeps over the patterns so far for each preview update (the object is
        carried from one update to the next, so the preview sharpens as the scan goes on).
    preview_min_patterns : int
        Patterns a view needs before its first preview.
    surrogate : {"auto", "on", "off"}
        The PtychoNN surrogate (:mod:`.learning`). ``"auto"`` (default) trains it on every
        rotation series of >= 3 views (all views but the last train, the last is held out to
        validate) and lets the live preview use the deployed version when it is trusted;
        ``"on"`` also trains on a 2-view series; ``"off"`` neither trains nor uses it. Why
        auto: training is cheap beside a rotation series' reconstruction (measured 12.3 s on
        one core, 10.1 s on two, for 32^2 patterns with the defaults below; about 4x per
        doubling of the pattern size), and a series of >= 3 views leaves one to validate on
        while two train; a single view has none to hold out.
    surrogate_epochs : int
        Training epochs of the surrogate (fine-tuning a deployed version uses as many).
    surrogate_channels : int
        Width of the surrogate (:class:`~.surrogate.PtychoNN` ``channels``); the model store
        keeps one series per pattern size and width (``models/ptychonn_n<n>_c<channels>``).
    surrogate_pairs : int
        Training pairs per run: the training views' measured patterns (a random draw of this
        many when they hold more) plus patterns re-illuminated from their iterative results to
        make up this many (at least
        :data:`~.surrogate.MIN_TRAINING_PAIRS`, or the surrogate is never trusted).
    min_overlap : float
        QC: alert when the probe-overlap ratio of a view is below this.
    max_data_error : float
        QC: alert when a view's final data error (last epoch's loss) is above this.
    max_phase_ramp_rad : float
        QC: alert when the linear phase ramp removed from a view spans more than this across the
        scanned area (default pi: beyond it the phase wraps inside the area, and a ramp fitted to
        wrapped phase is unreliable).
    """

    method: Literal["epie", "rpie", "lsq", "ptychi-epie", "ptychi-lsqml"] = "epie"
    epochs: int = 50
    batch_size: int = 16
    probe_modes: int = 1
    refine_positions: bool = False
    device: str = "cpu"
    threads_per_task: int | None = None
    preview_interval_s: float = 2.0
    preview_epochs: int = 2
    preview_min_patterns: int = 8
    surrogate: Literal["auto", "on", "off"] = "auto"
    surrogate_epochs: int = 10
    surrogate_channels: int = 16
    surrogate_pairs: int = 2000
    min_overlap: float = 0.5
    max_data_error: float = 0.05
    max_phase_ramp_rad: float = math.pi

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise BadInputError(f"method must be one of {METHODS}; got {self.method!r}.")
        if self.surrogate not in SURROGATE:
            raise BadInputError(f"surrogate must be one of {SURROGATE}; got {self.surrogate!r}.")
        positive = ("epochs", "batch_size", "probe_modes", "preview_epochs", "preview_min_patterns")
        for name in (*positive, "surrogate_epochs", "surrogate_channels", "surrogate_pairs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise BadInputError(f"{name} must be a positive integer; got {value!r}.")
        if self.probe_modes > MAX_PROBE_MODES:
            raise BadInputError(f"probe_modes must be at most {MAX_PROBE_MODES}; got {self.probe_modes!r}.")
        if self.threads_per_task is not None and self.threads_per_task < 1:
            raise BadInputError(f"threads_per_task must be None or >= 1; got {self.threads_per_task!r}.")
        if self.refine_positions and self.method.startswith("ptychi-"):
            raise BadInputError(
                f"refine_positions: the Pty-chi backend keeps positions fixed; use method 'epie', 'rpie' "
                f"or 'lsq' to refine them (got method {self.method!r})."
            )
        if not self.preview_interval_s > 0:
            raise BadInputError(f"preview_interval_s must be positive; got {self.preview_interval_s!r}.")

    @property
    def preview_method(self) -> str:
        """The live preview's solver: always tomolive's own (Pty-chi sets process-wide torch
        state, so it runs on the Dask workers only), ePIE when the reconstruction is Pty-chi's."""
        return "epie" if self.method.startswith("ptychi-") else self.method

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
