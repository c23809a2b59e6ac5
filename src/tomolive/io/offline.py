"""Process a stored scan without a RunEngine: ``tomolive process <file or Tiled run URI>``.

The frames go through the same engine run (:class:`~tomolive.engine.Run`) the live callback
uses (same normalisation, spool, preview, reconstruction and provenance), read in batches
of up to 64 MB (:meth:`~tomolive.io.formats.FrameStack.batches`) from a DXchange/NeXus file
(:mod:`tomolive.io.formats`) or from a raw Bluesky run saved in Tiled by bluesky-tiled-plugins'
``TiledWriter``.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from ..errors import BadInputError, MissingDataError
from ..store import connect, fetched_here
from .formats import FrameStack, StoredScan, open_scan

if TYPE_CHECKING:
    from ..engine import Engine, ProcessedRun, Technique

RUN_STREAMS = {"darks": "dark", "flats": "flat", "projections": "primary"}


def is_tiled_uri(source: str) -> bool:
    return source.startswith(("http://", "https://"))


class _FetchedHere:
    """A Tiled array whose slices this process fetches (see :func:`~tomolive.store.fetched_here`),
    not a distributed default client, which is slow for small reads (docs/measurements/moves.md)."""

    def __init__(self, array: Any):
        self.array = array
        self.shape, self.dtype = array.shape, array.dtype

    def __getitem__(self, index: Any) -> np.ndarray:
        with fetched_here():
            return self.array[index]


def open_tiled_run(uri: str, api_key: str | None = None) -> StoredScan:
    """A raw run written by ``TiledWriter`` (``.../raw/<uid>``) as a lazily read scan."""
    run = connect(uri, api_key=api_key)
    start = run.metadata.get("start", {})
    tomo = start.get("tomo")
    if tomo is None:
        raise BadInputError(f"{uri} is not a tomography run: its start document has no 'tomo' metadata.")
    stacks = {}
    for kind, stream in RUN_STREAMS.items():
        if stream not in run or tomo["image_field"] not in run[stream]:
            raise MissingDataError(f"run {uri} has no {tomo['image_field']!r} in a {stream!r} stream.")
        images = _FetchedHere(run[stream][tomo["image_field"]])
        stacks[kind] = FrameStack(images, np.arange(images.shape[0]))
    angles = np.asarray(_FetchedHere(run["primary"][tomo["angle_field"]])[:], dtype=np.float64)
    if tomo.get("angle_units", "deg") != "deg":
        raise BadInputError(f"run {uri}: angle_units {tomo['angle_units']!r} not supported; expected 'deg'.")
    metadata = {"raw_uri": uri, "sample": start.get("sample"), "scan_id": start.get("scan_id")}
    return StoredScan(**stacks, angles_deg=angles, metadata=metadata, source=uri, format="bluesky-run")


def open_source(source: str, api_key: str | None = None) -> tuple[StoredScan, str]:
    """The scan at ``source`` (file path or Tiled run URI) and the uid its result is filed under.

    A Tiled run keeps its own uid (so ``processed/<uid>`` sits beside ``raw/<uid>``); a file
    gets a uid derived from its absolute path, so processing it again replaces the result.
    """
    if is_tiled_uri(source):
        scan = open_tiled_run(source, api_key)
        return scan, connect(source, api_key=api_key).metadata["start"]["uid"]
    path = Path(source).absolute()
    return open_scan(path), str(uuid.uuid5(uuid.NAMESPACE_URL, path.as_uri()))


def process_scan(
    scan: StoredScan,
    uid: str,
    engine: Engine,
    technique: Technique,
    *,
    sample: str | None = None,
    progress: bool = True,
) -> ProcessedRun:
    """Feed every frame of ``scan`` to ``engine`` as a ``technique`` run ``uid`` and wait for the result."""
    if len(scan.angles_deg) != len(scan.projections):
        raise BadInputError(
            f"{scan.source}: {len(scan.angles_deg)} angles for {len(scan.projections)} projections; "
            "expected one angle per projection."
        )
    metadata = {
        "sample": sample or scan.metadata.get("sample") or Path(str(scan.source)).stem,
        "plan_name": "tomolive process",
        "source": str(scan.source),
        "format": scan.format,
        "tomo": {  # as a live plan's start document has them (the web view and searches read these)
            "n_angles": len(scan.projections),
            "angle_units": "deg",
            "angular_range": float(np.ptp(scan.angles_deg)) if len(scan.angles_deg) else 0.0,
            "n_darks": len(scan.darks),
            "n_flats": len(scan.flats),
        },
    }
    run = engine.start_run(technique, uid, metadata, new_version=True)
    try:
        for kind, stack in (("dark", scan.darks), ("flat", scan.flats)):
            for batch in stack.batches():
                for frame in batch:
                    run.add(kind, frame)
        angles = iter(scan.angles_deg)  # as many as frames (checked above)
        with tqdm(total=len(scan.projections), desc="read", unit="frame", disable=not progress) as bar:
            for batch in scan.projections.batches():
                for frame, angle in zip(batch, angles):  # zip stops at the batch's end first
                    run.add("projection", frame, float(angle))
                bar.update(len(batch))
        run.finish()
    except Exception as err:  # marked failed in Tiled, like a live scan, not left "running"
        run.end("failed", f"{type(err).__name__}: {err}")
    return engine.wait(uid)
