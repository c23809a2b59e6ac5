"""Reconstruction speed and accuracy: tomolive's default backend beside its peers.

Analytic Shepp-Logan (exact line integrals of ellipses), 1500 angles over 180 degrees,
1024^2 and 2048^2 slices. Also times each stripe-removal method on the same block, one
thread as in a pipeline block task, as a fraction of the one-thread reconstruction. Every method gets exact data in its own centre convention and is
scored against the phantom averaged over the pixels of its own output grid, inside the
inscribed disc. Prints slices/s, PSNR and tomolive/peer ratios; appends a JSON line to
bench/results/recon.jsonl.

tomolive's default backend is timed best-of-3 on 16 (1024^2) or 8 (2048^2) slices, after
a first call that plans FFTW (reported as a note); the peers, 50-400x slower, once on 1-2
slices with one thread (algotom's fbp with numba limited to one thread, as its threaded
back-projection races). Check the recorded load average: the machine may be shared.

    PYTHONPATH=src python bench/recon.py            # 16 (1024) / 8 (2048) tomolive slices
    PYTHONPATH=src python bench/recon.py --quick    # fewer slices, 1024 only
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings

import numpy as np
from _common import append_result, ellipse_image, machine_info, psnr_disc, shepp_logan_ellipses

from tomolive.preprocess import remove_stripes
from tomolive.recon import available_methods, reconstruct
from tomolive.sim.phantoms import project_ellipses


def _best_of(k, fn, n_slices):
    """Best of k timed runs (tomolive's calls take ~1 s: repeat to see through other load)."""
    runs = [_timed(fn, n_slices) for _ in range(k)]
    out, best = min(runs, key=lambda r: r[1]["seconds"])
    best = dict(best, all_seconds=[r[1]["seconds"] for r in runs])
    return out, best


def _timed(fn, n_slices):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return out, {
        "slices": n_slices,
        "seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 3),
        "slices_per_s": round(n_slices / wall, 3),
    }


@contextlib.contextmanager
def _numba_threads(n):
    import numba

    old = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(old)


def run_size(n, n_angles, rows, peer_rows, with_fbp, cores):
    angles = np.linspace(0.0, np.pi, n_angles, endpoint=False)
    ell = shepp_logan_ellipses(n)
    mid, half = (n - 1) / 2.0, float(n // 2)
    sino = project_ellipses(ell, angles, n, mid).astype(np.float32)
    proj = np.ascontiguousarray(np.repeat(sino[:, None, :], rows, axis=1))
    truth = {
        "ours": ellipse_image(ell, n, -mid, -mid),
        "flip": ellipse_image(ell, n, -mid, mid, -1.0),
        "half": ellipse_image(ell, n, -half, half, -1.0),
    }
    results = []

    def record(method, threads, out, timing, grid, note=""):
        row = {
            "size": n,
            "angles": n_angles,
            "method": method,
            "threads": threads,
            **timing,
            "psnr_db": round(psnr_disc(out, truth[grid]), 2),
        }
        if note:
            row["note"] = note
        results.append(row)
        print(
            f"  {method:<28} {threads:>3} thr  {timing['slices_per_s']:>8.3f} slices/s"
            f"  {row['psnr_db']:6.2f} dB  ({timing['slices']} slices, {timing['seconds']:.1f} s)",
            flush=True,
        )

    print(f"\n{n}^2 x {n_angles} angles", flush=True)
    # tomolive default: first call plans FFTW (once per process and size), then timed.
    method = available_methods()[0]
    _, cold = _timed(lambda: reconstruct(proj, angles, mid), rows)
    out, t = _best_of(3, lambda: reconstruct(proj, angles, mid), rows)
    record(
        f"tomolive {method}",
        cores,
        out[-1],
        t,
        "ours",
        note=f"best of 3; first call incl. FFTW planning: {cold['seconds']} s",
    )
    reconstruct(proj[:, :2], angles, mid, ncore=1, fft_plan="measure")
    out, t = _best_of(3, lambda: reconstruct(proj, angles, mid, ncore=1), rows)
    record(f"tomolive {method}", 1, out[-1], t, "ours", note="best of 3")
    _time_stripes(proj, rows, t, results)
    if with_fbp:
        p1 = proj[:, :1]
        out, t = _timed(lambda: reconstruct(p1, angles, mid, method="fbp"), 1)
        record("tomolive fbp (torch)", cores, out[0], t, "ours")
    pk = proj[:, :peer_rows]
    _time_algotom(pk, angles, mid, peer_rows, record)
    if "astra" in available_methods():
        out, t = _timed(lambda: reconstruct(pk, angles, mid, method="astra"), peer_rows)
        record("astra FBP (CPU, linear)", 1, out[-1], t, "ours")
    else:
        print("  astra-toolbox not installed: skipped")
    _time_skimage(ell, angles, n, peer_rows, record)
    return results


def _time_stripes(proj, rows, recon_1_thread, results):
    """Each stripe-removal method on the block just reconstructed, best of 3, one thread, as a
    pipeline block task runs it before reconstructing (docs/measurements/rings.md)."""
    for method in ("mean", "sort", "combined"):
        _, t = _best_of(3, lambda m=method: remove_stripes(proj, m), rows)
        ratio = t["seconds"] / recon_1_thread["seconds"]
        results.append(
            {
                "size": proj.shape[2],
                "angles": proj.shape[0],
                "method": f"stripes {method}",
                "threads": 1,
                **t,
                "fraction_of_recon_1_thread": round(ratio, 3),
            }
        )
        print(
            f"  {'stripes ' + method:<28} {1:>3} thr  {t['slices_per_s']:>8.3f} slices/s"
            f"  = {100 * ratio:.0f} % of the 1-thread reconstruction of the same block",
            flush=True,
        )


def _time_algotom(pk, angles, mid, peer_rows, record):
    """algotom's FBP and direct Fourier inversion on ``pk``, single-threaded, when installed."""
    try:
        from algotom.rec import reconstruction as arec
    except ImportError:
        print("  algotom not installed: skipped")
    else:
        with _numba_threads(1):
            arec.fbp_reconstruction(
                pk[:, :1, :64].copy(),
                31.5,
                angles=angles,
                ratio=None,
                filter_name=None,
                apply_log=False,
                gpu=False,
                ncore=1,
            )
            out, t = _timed(
                lambda: arec.fbp_reconstruction(
                    pk.copy(), mid, angles=angles, ratio=None, filter_name=None, apply_log=False, gpu=False, ncore=1
                ),
                peer_rows,
            )
        record(
            "algotom fbp",
            1,
            out[:, -1] * (len(angles) - 1) / len(angles),
            t,
            "flip",
            note="scaled by (N-1)/N: algotom assumes an inclusive 0-180 angle list",
        )
        out, t = _timed(
            lambda: arec.dfi_reconstruction(
                pk.copy(), mid, angles=angles, ratio=None, filter_name=None, apply_log=False, ncore=1
            ),
            peer_rows,
        )
        record("algotom dfi", 1, out[:, -1], t, "half")


def _time_skimage(ell, angles, n, peer_rows, record):
    """scikit-image's iradon (axis at n // 2) on ``peer_rows`` slices."""
    from skimage.transform import iradon

    sk_sino = project_ellipses(ell, angles, n, float(n // 2)).T.astype(np.float32)
    out, t = _timed(
        lambda: [
            iradon(sk_sino, np.degrees(angles), filter_name="ramp", circle=True, output_size=n)
            for _ in range(peer_rows)
        ],
        peer_rows,
    )
    record("skimage iradon", 1, out[-1], t, "half")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer slices, 1024 only")
    ap.add_argument("--sizes", type=int, nargs="+", default=None)
    ap.add_argument("--angles", type=int, default=1500)
    ap.add_argument("--with-fbp", action="store_true", help="also time tomolive's torch FBP on one slice (slow on CPU)")
    ap.add_argument("--no-save", action="store_true", help="do not append to bench/results")
    args = ap.parse_args(argv)
    sizes = args.sizes or ([1024] if args.quick else [1024, 2048])
    info = machine_info("torch", "finufft", "algotom", "astra-toolbox", "scikit-image", "numba")
    cores = info["cores"]
    print(f"{info['cpu_model']}, {cores} cores, load {info['loadavg_1m']}")
    results = []
    warnings.simplefilter("ignore")  # peers warn about GPUs and undersampling; not ours
    for n in sizes:
        rows = (4 if n <= 1024 else 2) if args.quick else (16 if n <= 1024 else 8)
        peer_rows = 1 if (args.quick or n > 1024) else 2
        results += run_size(n, args.angles, rows, peer_rows, args.with_fbp, cores)
    ratios = {}
    print("\nratios (tomolive default, all cores / peer):")
    for n in sizes:
        ours = next(
            r
            for r in results
            if r["size"] == n
            and r["method"].startswith("tomolive")
            and r["threads"] == cores
            and "fbp" not in r["method"]
        )
        one = next(r for r in results if r["size"] == n and r["method"] == ours["method"] and r["threads"] == 1)
        for r in results:
            if r["size"] != n or r["method"].startswith(("tomolive", "stripes")):
                continue
            key = f"{n}:{r['method']}"
            ratios[key] = {
                "speed": round(ours["slices_per_s"] / r["slices_per_s"], 1),
                "speed_1_thread": round(one["slices_per_s"] / r["slices_per_s"], 1),
                "psnr_db_diff": round(ours["psnr_db"] - r["psnr_db"], 2),
            }
            print(
                f"  {n}^2  vs {r['method']:<26} x{ratios[key]['speed']:>7.1f} "
                f"(1 thread x{ratios[key]['speed_1_thread']:.1f})  "
                f"PSNR {ratios[key]['psnr_db_diff']:+.2f} dB"
            )
    info["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    if not args.no_save:
        path = append_result(
            "recon", {"bench": "recon", "quick": args.quick, "machine": info, "results": results, "ratios": ratios}
        )
        print(f"\nappended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
