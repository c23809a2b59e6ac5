"""The parameters of ptychography processing: solver, live preview and QC knobs, all recorded in provenance."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from ...errors import BadInputError

METHODS = ("epie", "rpie", "lsq", "ptychi-epie", "ptychi-lsqml")


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
        Patterns updated together (mini-batch).
    refine_positions : bool
        Refine the probe positions beside object and probe.
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
    min_overlap : float
        QC: alert when the probe-overlap ratio of a view is below this.
    max_data_error : float
        QC: alert when a view's final data error (last epoch's loss) is above this.
    """

    method: Literal["epie", "rpie", "lsq", "ptychi-epie", "ptychi-lsqml"] = "epie"
    epochs: int = 50
    batch_size: int = 16
    refine_positions: bool = False
    device: str = "cpu"
    threads_per_task: int | None = None
    preview_interval_s: float = 2.0
    preview_epochs: int = 2
    preview_min_patterns: int = 8
    min_overlap: float = 0.5
    max_data_error: float = 0.05

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise BadInputError(f"method must be one of {METHODS}; got {self.method!r}.")
        for name in ("epochs", "batch_size", "preview_epochs", "preview_min_patterns"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise BadInputError(f"{name} must be a positive integer; got {value!r}.")
        if self.threads_per_task is not None and self.threads_per_task < 1:
            raise BadInputError(f"threads_per_task must be None or >= 1; got {self.threads_per_task!r}.")
        if not self.preview_interval_s > 0:
            raise BadInputError(f"preview_interval_s must be positive; got {self.preview_interval_s!r}.")

    @property
    def preview_method(self) -> str:
        """The live preview's solver: always tomolive's own (Pty-chi sets process-wide torch
        state, so it runs on the Dask workers only), ePIE when the reconstruction is Pty-chi's."""
        return "epie" if self.method.startswith("ptychi-") else self.method

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
