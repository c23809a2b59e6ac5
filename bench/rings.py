"""Ring severity of simulated scans with and without stripe removal, clean and with defective pixels.

Each scan is taken by the simulated detector (tomolive.sim.devices: beam profile with
per-pixel gain, dark current, read and Poisson noise; darks and flats reduced by median, as
the pipeline does), normalised, optionally stripe-filtered, reconstructed at the true centre
and scored with tomolive.qc.ring_severity, the number the ring alert compares with
QCThresholds.max_ring_severity. "Defects" are pixels whose gain on the sample-attenuated
beam differs from their gain in the flats (SimTomoDetector ring_defects/ring_strength): the
flats cannot correct them, as real rings. The scans are those of the README, the demo, the
examples and the tests. Appends a JSON line to bench/results/rings.jsonl.

    PYTHONPATH=src python bench/rings.py            # every scan
    PYTHONPATH=src python bench/rings.py --quick    # the small ones only
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from _common import append_result, machine_info

from tomolive.preprocess import normalize, reduce_frames, remove_stripes
from tomolive.qc import QCThresholds, ring_severity
from tomolive.recon import reconstruct
from tomolive.sim.devices import make_sim_beamline
from tomolive.sim.phantoms import make_foam

SCANS = {  # name: (foam shape, foam seed, photons, angles, darks/flats)
    "tests (16x96^2, noise-free, 120 angles)": ((16, 96, 96), 11, None, 120, 3),
    "examples (32x128^2, 5000 photons, 90 angles)": ((32, 128, 128), 2, 5000.0, 90, 10),
    "README (64x256^2, 5000 photons, 360 angles)": ((64, 256, 256), 1, 5000.0, 360, 10),
    "demo (64x256^2, 20000 photons, 360 angles)": ((64, 256, 256), 7, 20000.0, 360, 10),
}
QUICK = list(SCANS)[:2]
DEFECTS = {  # name: (fraction of pixels, gain error, columns each spans)
    "clean": (0.0, 0.0, 1),
    "defects 2% x 2%": (0.02, 0.02, 1),
    "defects 0.5% x 5%": (0.005, 0.05, 1),
    "defects 1% x 10%": (0.01, 0.1, 1),
    "wide defects 0.1% x 5% x 8 px": (0.001, 0.05, 8),
}


def line_integrals(shape, seed, photons, n_angles, n_cal, ring_defects, ring_strength, ring_width) -> np.ndarray:
    """The scan's projections after flat/dark correction and -log, as the pipeline makes them."""
    foam = make_foam(shape, seed=seed)
    b = make_sim_beamline(
        foam, photons=photons, seed=seed, ring_defects=ring_defects, ring_strength=ring_strength, ring_width=ring_width
    )
    b.detector.stage()

    def take(n, shutter=1, x=0.0):
        b.shutter.put(shutter)
        b.sample_x.set(x)
        frames = []
        for _ in range(n):
            b.detector.trigger()
            frames.append(b.detector.image.get().copy())
        return np.stack(frames)

    dark = reduce_frames(take(n_cal, shutter=0))
    flat = reduce_frames(take(n_cal, x=b.sample_out))
    out = []
    for angle in np.linspace(0, 180, n_angles, endpoint=False):
        b.rotation.set(angle)
        out.append(normalize(take(1)[0], flat, dark))
    return np.stack(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the small scans only")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    info = machine_info()
    limit = QCThresholds().max_ring_severity
    print(f"{info['cpu_model']}, {info['cores']} cores, load {info['loadavg_1m']}; alert above {limit}")
    results = []
    for name in QUICK if args.quick else SCANS:
        shape, seed, photons, n_angles, n_cal = SCANS[name]
        angles = np.deg2rad(np.linspace(0, 180, n_angles, endpoint=False))
        center = (shape[2] - 1) / 2
        for defect, (fraction, strength, width) in DEFECTS.items():
            proj = line_integrals(shape, seed, photons, n_angles, n_cal, fraction, strength, width)
            for method in ("none", "mean", "sort", "combined"):
                cleaned = proj if method == "none" else remove_stripes(proj, method)
                severity = ring_severity(reconstruct(cleaned, angles, center=center))
                row = {
                    "scan": name,
                    "pixels": defect,
                    "stripe_method": method,
                    "ring_severity": round(severity, 5),
                    "alert": severity > limit,
                }
                results.append(row)
                print(
                    f"  {name:<46} {defect:<30} {method:<9} severity {severity:.5f}"
                    f"{' ALERT' if severity > limit else ''}",
                    flush=True,
                )
    if not args.no_save:
        print("appended to", append_result("rings", {"bench": "rings", "machine": info, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
