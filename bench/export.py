"""Export throughput: ``tomolive export`` (slab by slab) vs one whole-volume read + np.save.

An N^3 float32 volume is written to an embedded Tiled server on loopback in 32-row
blocks (as the pipeline writes it), then exported to TIFF slices, DXchange HDF5 and Zarr.
The peer is what a user writes by hand: ``recon.read()`` (the whole volume in memory)
followed by ``np.save``. Prints MB/s for each.

    PYTHONPATH=src python bench/export.py            # 256^3
    PYTHONPATH=src python bench/export.py --size 512
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import append_result, machine_info
from scan import free_port

from tomolive.config import Settings
from tomolive.io.export import FORMATS, export_scan
from tomolive.server import running_server
from tomolive.store import TiledResult, connect


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    n, rows = args.size, 32
    volume = np.random.default_rng(0).normal(size=(n, n, n)).astype(np.float32)
    mb = volume.nbytes / 1e6
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_server(Settings(data_dir=Path(tmp) / "tiled", port=free_port())) as server,
    ):
        client = connect(server.uri, api_key=server.api_key)
        record = TiledResult.create(client, "bench-export", {"sample": "bench"}, server.api_key)
        target = record.new_volume("recon", volume.shape, rows)
        for index, start in enumerate(range(0, n, rows)):
            target.write_block(index, volume[start : start + rows])
        record.set_status("complete")
        node = client["processed"]["bench-export"]

        figures = {}
        started = time.perf_counter()
        np.save(Path(tmp) / "peer.npy", node["recon"].read())
        figures["peer: read() + np.save"] = mb / (time.perf_counter() - started)
        for fmt in FORMATS:
            done = export_scan(node, fmt, Path(tmp) / f"out-{fmt}", progress=False)
            assert done.nbytes == volume.nbytes
            figures[f"tomolive export --format {fmt}"] = mb / done.seconds
    print(f"export of a {n}^3 float32 volume ({mb:.0f} MB) from Tiled on loopback:")
    for name, rate in figures.items():
        print(f"  {name:32} {rate:7.1f} MB/s")
    path = append_result(
        "export", {"size": n, "mb": mb, "mb_per_s": figures, "machine": machine_info("tiled", "zarr", "h5py")}
    )
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
