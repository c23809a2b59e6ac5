"""Helpers shared by the benchmarks: machine record, JSON-line results, analytic phantoms.

Benchmarks print tomolive's figure beside peers measured in the same run and append one
JSON line per run to ``bench/results/<name>.jsonl``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import socket
from importlib import metadata
from pathlib import Path

import numpy as np

from tomolive.engine.provenance import git_commit
from tomolive.sim import phantoms

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions(*names: str) -> dict[str, str | None]:
    """Installed distribution versions (None when absent)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine_info(*packages: str) -> dict:
    """Host, CPU, cores, load, Python and package versions, for the results record."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {
        "host": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cores": cores,
        "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions("tomolive", "numpy", "scipy", *packages),
        "git_commit": git_commit(),
    }


def append_result(name: str, record: dict) -> Path:
    """Append ``record`` (plus a UTC timestamp) as one JSON line to results/<name>.jsonl."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.jsonl"
    record = {"time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), **record}
    with path.open("a") as fh:
        fh.write(json.dumps(record, sort_keys=False) + "\n")
    return path


def shepp_logan_ellipses(n: int, mu: float = 2.0) -> list[tuple[float, ...]]:
    """Shepp-Logan ellipses for an n-wide detector; ``mu`` is the outer ellipse's
    attenuation in units of 1 / n per pixel (the thickest ray is ~1.7 attenuation
    lengths whatever n is)."""
    return phantoms.shepp_logan_ellipses(n, mu / n)


def ellipse_image(ellipses, n: int, x_first: float, y_first: float, y_step: float = 1.0, k: int = 4) -> np.ndarray:
    """The phantom averaged over each pixel (k x k samples) on a library's output grid.

    Pixel [i, j] is centred at ``x = x_first + j``, ``y = y_first + y_step * i`` (pixels,
    origin on the rotation axis). tomolive: ``x_first = y_first = -(n - 1) / 2``.
    """
    out = np.zeros((n, n))
    sub = (np.arange(k) + 0.5) / k - 0.5
    xs = (x_first + np.arange(n)[:, None] + sub[None, :]).ravel()
    block = max(1, 2**21 // (n * k * k))
    for i0 in range(0, n, block):
        i1 = min(n, i0 + block)
        ys = (y_first + y_step * (np.arange(i0, i1)[:, None] + sub[None, :])).ravel()
        x, y = np.meshgrid(xs, ys)
        img = np.zeros_like(x)
        for rho, a, b, x0, y0, phi in ellipses:
            xr = (x - x0) * np.cos(phi) + (y - y0) * np.sin(phi)
            yr = -(x - x0) * np.sin(phi) + (y - y0) * np.cos(phi)
            img += rho * ((xr / a) ** 2 + (yr / b) ** 2 <= 1.0)
        out[i0:i1] = img.reshape(i1 - i0, k, n, k).mean(axis=(1, 3))
    return out


def psnr_disc(rec: np.ndarray, ref: np.ndarray) -> float:
    """PSNR (dB) inside the inscribed disc (radius n/2 - 1); peak = the reference's range."""
    n = ref.shape[-1]
    c = np.arange(n) - (n - 1) / 2.0
    mask = (c[None, :] ** 2 + c[:, None] ** 2) <= (n / 2.0 - 1.0) ** 2
    mse = float(np.mean((np.asarray(rec, dtype=np.float64)[mask] - ref[mask]) ** 2))
    return float(10.0 * np.log10((ref.max() - ref.min()) ** 2 / mse))
