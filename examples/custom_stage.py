"""Your own processing stage after tomolive's, registered as an entry point; and result events.

    python examples/custom_stage.py --uri http://127.0.0.1:8000 --api-key KEY

A stage is a plain function on a block of reconstructed slices (numpy in, numpy or numbers
out, no I/O; see ``tomolive.stages``). Two are defined here: ``solid_mask`` writes a new
array ``processed/<uid>/solid_mask``; ``solid_fraction`` adds numbers to the scan's
searchable metadata (``metrics.solid_fraction``). In your own package, declare them in
``pyproject.toml`` and ``pip install`` it (on the machine running the pipeline and on the
Dask workers)::

    [project.entry-points."tomolive.stages"]
    solid_mask = "my_package.stages:solid_mask"
    solid_fraction = "my_package.stages:solid_fraction"

This script is not installed, so it writes itself and that declaration as a throwaway
distribution into a temp dir (what ``pip install`` would leave in site-packages) and adds
the dir to this process's and the Dask workers' paths (``site.addsitedir``: the workers
must see this machine's files, as a LocalCluster's do). It also subscribes a callback to
the pipeline's processed-results events. The URI and key may also come from TOMOLIVE_TILED_URI and
TOMOLIVE_API_KEY.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import tempfile
from pathlib import Path
from site import addsitedir

import numpy as np
from scipy.ndimage import uniform_filter

from tomolive.stages import BlockStage, available_stages

ENTRY_POINTS = {"solid_mask": "custom_stage:solid_mask", "solid_fraction": "custom_stage:solid_fraction"}


def _solid_mask(block: np.ndarray, *, level: float) -> np.ndarray:
    """1 where the 3x3x3 mean attenuation is above ``level`` (solid), else 0."""
    return (uniform_filter(block, size=3, mode="nearest") > level).astype(np.uint8)


def _solid_fraction(block: np.ndarray, *, level: float) -> dict[str, float]:
    return {"solid": float((block > level).mean()), "mean_attenuation": float(block.mean())}


solid_mask = BlockStage(_solid_mask, dtype="uint8", overlap=1)  # the 3x3x3 filter needs a slice each side
solid_fraction = BlockStage(_solid_fraction, output="metrics")


def install_entry_points(site: Path) -> None:
    """What ``pip install`` of a package declaring ``ENTRY_POINTS`` leaves behind (this example only)."""
    shutil.copy(__file__, site / "custom_stage.py")
    info = site / "tomolive_example_stages-1.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tomolive-example-stages\nVersion: 1.0\n")
    lines = [f"{name} = {value}" for name, value in ENTRY_POINTS.items()]
    (info / "entry_points.txt").write_text("[tomolive.stages]\n" + "\n".join(lines) + "\n")
    addsitedir(str(site))
    importlib.invalidate_caches()


def report(kind: str, payload: dict) -> None:
    """A processed-results subscriber: runs on tomolive's processing thread, not the RunEngine's."""
    if kind == "qc_alert":
        print(f"QC alert for {payload['uid']}: {payload['alert']}")
    else:
        print(f"{kind}: {payload['uri']} stages {payload['stages']} metrics {payload['metrics']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uri", default=os.environ.get("TOMOLIVE_TILED_URI", "http://127.0.0.1:8000"))
    parser.add_argument("--api-key", default=os.environ.get("TOMOLIVE_API_KEY"))
    parser.add_argument("--dask", help="a Dask scheduler address (default: a LocalCluster)")
    parser.add_argument("--size", type=int, default=64, help="detector width = slice size (pixels)")
    args = parser.parse_args()

    from bluesky import RunEngine

    from tomolive.callbacks import TomoPipeline
    from tomolive.plans import tomo_scan
    from tomolive.sim import make_foam, make_sim_beamline
    from tomolive.techniques.tomo import PipelineParams

    with tempfile.TemporaryDirectory(prefix="tomolive-example-stages-") as site:
        installed = set(ENTRY_POINTS) <= set(available_stages())
        if not installed:
            install_entry_points(Path(site))
        bl = make_sim_beamline(make_foam((args.size // 4, args.size, args.size), seed=2), photons=5000)
        level = bl.phantom.mu_solid / 2  # attenuation per pixel halfway between pores (0) and solid
        params = PipelineParams(
            extra_stages=tuple(ENTRY_POINTS),
            stage_params={"solid_mask": {"level": level}, "solid_fraction": {"level": level}},
        )
        with TomoPipeline.from_uri(
            args.uri, api_key=args.api_key, dask=args.dask, params=params, progress=False
        ) as pipe:
            if not installed:
                pipe.engine.dask_client().run(addsitedir, site)  # the workers load the stages by name too
            pipe.subscribe(report, kinds=("complete", "failed", "qc_alert"))
            RE = RunEngine()
            RE.subscribe(pipe)
            (uid,) = RE(
                tomo_scan(
                    bl.detector,
                    bl.rotation,
                    np.linspace(0, 180, 90, endpoint=False),
                    3,
                    3,
                    shutter=bl.shutter,
                    sample_x=bl.sample_x,
                    sample_out=bl.sample_out,
                    md={"sample": "foam-stage"},
                )
            )
            outcome = pipe.wait(uid)
            scan = pipe.client["processed"][uid]
            mask = scan["solid_mask"].read()
            metrics = scan.metadata["metrics"]["solid_fraction"]
    print(f"solid_mask: {mask.shape} {mask.dtype}, solid fraction {mask.mean():.3f}")
    print(f"solid_fraction: solid {metrics['solid']:.3f}, mean attenuation {metrics['mean_attenuation']:.4f}")
    print(f"tomolive: scan {uid} {outcome.status}")


if __name__ == "__main__":
    main()
