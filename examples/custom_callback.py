"""Your own Bluesky callback, subscribed beside TomoPipeline: here, a beam-transmission check.

    python examples/custom_callback.py --uri http://127.0.0.1:8000 --api-key KEY

Any callable ``cb(name, doc)`` can be subscribed to the RunEngine; tomolive's pipeline is
just another one, so yours sees the same documents and neither waits for the other. Keep
per-document work short (it runs on the RunEngine thread). The URI and key may also come
from TOMOLIVE_TILED_URI and TOMOLIVE_API_KEY.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from bluesky import RunEngine
from bluesky.callbacks import CallbackBase

from tomolive.callbacks import TomoPipeline
from tomolive.plans import tomo_scan
from tomolive.sim import make_foam, make_sim_beamline


class TransmissionCheck(CallbackBase):
    """Mean transmission of each projection (image mean / flat mean); warns below ``floor``."""

    def __init__(self, floor: float = 0.05):
        super().__init__()
        self.floor = floor
        self.streams: dict[str, str] = {}  # descriptor uid -> stream name
        self.flat_mean: float | None = None
        self.transmission: list[float] = []

    def start(self, doc: dict) -> None:
        self.field = doc.get("tomo", {}).get("image_field")
        self.streams.clear()
        self.flat_mean, self.transmission = None, []

    def descriptor(self, doc: dict) -> None:
        self.streams[doc["uid"]] = doc.get("name", "primary")

    def event(self, doc: dict) -> None:
        image = doc["data"].get(self.field)
        if not isinstance(image, (np.ndarray, list)):  # not a tomography scan, or images in files
            return
        stream, mean = self.streams[doc["descriptor"]], float(np.mean(image))
        if stream == "flat":
            self.flat_mean = mean if self.flat_mean is None else max(self.flat_mean, mean)
        elif stream == "primary" and self.flat_mean:
            self.transmission.append(mean / self.flat_mean)
            if self.transmission[-1] < self.floor:
                print(f"TransmissionCheck: frame {doc['seq_num']} transmits {self.transmission[-1]:.3f}: beam lost?")

    def stop(self, doc: dict) -> None:
        t = np.array(self.transmission)
        if t.size:
            print(f"TransmissionCheck: {t.size} projections, transmission {t.min():.3f}-{t.max():.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uri", default=os.environ.get("TOMOLIVE_TILED_URI", "http://127.0.0.1:8000"))
    parser.add_argument("--api-key", default=os.environ.get("TOMOLIVE_API_KEY"))
    parser.add_argument("--dask", help="a Dask scheduler address (default: a LocalCluster)")
    parser.add_argument("--size", type=int, default=64, help="detector width = slice size (pixels)")
    args = parser.parse_args()

    RE = RunEngine()
    RE.subscribe(TransmissionCheck())
    with TomoPipeline.from_uri(args.uri, api_key=args.api_key, dask=args.dask, progress=False) as pipe:
        RE.subscribe(pipe)
        bl = make_sim_beamline(make_foam((args.size // 4, args.size, args.size), seed=2), photons=5000)
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
                md={"sample": "foam-callback"},
            )
        )
        print(f"tomolive: scan {uid} {pipe.wait(uid).status}")


if __name__ == "__main__":
    main()
