"""A toy technique ("sum every frame into one image") and an in-memory result store.

Built only on the public Technique interface (tomolive.engine.technique) and the Stage
protocol: it proves a new technique needs no change to the engine. The store is a fake
for the state-machine tests, which need no server.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
from event_model import DocumentRouter

from tomolive.errors import BadInputError, MissingDataError
from tomolive.stages import StageContext


class MemoryVolume:
    """An in-memory array written block by block, like a VolumeTarget."""

    def __init__(self, shape: tuple[int, ...], rows_per_block: int, dtype: Any):
        self.data = np.zeros(shape, dtype)
        self.rows_per_block = rows_per_block

    def write_block(self, index: int, block: np.ndarray) -> str:
        start = index * self.rows_per_block
        self.data[start : start + len(block)] = block
        return "memory"

    def open(self) -> np.ndarray:
        return self.data


class MemoryStore:
    """A result container in memory: what ResultStore asks, and a log of what was done."""

    uri = None
    models_client = None
    previous_parameters = None

    def __init__(self, uid: str, metadata: dict[str, Any]):
        self.uid = uid
        self.metadata = {**metadata, "status": "running"}
        self.arrays: dict[str, Any] = {}
        self.statuses: list[str] = []
        self.lock = threading.Lock()

    def describe(self) -> str:
        return f"memory:{self.uid}"

    def new_volume(self, key, shape, rows_per_block, dtype=np.float32, metadata=None) -> MemoryVolume:
        with self.lock:
            self.arrays[key] = MemoryVolume(tuple(shape), rows_per_block, dtype)
            return self.arrays[key]

    def update(self, **metadata: Any) -> None:
        with self.lock:
            self.metadata.update(metadata)

    def set_status(self, status: str, **metadata: Any) -> None:
        with self.lock:
            self.statuses.append(status)
            self.metadata.update(status=status, **metadata)

    def write_preview(self, image: np.ndarray | None, metadata: dict) -> None:
        with self.lock:
            if image is not None:
                self.arrays["preview"] = np.array(image)

    def write_table(self, key: str, table: Any, metadata: dict | None = None) -> None:
        with self.lock:
            self.arrays[key] = table.copy()
            self.table_metadata = {**getattr(self, "table_metadata", {}), key: dict(metadata or {})}

    def remove(self, key: str) -> None:
        with self.lock:
            del self.arrays[key]

    def __contains__(self, key: str) -> bool:
        return key in self.arrays


def memory_opener(stores: dict[str, MemoryStore]):
    """An ``open_store`` for Engine that keeps each run's MemoryStore in ``stores`` by uid."""

    def open_store(uid: str, metadata: dict[str, Any], new_version: bool) -> MemoryStore:
        stores[uid] = MemoryStore(uid, metadata)
        return stores[uid]

    return open_store


class SumReader(DocumentRouter):
    """Frames of the ``primary`` stream's ``field`` become ``run.add("frame", image)``."""

    def __init__(self, start_doc: dict, run: Any):
        super().__init__()
        self.field = start_doc["sum_image"]
        if not isinstance(self.field, str):
            raise BadInputError(f"sum_image must name the image field; got {self.field!r}")
        self.run = run
        self.primary: set[str] = set()

    def descriptor(self, doc):
        if doc["name"] == "primary":
            self.primary.add(doc["uid"])

    def event_page(self, doc):
        if doc["descriptor"] in self.primary:
            for image in doc["data"][self.field]:
                self.run.add("frame", np.asarray(image))


class SumAcquisition:
    """Keeps a running sum: no scratch storage, no preview."""

    def __init__(self, run: Any):
        self.run = run
        self.total: np.ndarray | None = None
        self.n_frames = 0
        self.released = self.discarded = False

    def add(self, role: str, frame: np.ndarray, coordinate: float | None) -> None:
        if role != "frame":
            raise BadInputError(f"the sum technique takes 'frame's; got {role!r}")
        self.total = frame.astype(np.float64) if self.total is None else self.total + frame
        self.n_frames += 1

    def stopping(self) -> None:
        pass

    def finish(self) -> None:
        if self.total is None:
            raise MissingDataError("no frame arrived to sum")

    def close(self, patience_s: float) -> None:
        pass

    def release(self) -> None:
        self.released = True

    def discard(self, store: Any) -> None:
        self.discarded = True


class SumStage:
    """Writes the sum as ``processed/<uid>/sum`` (one slice) and the frame count as metadata."""

    name = "sum"

    def run(self, ctx: StageContext) -> None:
        total = ctx.acquisition.total
        target = ctx.store.new_volume("sum", (1, *total.shape), 1, metadata={"units": "counts"})
        target.write_block(0, total[None].astype(np.float32))
        ctx.metadata["n_frames"] = ctx.acquisition.n_frames


class StageThatFails:
    """A stage that raises, to test a failure at each place in the list."""

    def __init__(self, name: str):
        self.name = name

    def run(self, ctx: StageContext) -> None:
        raise RuntimeError(f"stage {self.name} broke")


class Params:
    def as_dict(self) -> dict[str, Any]:
        return {}


class SumTechnique:
    """Sum every frame of a run into one image."""

    name = "sum"
    layout = ("sum",)

    def __init__(self, stages: list | None = None):
        self.params = Params()
        self._stages = stages

    def claims(self, start_doc: Mapping[str, Any]) -> bool:
        return "sum_image" in start_doc

    def run_metadata(self, start_doc: Mapping[str, Any]) -> dict[str, Any]:
        return {"sample": start_doc.get("sample", "unknown"), "technique": "sum"}

    def reader(self, start_doc: dict, run: Any) -> SumReader:
        return SumReader(start_doc, run)

    def acquisition(self, run: Any) -> SumAcquisition:
        return SumAcquisition(run)

    def stages(self) -> list:
        return self._stages if self._stages is not None else [SumStage()]

    def frame_steps(self) -> list[str]:
        return []
