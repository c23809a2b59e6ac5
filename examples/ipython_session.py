"""A tomography scan as in an IPython session: simulator -> RunEngine -> TomoPipeline -> Tiled.

    python examples/ipython_session.py                 # starts a throwaway Tiled server
    python examples/ipython_session.py --uri http://127.0.0.1:8000 --api-key KEY

The URI and key may also come from TOMOLIVE_TILED_URI and TOMOLIVE_API_KEY. In IPython,
paste the body of ``scan``. In a script, keep the work under ``if __name__ == "__main__":``:
Dask starts its worker processes by re-importing the script.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
from pathlib import Path

import numpy as np
from bluesky import RunEngine
from bluesky_tiled_plugins import TiledWriter

from tomolive.callbacks import TomoPipeline
from tomolive.config import Settings
from tomolive.plans import tomo_scan
from tomolive.server import running_server
from tomolive.sim import make_foam, make_sim_beamline
from tomolive.store import connect, raw_root


def scan(uri: str, api_key: str | None, sample: str, size: int, n_angles: int, dask: str | None) -> str:
    """Scan a simulated foam with the pipeline subscribed; print where the result is."""
    client = connect(uri, api_key=api_key)
    RE = RunEngine()
    RE.subscribe(TiledWriter(raw_root(client)))  # the raw run, as raw/<uid>
    with TomoPipeline(client, dask=dask, progress=False) as pipe:  # dask=None: a LocalCluster
        RE.subscribe(pipe)
        bl = make_sim_beamline(make_foam((size // 4, size, size), seed=1), photons=5000)
        angles = np.linspace(0, 180, n_angles, endpoint=False)  # degrees
        (uid,) = RE(
            tomo_scan(
                bl.detector,
                bl.rotation,
                angles,
                n_darks=5,
                n_flats=5,
                shutter=bl.shutter,
                sample_x=bl.sample_x,
                sample_out=bl.sample_out,
                md={"sample": sample},
            )
        )
        result = pipe.wait(uid)  # the RunEngine never waits; we do, to print the result
    print(f"scan {uid}: {result.status}" + (f" ({result.reason})" if result.reason else ""))
    if result.status == "complete":
        node = client["processed"][uid]
        print(f"  result: {node.uri}")
        print(
            f"  recon:  {node['recon'].shape} float32, centre {node.metadata['provenance']['center']['center']:.2f} px"
        )
        print(f"  raw:    {client['raw'][uid].uri}")
        print(f"  fetch:  from_uri({uri!r}, api_key=...)['processed'][{uid!r}]['recon'][{size // 8}]")
    return uid


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uri", default=os.environ.get("TOMOLIVE_TILED_URI"), help="Tiled server (default: start one)")
    parser.add_argument("--api-key", default=os.environ.get("TOMOLIVE_API_KEY"))
    parser.add_argument("--dask", help="a Dask scheduler address (default: a LocalCluster)")
    parser.add_argument("--sample", default="foam-example")
    parser.add_argument("--size", type=int, default=128, help="detector width = slice size (pixels)")
    parser.add_argument("--angles", type=int, default=180, help="projections over 180 degrees")
    args = parser.parse_args()
    run = dict(sample=args.sample, size=args.size, n_angles=args.angles, dask=args.dask)
    if args.uri:
        scan(args.uri, args.api_key, **run)
        return
    with tempfile.TemporaryDirectory() as tmp, running_server(Settings(data_dir=Path(tmp), port=free_port())) as server:
        print(f"started a throwaway Tiled server at {server.uri}")
        scan(server.uri, server.api_key, **run)


if __name__ == "__main__":
    main()
