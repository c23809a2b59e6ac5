"""Ptychography at scale, end to end: RunEngine -> TomoPipeline -> Dask -> Tiled, seconds per stage.

The two scale cases of issue 27, each a real Bluesky run of the simulated beamline into a
pipeline with a local Dask cluster and a Tiled server on loopback:

- ``patterns``: one view of 1,800 far-field patterns of 128^2 (zone-plate probe, 32 px
  aperture, Fermat spiral at ~65 % overlap, 1e6 photons each) over a 672^2 camera/astronaut
  object. Reported: seconds per stage, s/epoch, phase NRMSE against the truth inside the
  scanned area. Peer in the same run: a plain numpy ePIE (bench/ptycho.py's) on the same
  patterns, s/epoch over ``--peer-epochs``; Tike's published ~1 s/iteration on an A100 is
  quoted as published, not measured.
- ``tomo``: a 30-view ptycho-tomography series of a 64^3 phase foam (12 px of air around it,
  16^2 probe, jittered raster of ~680 positions per view). Reported: seconds per stage and the
  3D phase volume's PSNR against the phantom after registration. Peer in the same run: the same
  3D step (:func:`assemble_phase_volume`) on the exact per-view objects, the ceiling.

    PYTHONPATH=src:bench python bench/ptycho_scale.py                 # both cases
    PYTHONPATH=src:bench python bench/ptycho_scale.py --case tomo --epochs 20
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from _common import append_result, machine_info
from bluesky import RunEngine
from dask.distributed import Client
from scan import free_port
from skimage import data
from skimage.transform import resize
from tiled.client import from_uri

from ptycho import numpy_epie
from tomolive.callbacks import TomoPipeline
from tomolive.config import Settings
from tomolive.engine.cluster import local_cluster
from tomolive.plans.ptycho import ptycho_scan, ptycho_tomo_scan
from tomolive.qc import circle_mask, psnr
from tomolive.server import running_server
from tomolive.sim.ptycho_devices import ComplexSample, make_sim_ptycho
from tomolive.sim.ptycho_tomo import phase_foam
from tomolive.techniques.ptycho import metrics, physics
from tomolive.techniques.ptycho.params import PtychoParams
from tomolive.techniques.ptycho.technique import PtychoTechnique
from tomolive.techniques.ptycho.tomo3d import assemble_phase_volume, register_volume

TIKE_A100_S_PER_ITERATION = 1.0  # published (issue 27): 1.8K patterns of 128^2 on one A100


@contextlib.contextmanager
def pipeline(params: PtychoParams, workers: int, scratch: Path) -> Iterator[tuple[TomoPipeline, str, str]]:
    """A ptychography pipeline on a fresh Tiled server and a local Dask cluster: (pipe, uri, key)."""
    settings = Settings(data_dir=scratch / "tiled", port=free_port())
    with (
        running_server(settings) as server,
        local_cluster(workers) as cluster,  # tomolive's: its workers' allocator settings matter (3x here)
        Client(cluster) as client,
        TomoPipeline.from_uri(
            server.uri,
            api_key=server.api_key,
            techniques=[PtychoTechnique(params)],
            dask=client,
            scratch_dir=scratch,
            outbox_dir=scratch / "outbox",
            progress=False,
        ) as pipe,
    ):
        yield pipe, server.uri, server.api_key or ""


def run_plan(pipe: TomoPipeline, plan) -> tuple[str, float]:
    """Run ``plan`` into ``pipe``; its uid and the seconds from the first document to the result."""
    start = time.perf_counter()
    RE = RunEngine()
    RE.subscribe(pipe)
    (uid,) = RE(plan)
    outcome = pipe.wait(uid, timeout=3600)
    if outcome.status != "complete":
        raise SystemExit(f"run {uid} ended {outcome.status}: {outcome.reason}")
    return uid, time.perf_counter() - start


def patterns_case(args: argparse.Namespace, scratch: Path) -> dict:
    n, aperture, n_positions = 128, 32, 1800
    step = 0.35 * aperture
    radius = step / np.sqrt(np.pi) * np.sqrt(n_positions - 1)
    side = int(2 * np.ceil(radius) + n + 8)
    amplitude = 0.7 + 0.3 * resize(data.camera() / 255.0, (side, side), anti_aliasing=True)
    phase = resize(data.astronaut()[..., 0].astype(float), (side, side), anti_aliasing=True)
    sample = ComplexSample.from_images(amplitude, phase, phase_range_rad=np.pi)
    probe = physics.make_probe(n, aperture_px=aperture, defocus_phase_rad=3.0)
    line = make_sim_ptycho(sample, probe, photons_per_pattern=1e6, seed=4)
    params = PtychoParams(epochs=args.epochs, batch_size=16, threads_per_task=1)
    guess = {"kind": "aperture", "aperture_px": float(aperture)}
    plan = ptycho_scan(
        line.detector, line.y, line.x, energy_kev=line.energy_kev, detector_distance_m=line.detector_distance_m,
        detector_pixel_um=line.detector_pixel_um, object_shape=(side, side), probe=guess, pattern="fermat",
        n_positions=n_positions, step_um=step * line.pixel_um, md={"sample": "ptycho-1800"},
    )  # fmt: skip
    with pipeline(params, args.workers, scratch) as (pipe, uri, key):
        uid, wall = run_plan(pipe, plan)
        node = from_uri(uri, api_key=key)["processed"][uid]
        md = node.metadata
        obj = node["object_amplitude"].read() * np.exp(1j * node["object_phase"].read())  # a plain scan: no view axis
        positions = node["positions"].read()
    truth = sample.at(0.0)
    mask = metrics.illuminated_mask(truth.shape, positions, probe)
    ours = {
        "wall_s": round(wall, 2),
        "seconds_per_stage": md["provenance"]["seconds_per_stage"],
        "s_per_epoch": md["ptycho_recon"]["seconds_per_epoch"],
        "phase_nrmse": round(float(metrics.phase_nrmse(obj, truth, mask)), 4),
    }
    patterns = physics.simulate_patterns(truth, probe, positions, photons_per_pattern=1e6, rng=4)
    amp_guess = physics.make_probe(n, aperture_px=aperture, kind="aperture")
    amp_guess *= np.float32(np.sqrt(patterns.sum(axis=(1, 2)).mean() / (n * n * np.sum(np.abs(amp_guess) ** 2))))
    _, peer_s = numpy_epie(patterns, positions, amp_guess, truth.shape, args.peer_epochs)
    peer = {
        "numpy_epie_s_per_epoch": round(peer_s, 3),
        "tike_a100_published_s_per_iteration": TIKE_A100_S_PER_ITERATION,
    }
    print(
        f"patterns: 1,800 x 128^2 over {side}^2: {wall:.1f} s end to end, stages {ours['seconds_per_stage']}, "
        f"{ours['s_per_epoch']} s/epoch ({args.epochs} epochs), phase NRMSE {ours['phase_nrmse']}; numpy ePIE "
        f"{peer_s:.2f} s/epoch ({peer_s / ours['s_per_epoch']:.1f}x ours); Tike A100 published ~1 s/iteration"
    )
    return {"case": {"patterns": n_positions, "pattern_px": n, "object_px": side, "epochs": args.epochs},
            "ours": ours, "peer": peer}  # fmt: skip


def padded_sample(phantom_n: int, pad: int) -> tuple[ComplexSample, np.ndarray]:
    """A phase foam's views with ``pad`` px of air around them, and its 3D phase (rad/voxel), padded alike."""
    phantom = phase_foam(phantom_n)
    inner = ComplexSample.from_phantom(phantom, phase_range_rad=2.0)
    side = phantom_n + 2 * pad
    sample = ComplexSample(lambda angle: np.pad(inner.at(angle), pad, constant_values=1.0), (side, side))
    assert inner.phase_per_unit is not None
    truth = np.pad(phantom.attenuation() * inner.phase_per_unit, pad).astype(np.float32)
    return sample, truth


def volume_psnr(volume: np.ndarray, truth: np.ndarray) -> float:
    """PSNR (dB) inside the cylinder of the field of view, after registration and a sign/scale fit."""
    mask = np.broadcast_to(circle_mask(truth.shape[1:], 0.95), truth.shape)
    return float(psnr(register_volume(volume, truth), truth, mask=mask, fit=True))


def tomo_case(args: argparse.Namespace, scratch: Path) -> dict:
    n_views, pad = 30, 12
    sample, truth = padded_sample(64, pad)
    side = sample.shape[0]
    probe = physics.make_probe(16, aperture_px=8, defocus_phase_rad=1.0)
    line = make_sim_ptycho(sample, probe, photons_per_pattern=1e6, seed=6)
    reach, step = side / 2 - 9, 2.8
    axis = np.arange(-reach, reach + 1e-9, step)
    grid = np.stack(np.meshgrid(axis, axis, indexing="ij"), axis=-1).reshape(-1, 2)
    jitter = np.random.default_rng(0).uniform(-0.25 * step, 0.25 * step, grid.shape)
    positions_um = np.clip(grid + jitter, -reach, reach) * line.pixel_um
    angles = np.linspace(0.0, 180.0, n_views, endpoint=False)
    params = PtychoParams(epochs=args.epochs, batch_size=16, threads_per_task=1)
    plan = ptycho_tomo_scan(
        line.detector, line.y, line.x, line.rotation, angles, energy_kev=line.energy_kev,
        detector_distance_m=line.detector_distance_m, detector_pixel_um=line.detector_pixel_um,
        object_shape=(side, side), probe={"kind": "aperture", "aperture_px": 8.0}, positions_um=positions_um,
        md={"sample": "ptycho-tomo-30"},
    )  # fmt: skip
    with pipeline(params, args.workers, scratch) as (pipe, uri, key):
        uid, wall = run_plan(pipe, plan)
        node = from_uri(uri, api_key=key)["processed"][uid]
        md = node.metadata
        volume = node["phase_volume"].read()
    start = time.perf_counter()
    exact, _ = assemble_phase_volume(np.stack([sample.at(a) for a in angles]), angles)
    ceiling_s = time.perf_counter() - start
    ours = {
        "wall_s": round(wall, 2),
        "seconds_per_stage": md["provenance"]["seconds_per_stage"],
        "psnr_db": round(volume_psnr(volume, truth), 2),
        "ptycho_tomo": {k: md["ptycho_tomo"].get(k) for k in ("center", "seconds") if k in md["ptycho_tomo"]},
    }
    peer = {"exact_views_psnr_db": round(volume_psnr(exact, truth), 2), "exact_views_3d_s": round(ceiling_s, 2)}
    print(
        f"tomo: {n_views} views x {len(positions_um)} positions, 64^3 foam (+{pad} px air): {wall:.1f} s end to end, "
        f"stages {ours['seconds_per_stage']}, 3D phase PSNR {ours['psnr_db']} dB; the same 3D step on exact "
        f"views {peer['exact_views_psnr_db']} dB"
    )
    return {"case": {"views": n_views, "positions_per_view": len(positions_um), "phantom": 64, "pad": pad,
                     "epochs": args.epochs}, "ours": ours, "peer": peer}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=("patterns", "tomo", "both"), default="both")
    parser.add_argument("--epochs", type=int, default=30, help="solver epochs per view")
    parser.add_argument("--peer-epochs", type=int, default=3, help="numpy ePIE epochs timed on the 1,800 patterns")
    parser.add_argument("--workers", type=int, default=2, help="Dask worker processes (1 thread each)")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, case in (("patterns", patterns_case), ("tomo", tomo_case)):
            if args.case in (name, "both"):
                results[name] = case(args, Path(tmp) / name)
    machine = machine_info("torch", "dask", "tiled", "bluesky")
    machine["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    print("appended to", append_result("ptycho_scale", {"bench": "ptycho_scale", **results, "machine": machine}))


if __name__ == "__main__":
    main()
