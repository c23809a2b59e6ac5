"""Find processed scans in Tiled, read parts of a volume lazily, follow the link to the raw run.

    python examples/query_tiled.py --uri http://127.0.0.1:8000 --api-key KEY [--sample foam-1]

Only a Tiled client is needed (``pip install "tiled[client]"``): this runs from any
machine that can reach the server. The URI and key may also come from
TOMOLIVE_TILED_URI and TOMOLIVE_API_KEY.
"""

from __future__ import annotations

import argparse
import os

from tiled.client import from_uri
from tiled.queries import Key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uri", default=os.environ.get("TOMOLIVE_TILED_URI", "http://127.0.0.1:8000"))
    parser.add_argument("--api-key", default=os.environ.get("TOMOLIVE_API_KEY"))
    parser.add_argument("--sample", help="only scans of this sample")
    args = parser.parse_args()

    client = from_uri(args.uri, api_key=args.api_key)
    scans = client["processed"].search(Key("status") == "complete")  # searches run on the server
    if args.sample:
        scans = scans.search(Key("sample") == args.sample)
    print(f"{len(scans)} complete scan(s)" + (f" of sample {args.sample!r}" if args.sample else ""))
    if not len(scans):
        return
    for uid, node in scans.items().tail(5):
        print(f"  {uid}  sample={node.metadata['sample']}  scan_id={node.metadata.get('scan_id')}")

    uid, scan = scans.items().last()
    recon = scan["recon"]  # nothing downloaded yet: shape, dtype and chunks only
    z = recon.shape[0] // 2
    middle = recon[z]  # one slice over HTTP, not the volume
    column = recon[:, recon.shape[1] // 2, recon.shape[2] // 2]  # a line through all slices
    print(
        f"latest {uid}: recon {recon.shape} {recon.dtype}; slice {z} mean {middle.mean():.4f}, "
        f"central column {column.shape}"
    )
    print(f"  rotation centre {scan.metadata['provenance']['center']['center']:.2f} px")

    # processed -> raw: the processed metadata names the raw run (raw is never modified)
    try:
        raw = client[scan.metadata["links"]["raw"]]
    except KeyError:
        print(f"  raw run {scan.metadata['links']['raw']} is not in this server (processed from a file?)")
        return
    start = raw.metadata["start"]
    frames = raw["primary"][start["tomo"]["image_field"]]
    print(f"  raw run {raw.uri}: plan {start['plan_name']}, scan_id {start['scan_id']}, projections {frames.shape}")
    # raw -> processed: every result made from this run
    back = client["processed"].search(Key("raw_uid") == start["uid"])
    print(f"  results of raw run {start['uid']}: {list(back)}")


if __name__ == "__main__":
    main()
