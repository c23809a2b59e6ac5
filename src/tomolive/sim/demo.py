"""``tomolive demo``: the whole path on a laptop, from a simulated scan to a slice in Tiled."""

from __future__ import annotations

import time
from pathlib import Path
from typing import cast

import numpy as np
from bluesky import RunEngine
from PIL import Image

from ..callbacks import TomoPipeline
from ..config import Settings
from ..plans import tomo_scan
from ..qc import psnr
from ..server import running_server
from ..store import connect
from .devices import make_sim_beamline
from .phantoms import make_foam

SAMPLE = "demo-foam"


def save_slice_png(image: np.ndarray, path: Path) -> Path:
    """Write a 2D float image as an 8-bit PNG, scaled between its 0.5 and 99.5 percentiles."""
    lo, hi = np.percentile(image, [0.5, 99.5])
    scaled = np.clip((image - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((scaled * 255).astype(np.uint8)).save(path)
    return path


def run_demo(
    settings: Settings, *, size: int = 256, n_angles: int = 360, rows: int = 64, output: str | Path = "demo-output"
) -> Path:
    """Start a server, scan a simulated foam, reconstruct it into Tiled, and report where it is.

    ``output`` ending in ``.png`` is the file the central slice is written to; otherwise a
    folder, where it goes as ``<uid>-slice<N>.png``.
    """
    print(f"tomolive demo: starting the Tiled server in {settings.data_dir.absolute()} ...", flush=True)
    with running_server(settings) as server:
        beamline = make_sim_beamline(make_foam((rows, size, size), seed=7), photons=20000, seed=7)
        angles = np.linspace(0.0, 180.0, n_angles, endpoint=False)
        RE = RunEngine()
        with TomoPipeline.from_uri(server.uri, api_key=server.api_key) as pipe:
            RE.subscribe(pipe)
            start = time.perf_counter()
            print(f"scanning {n_angles} projections of {rows}x{size} pixels ...", flush=True)
            plan = tomo_scan(
                beamline.detector,
                beamline.rotation,
                angles,
                n_darks=10,
                n_flats=10,
                shutter=beamline.shutter,
                sample_x=beamline.sample_x,
                sample_out=beamline.sample_out,
                pixel_size=1.0,
                md={"sample": SAMPLE},
            )
            (uid,) = cast(tuple[str, ...], RE(plan))  # a RunEngine made as above returns the run uids
            scanned = time.perf_counter()
            outcome = pipe.wait(uid)
            done = time.perf_counter()
        if outcome.status != "complete":
            raise SystemExit(f"processing ended with status {outcome.status}: {outcome.reason}")

        client = connect(server.uri, api_key=server.api_key)  # a fresh client, as a user would
        recon = client["processed"][uid]["recon"]
        middle = recon.shape[0] // 2
        slice_ = recon[middle]
        truth = beamline.phantom.attenuation()[middle]
        target = Path(output)
        png = save_slice_png(slice_, target if target.suffix.lower() == ".png" else target / f"{uid}-slice{middle}.png")
        data_dir = settings.data_dir.absolute()
        print(
            f"\nscan {scanned - start:.1f} s, reconstruction ready {done - scanned:.1f} s after the stop document"
            f"\nrecon {tuple(recon.shape)} {recon.dtype}; central slice PSNR vs phantom "
            f"{psnr(slice_, truth):.1f} dB\n"
            f"\nresult:  {server.uri}/api/v1/metadata/processed/{uid}"
            f"\nPNG:     {png.absolute()}"
            f"\n\nthe demo server stops now; to fetch the result later, start it on the same port and data dir:\n"
            f"    tomolive serve --port {settings.port} --data-dir {data_dir}\n"
            f"then, in Python:\n"
            f"    from tiled.client import from_uri\n"
            f"    from tiled.queries import Key\n"
            f"    c = from_uri({server.uri!r}, api_key=open({str(settings.key_file)!r}).read().strip())\n"
            f"    scan = c['processed'].search(Key('sample') == {SAMPLE!r}).values().last()\n"
            f"    slice_ = scan['recon'][{middle}]   # reads only this slice\n"
        )
    return png
