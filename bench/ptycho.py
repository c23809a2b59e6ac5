"""Ptychography speed and accuracy: tomolive's batched torch solver beside its peers, one run, same data.

The case of issue 27: 256^2 complex object (amplitude 0.7-1.0 from skimage's camera, phase
from the astronaut's red channel spanning ``--phase-range`` rad), a 64^2 zone-plate-like probe
(22 px aperture, central stop, 3 rad defocus curvature), ~420 Fermat positions at ~65 % linear
overlap, 1e6 photons per pattern (Poisson), flat-object start and an aperture-only probe guess
(scaled to the data). Score: phase NRMSE after offset + linear-ramp removal inside the scanned
area the probe illuminates (metrics.illuminated_mask: within the true probe's radius of a position),
over the true phase range there.

Ours runs its CPU FFTs through FFTW where pyfftw imports (fourier.py); one more run of ours
(ePIE batch 32) with torch's own FFT shows how much of the lead is the FFT library.
Peers: a plain numpy ePIE loop (complex64, one position at a time, the same sub-pixel probe
shift), always; Pty-chi (``ptychi``) ePIE batch 16 and LSQML batch 64 when it imports (its
torchvision needs the CUDA torch: on a CPU-only torch it is skipped with the reason). Our
figure and Pty-chi's are medians over ``--repeats`` runs (ours: s/epoch excludes the per-epoch NRMSE probe).
The machine may be shared: check the recorded load average.

    PYTHONPATH=src python bench/ptycho.py                        # 100 epochs, 2 threads, CPU
    PYTHONPATH=src python bench/ptycho.py --quick                # 30 epochs, 1 repeat
    PYTHONPATH=src python bench/ptycho.py --device cuda --threads 4
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from skimage import data
from skimage.transform import resize

from tomolive.techniques.ptycho import fourier, metrics, physics
from tomolive.techniques.ptycho.solver import reconstruct

try:  # the house's machine record; a GPU box without tiled/bluesky gets a reduced one
    from _common import append_result, machine_info
except ImportError:
    import datetime as _dt
    import json
    import platform
    from pathlib import Path

    def machine_info(*packages: str) -> dict:
        """Reduced machine record (no tomolive.engine import): host, CPU count, load, versions."""
        from importlib import metadata

        vers = {}
        for name in ("numpy", "scipy", *packages):
            try:
                vers[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                vers[name] = None
        return {"host": platform.node(), "cpu_model": platform.processor(), "cores": len(os.sched_getaffinity(0)),
                "loadavg_1m": round(os.getloadavg()[0], 2), "platform": platform.platform(),
                "python": platform.python_version(), "versions": vers, "note": "reduced record (no _common)"}  # fmt: skip

    def append_result(name: str, record: dict) -> Path:
        path = Path(__file__).resolve().parent / "results" / f"{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), **record}
        with path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        return path


N, NP, APERTURE = 256, 64, 22


def build_case(
    phase_range: float, kind: str = "images", seed: int = 0, incoherent: float = 0.0, modes: int = 1
) -> dict:
    """Object, probe, positions, Poisson patterns and the scoring mask of the bench case.

    ``kind="images"``: amplitude from skimage's camera, phase from the astronaut's red channel
    (large uniform regions: much low-spatial-frequency phase). ``kind="texture"``: both from
    smoothed uniform noise (sigma 1.5 px; fine features only, as the tests use). ``incoherent``
    > 0 puts that share of the beam's power in a second mode (a partially coherent beam);
    ``modes`` is the number of probe modes the guess (and so every solver) has.
    """
    if kind == "images":
        amp = resize(data.camera().astype(np.float64), (N, N), anti_aliasing=True)
        phase = resize(data.astronaut()[..., 0].astype(np.float64), (N, N), anti_aliasing=True)
    else:
        rng = np.random.default_rng(seed + 1)
        amp = gaussian_filter(rng.random((N, N)), 1.5)
        amp -= amp.min()
        phase = gaussian_filter(rng.random((N, N)), 1.5)
    obj = physics.complex_object(0.7 + 0.3 * amp / amp.max(), phase, phase_range_rad=phase_range)
    positions = physics.fermat_positions(420, 8.1, centre=(N / 2, N / 2))
    probe = physics.make_probe(NP, aperture_px=APERTURE, defocus_phase_rad=3.0)
    beam = physics.add_probe_modes(probe, 2, fraction=incoherent) if incoherent > 0 else probe
    patterns = physics.simulate_patterns(obj, beam, positions, photons_per_pattern=1e6, rng=seed)
    guess = physics.make_probe(NP, aperture_px=APERTURE, kind="aperture")
    guess = physics.add_probe_modes(guess, modes) if modes > 1 else guess
    guess = guess * np.float32(np.sqrt(patterns.sum(axis=(1, 2)).mean() / (NP * NP * np.sum(np.abs(guess) ** 2))))
    return {
        "obj": obj, "probe": probe, "positions": positions, "patterns": patterns, "guess": guess,
        "mask": metrics.illuminated_mask(obj.shape, positions, probe), "overlap": metrics.probe_overlap(positions, probe),
    }  # fmt: skip


def numpy_epie(patterns, positions, probe, shape, epochs, probe_each=None, seed=0):
    """Plain ePIE (alpha = beta = 1), one position at a time, numpy complex64; returns object and s/epoch."""
    n = probe.shape[-1]
    amp = np.sqrt(np.fft.ifftshift(patterns, axes=(-2, -1))).astype(np.float32)
    top, frac = physics.split_positions(positions, n, shape)
    ramps = physics.shift_ramps(frac, n)
    obj = np.ones(shape, np.complex64)
    prb = probe.astype(np.complex64).copy()
    rng = np.random.default_rng(seed)
    times = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        for j in rng.permutation(len(amp)):
            r, c = top[j]
            o = obj[r : r + n, c : c + n]  # a view: updated in place
            p = np.fft.ifft2(np.fft.fft2(prb) * ramps[j])
            psi = p * o
            spec = np.fft.fft2(psi)
            spec *= amp[j] / (np.abs(spec) + 1e-6)
            chi = np.fft.ifft2(spec) - psi
            dprb = np.conj(o) * chi / np.max(np.abs(o) ** 2)
            o += np.conj(p) * chi / np.max(np.abs(p) ** 2)
            prb += np.fft.ifft2(np.fft.fft2(dprb) * np.conj(ramps[j]))
        times.append(time.perf_counter() - t0)
        if probe_each is not None:
            probe_each(epoch, obj)
    return obj, float(np.median(times))


def _row(name, threads, seconds, nrmse, epochs, **extra):
    return {"method": name, "threads": threads, "epochs": epochs, "s_per_epoch": round(seconds, 4),
            "phase_nrmse": round(float(nrmse), 4), **extra}  # fmt: skip


def run_ours(case, method, batch, epochs, threads, device, repeats):
    """Median s/epoch over repeats; NRMSE per epoch tracked outside the timed sweeps."""
    runs = []
    for _ in range(repeats):
        curve: list[float] = []

        def track(epoch, res, curve=curve):
            curve.append(metrics.phase_nrmse(res.object, case["obj"], case["mask"]))

        res = reconstruct(
            case["patterns"], case["positions"], case["guess"], object_shape=(N, N), method=method,
            epochs=epochs, batch_size=batch, threads=threads, device=device, callback=track,
        )  # fmt: skip
        runs.append((res.seconds_per_epoch, curve))
    secs = [r[0] for r in runs]
    curve = runs[-1][1]
    reach = next((i + 1 for i, v in enumerate(curve) if v <= 0.03), None)
    return _row(f"tomolive {method} b{batch} ({device})", threads, float(np.median(secs)), curve[-1], epochs,
                all_s_per_epoch=[round(s, 4) for s in secs], epochs_to_0_03=reach,
                nrmse_every_10=[round(v, 4) for v in curve[9::10]])  # fmt: skip


def run_numpy(case, epochs):
    curve: list[float] = []
    obj, sec = numpy_epie(
        case["patterns"], case["positions"], case["guess"], (N, N), epochs,
        probe_each=lambda e, o: curve.append(metrics.phase_nrmse(o, case["obj"], case["mask"])) if e % 10 == 9 else None,
    )  # fmt: skip
    return _row("numpy ePIE b1", 1, sec, metrics.phase_nrmse(obj, case["obj"], case["mask"]), epochs,
                nrmse_every_10=[round(v, 4) for v in curve])  # fmt: skip


def run_ptychi(case, method, batch, epochs, device, threads, repeats):
    """Pty-chi ePIE / LSQML on the same data, through tomolive's optional backend: median s/epoch over repeats."""
    from tomolive.techniques.ptycho.ptychi_backend import reconstruct_ptychi, unavailable

    reason = unavailable()
    if reason is not None:
        return None, f"ptychi {method}: skipped, cannot import ({reason})"
    kwargs = {"object_shape": (N, N), "method": method, "epochs": epochs, "batch_size": batch, "threads": threads}
    runs = [
        reconstruct_ptychi(case["patterns"], case["positions"], case["guess"], device=device, **kwargs)
        for _ in range(repeats)
    ]
    secs = [r.seconds_per_epoch for r in runs]
    name = f"ptychi {'ePIE' if method == 'epie' else 'LSQML'} b{batch} ({device})"
    nrmse = metrics.phase_nrmse(runs[-1].object, case["obj"], case["mask"])
    return _row(name, threads, float(np.median(secs)), nrmse, epochs, all_s_per_epoch=[round(s, 4) for s in secs]), None


def ptychi_settings(args: argparse.Namespace) -> list[tuple[str, int, int]]:
    """(method, batch, threads) of every Pty-chi run asked for."""
    threads = [int(t) for t in args.ptychi_threads.split(",")] if args.ptychi_threads else [args.threads]
    batches = [int(b) for b in args.ptychi_batches.split(",")] if args.ptychi_batches else None
    return [(method, batch, t) for method, default in (("epie", 16), ("lsqml", 64))
            for batch in (batches or [default]) for t in threads]  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (ours and Pty-chi)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (ours and Pty-chi)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs (default 100, 30 with --quick)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats of each run (default 3, 1 with --quick)")
    ap.add_argument("--phase-range", type=float, default=np.pi, help="true phase range, rad")
    ap.add_argument("--object", default="images", choices=("images", "texture"), help="see build_case")
    ap.add_argument("--incoherent", type=float, default=0.0, help="power share of the beam's second mode (0: coherent)")
    ap.add_argument("--modes", type=int, default=1, help="probe modes reconstructed (numpy ePIE is single-mode: off)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-numpy", action="store_true", help="skip the numpy reference (it always runs otherwise)")
    ap.add_argument("--no-ptychi", action="store_true")
    ap.add_argument(
        "--ptychi-batches",
        default=None,
        help="comma-separated batch sizes tried for each Pty-chi method (default: ePIE 16, LSQML 64)",
    )
    ap.add_argument("--ptychi-threads", default=None, help="comma-separated thread counts tried (default --threads)")
    args = ap.parse_args()
    epochs = args.epochs or (30 if args.quick else 100)
    repeats = args.repeats or (1 if args.quick else 3)
    case = build_case(args.phase_range, args.object, incoherent=args.incoherent, modes=args.modes)
    print(f"case: {N}^2 object, {NP}^2 probe, {len(case['positions'])} positions, overlap {case['overlap']:.2f}, "
          f"1e6 photons, {args.object} object, phase range {args.phase_range:.3f} rad, {epochs} epochs, load {os.getloadavg()[0]:.2f}")  # fmt: skip
    rows, notes = [], []
    plain_fft = None
    for method, batch in (("epie", 16), ("epie", 32), ("lsq", 64)):
        rows.append(run_ours(case, method, batch, epochs, args.threads, args.device, repeats))
        print(rows[-1], flush=True)
    if args.device == "cpu" and fourier.fftw_available():  # how much of our lead is the FFT library
        with fourier.torch_fft_only():
            plain_fft = run_ours(case, "epie", 32, epochs, args.threads, args.device, repeats)
        plain_fft["method"] += " with torch.fft"
        print(plain_fft, flush=True)
    if not args.no_numpy and args.modes == 1:
        rows.append(run_numpy(case, epochs))
        print(rows[-1], flush=True)
    if not args.no_ptychi:
        for method, batch, threads in ptychi_settings(args):
            row, note = run_ptychi(case, method, batch, epochs, args.device, threads, repeats)
            print(row or note, flush=True)
            if row:
                rows.append(row)
            elif note not in notes:
                notes.append(note)
    ours = [r for r in rows if r["method"].startswith("tomolive")]  # FFTW where it imports
    best = min(ours, key=lambda r: r["s_per_epoch"])
    ratios = {
        r["method"]: {"speed_per_epoch": round(r["s_per_epoch"] / best["s_per_epoch"], 2),
                      "nrmse_diff": round(best["phase_nrmse"] - r["phase_nrmse"], 4)}
        for r in rows if not r["method"].startswith("tomolive")
    }  # fmt: skip
    print(f"ours fastest: {best['method']} {best['s_per_epoch']} s/epoch, NRMSE {best['phase_nrmse']}")
    for name, ratio in ratios.items():
        print(f"  vs {name}: {ratio['speed_per_epoch']}x faster per epoch, NRMSE ours - peer {ratio['nrmse_diff']}")
    accurate = [r for r in rows if r["method"].startswith("ptychi") and r["phase_nrmse"] <= 0.03]
    if accurate:  # Pty-chi's best CPU setting at the accuracy, among those tried
        peer = min(accurate, key=lambda r: r["s_per_epoch"])
        ratios["best_ptychi_at_0.03"] = {"method": peer["method"], "threads": peer["threads"],
                                         "speed_per_epoch": round(peer["s_per_epoch"] / best["s_per_epoch"], 2)}  # fmt: skip
        print(f"  vs Pty-chi's fastest setting reaching NRMSE 0.03 ({peer['method']}, {peer['threads']} threads): "
              f"{ratios['best_ptychi_at_0.03']['speed_per_epoch']}x")  # fmt: skip
        if plain_fft is not None:
            ratios["best_ptychi_at_0.03"]["speed_per_epoch_ours_with_torch_fft"] = round(
                peer["s_per_epoch"] / plain_fft["s_per_epoch"], 2
            )
            print(f"    ours with torch.fft ({plain_fft['s_per_epoch']} s/epoch): "
                  f"{ratios['best_ptychi_at_0.03']['speed_per_epoch_ours_with_torch_fft']}x")  # fmt: skip
    machine = machine_info("torch", "ptychi", "pyfftw")
    machine["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    machine["torch_threads"] = args.threads
    machine["device"] = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    machine["our_cpu_fft"] = "fftw (pyfftw)" if fourier.fftw_available() else "torch.fft"
    record = {"bench": "ptycho", "quick": args.quick, "machine": machine,
              "case": {"object": N, "probe": NP, "positions": len(case["positions"]), "overlap": round(case["overlap"], 3),
                       "photons": 1e6, "object_kind": args.object, "beam_incoherent": args.incoherent, "probe_modes": args.modes, "phase_range_rad": round(args.phase_range, 4), "epochs": epochs},
              "results": rows, "ours_with_torch_fft": plain_fft, "ratios": ratios, "notes": notes}  # fmt: skip
    print("appended to", append_result("ptycho", record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
