"""Pty-chi (APS's PyTorch ptychography library, PyPI ``ptychi``) as an optional backend.

Same inputs and result as :func:`.solver.reconstruct`, so a view can be cross-checked against
APS's engine or processed by it (``PtychoParams(method="ptychi-epie")``). Pty-chi imports
torchvision, whose PyPI Linux wheels need the CUDA build of torch, and building a task sets
process-wide torch defaults (dtype, device, seeds): :func:`reconstruct_ptychi_isolated` runs
each view in a Python process of its own (what the pipeline's Dask tasks call), so no worker
keeps Pty-chi's defaults or threads; :func:`reconstruct_ptychi` runs in the calling process.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ...errors import BadInputError
from .solver import PtychoResult, _check_inputs, data_error

METHODS = ("epie", "lsqml")


def unavailable() -> str | None:
    """Why Pty-chi cannot be used here (None when it imports)."""
    try:
        import ptychi.api  # noqa: F401
    except Exception as err:  # torchvision on a CPU-only torch raises RuntimeError, absent ptychi ImportError
        return f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
    return None


def reconstruct_ptychi(
    patterns: np.ndarray,
    positions: np.ndarray,
    probe: np.ndarray,
    *,
    object_shape: tuple[int, int],
    method: str = "epie",
    epochs: int = 50,
    batch_size: int = 16,
    threads: int | None = None,
    device: str = "cpu",
) -> PtychoResult:
    """Object and probe from far-field ``patterns`` by Pty-chi's ePIE (alpha 1) or LSQML.

    Inputs as :func:`.solver.reconstruct` (positions are probe centres in object pixels; the
    probe guess, (n, n) or (modes, n, n), is rescaled to the data's mean photon count). Pty-chi's per-epoch losses are
    in its own units, so ``loss`` holds tomolive's data error (:func:`.solver.data_error`) of
    the final object and probe as its last value, NaN before.

    Raises
    ------
    BadInputError
        As :func:`.solver.reconstruct`; an unknown ``method``; Pty-chi does not import here
        (the message says why).
    """
    if method not in METHODS:
        raise BadInputError(f"method must be one of {METHODS} for Pty-chi, got {method!r}")
    patterns, positions = np.asarray(patterns, dtype=np.float32), np.asarray(positions, dtype=np.float64)
    probe = np.asarray(probe).reshape(-1, *np.shape(probe)[-2:]).astype(np.complex64)  # (modes, n, n)
    _check_inputs(patterns, positions, probe, object_shape, "epie", epochs, batch_size)
    reason = unavailable()
    if reason is not None:
        raise BadInputError(
            f"the Pty-chi backend needs ptychi (pip install ptychi, with a torch its torchvision accepts); "
            f"here it does not import: {reason}"
        )
    import ptychi.api as api
    import torch

    threads_before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        return _run(api, patterns, positions, probe, object_shape, method, epochs, batch_size, device)
    finally:
        torch.set_num_threads(threads_before)


def _run(api, patterns, positions, probe, object_shape, method, epochs, batch_size, device) -> PtychoResult:
    """Build and run one Pty-chi task: the result with tomolive's final data error."""
    import torch
    from ptychi.api.task import PtychographyTask

    n = patterns.shape[-1]
    scale = np.sqrt(patterns.sum(axis=(1, 2)).mean() / (n * n * np.sum(np.abs(probe) ** 2)))
    options = _options(api, method, epochs, batch_size, device)
    centre = np.round(np.asarray(object_shape, dtype=np.float64) / 2.0)  # Pty-chi's origin, as measured
    task = PtychographyTask(
        options,
        diffraction_data=torch.as_tensor(patterns),
        object_data=torch.ones((1, *object_shape), dtype=torch.complex64),
        probe_data=torch.as_tensor(probe[None] * np.float32(scale)),
        probe_position_x_px=torch.as_tensor(positions[:, 1] - centre[1], dtype=torch.float32),
        probe_position_y_px=torch.as_tensor(positions[:, 0] - centre[0], dtype=torch.float32),
    )
    start = time.perf_counter()
    task.run()
    seconds = (time.perf_counter() - start) / epochs
    obj = task.get_data_to_cpu("object", as_numpy=True)[0].astype(np.complex64)
    final_probe = task.get_data_to_cpu("probe", as_numpy=True)[0].astype(np.complex64)
    loss = np.full(epochs, np.nan)
    loss[-1] = data_error(patterns, positions, final_probe, obj)
    return PtychoResult(obj, final_probe, positions.copy(), loss, seconds)


def _options(api, method: str, epochs: int, batch_size: int, device: str):
    """Pty-chi's options: SGD steps of 1 on object and probe (alpha 1 for ePIE), positions fixed."""
    options = api.EPIEOptions() if method == "epie" else api.LSQMLOptions()
    for part in (options.object_options, options.probe_options):
        part.optimizable = True
        part.optimizer = api.Optimizers.SGD
        part.step_size = 1
        if method == "epie":
            part.alpha = 1
    options.probe_position_options.optimizable = False
    options.reconstructor_options.batch_size = batch_size
    options.reconstructor_options.num_epochs = epochs
    options.reconstructor_options.default_device = api.Devices.GPU if device.startswith("cuda") else api.Devices.CPU
    return options


def reconstruct_ptychi_isolated(
    patterns: np.ndarray,
    positions: np.ndarray,
    probe: np.ndarray,
    *,
    object_shape: tuple[int, int],
    method: str = "epie",
    epochs: int = 50,
    batch_size: int = 16,
    threads: int | None = None,
    device: str = "cpu",
    timeout_s: float | None = None,
) -> PtychoResult:
    """:func:`reconstruct_ptychi` in a fresh Python process (inputs and result through a temporary
    ``.npz``), so Pty-chi's process-wide torch defaults never reach the caller's process.

    Costs the child's imports (about 2 s); raises what :func:`reconstruct_ptychi` raises, as
    :class:`BadInputError` with the child's message.
    """
    with tempfile.TemporaryDirectory(prefix="tomolive-ptychi-") as scratch:
        inputs, output = Path(scratch) / "in.npz", Path(scratch) / "out.npz"
        np.savez(
            inputs, patterns=patterns, positions=positions, probe=probe, object_shape=np.asarray(object_shape),
            method=method, epochs=epochs, batch_size=batch_size, threads=-1 if threads is None else threads,
            device=device,
        )  # fmt: skip
        child = subprocess.run(
            [sys.executable, "-m", __name__, str(inputs), str(output)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if child.returncode != 0:
            lines = child.stderr.strip().splitlines() or [f"exit code {child.returncode}"]
            raise BadInputError(f"Pty-chi's process failed: {lines[-1]}")
        with np.load(output, allow_pickle=False) as result:
            return PtychoResult(
                result["object"], result["probe"], result["positions"], result["loss"], float(result["seconds"])
            )


def _child(inputs: str, output: str) -> None:
    """The isolated process: one reconstruction from ``inputs`` into ``output``."""
    with np.load(inputs, allow_pickle=False) as given:
        threads, (rows, cols) = int(given["threads"]), (int(n) for n in given["object_shape"])
        result = reconstruct_ptychi(
            given["patterns"],
            given["positions"],
            given["probe"],
            object_shape=(rows, cols),
            method=str(given["method"]),
            epochs=int(given["epochs"]),
            batch_size=int(given["batch_size"]),
            threads=None if threads < 0 else threads,
            device=str(given["device"]),
        )
    np.savez(output, object=result.object, probe=result.probe, positions=result.positions, loss=result.loss,
             seconds=result.seconds_per_epoch)  # fmt: skip


if __name__ == "__main__":
    try:
        _child(sys.argv[1], sys.argv[2])
    except BadInputError as err:
        sys.exit(f"{err}")
