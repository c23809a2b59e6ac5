"""How tomography reads its frames from Bluesky documents.

Darks, flats and projections come from the ``dark``, ``flat`` and ``primary`` streams; the
start document's ``tomo`` block names the image and angle fields. Images come inline in
events or from the detector's files (Resource/Datum or StreamResource/StreamDatum, read by
:class:`tomolive.io.assets.AssetResolver`); a StreamDatum may come before or after the event it
belongs to, so frames and events are joined by ``(descriptor, seq_num)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from event_model import DocumentRouter, unpack_datum_page

from ...errors import BadInputError, MissingDataError
from ...io.assets import AssetResolver
from .acquisition import TomoAcquisition

if TYPE_CHECKING:
    from ...engine.run import Run

STREAM_ROLES = {"dark": "dark", "flat": "flat", "primary": "projection"}


class TomoDocuments(DocumentRouter):
    """Turns one tomography run's documents into ``run.add`` calls; raises on malformed ones."""

    def __init__(self, start_doc: dict, run: Run):
        super().__init__()
        self.tomo: dict[str, Any] = start_doc["tomo"]
        self.field = check_tomo(self.tomo)
        self.run = run
        self.streams: dict[str, str] = {}
        self.assets = AssetResolver()
        self.frames_waiting: dict[tuple[str, int], np.ndarray] = {}
        self.events_waiting: dict[tuple[str, int], tuple[float | None, float | None]] = {}  # (angle, time)

    def descriptor(self, doc: Any) -> None:
        if self.field not in doc["data_keys"]:
            raise BadInputError(
                f"stream {doc['name']!r} has no image field {self.field!r}; data keys are {sorted(doc['data_keys'])!r}."
            )
        self.streams[doc["uid"]] = doc["name"]

    def resource(self, doc: Any) -> None:
        self.assets.resource(doc)

    def datum_page(self, doc: Any) -> None:
        for datum in unpack_datum_page(doc):
            self.assets.datum(datum)

    def stream_resource(self, doc: Any) -> None:
        self.assets.stream_resource(doc)

    def stream_datum(self, doc: Any) -> None:
        batch = self.assets.stream_datum(doc, data_key=self.field)
        if batch is None:
            return
        for k, frame in enumerate(batch.frames):
            key = (batch.descriptor, batch.seq_nums[0] + k)
            if key in self.events_waiting:
                self._frame(batch.descriptor, frame, *self.events_waiting.pop(key))
            else:
                self.frames_waiting[key] = frame

    def event_page(self, doc: Any) -> Any:
        descriptor = doc["descriptor"]
        if self.streams.get(descriptor) not in STREAM_ROLES:
            return
        data = doc["data"]
        angles = data.get(self.tomo["angle_field"]) if self.streams[descriptor] == "primary" else None
        if self.streams[descriptor] == "primary" and angles is None:
            raise BadInputError(
                f"primary event {doc['seq_num'][0]} has no angle field {self.tomo['angle_field']!r} "
                f"(start document's tomo.angle_field); its data keys are {sorted(data)!r}."
            )
        filled = doc.get("filled", {}).get(self.field)
        times = doc.get("time") or [None] * len(doc["seq_num"])
        for i, seq_num in enumerate(doc["seq_num"]):
            angle = None if angles is None else float(angles[i])
            if self.field in data:  # inline, or a datum id to fill from a file
                image = data[self.field][i]
                self._frame(descriptor, self.assets.fill(image) if filled and not filled[i] else image, angle, times[i])
            elif (descriptor, seq_num) in self.frames_waiting:  # from a StreamDatum
                self._frame(descriptor, self.frames_waiting.pop((descriptor, seq_num)), angle, times[i])
            else:
                self.events_waiting[(descriptor, seq_num)] = (angle, times[i])

    def _frame(self, descriptor: str, image: Any, angle: float | None, time: float | None = None) -> None:
        role = STREAM_ROLES[self.streams[descriptor]]
        acquisition = self.run.acquisition
        if time is not None and isinstance(acquisition, TomoAcquisition):  # for flats at both ends
            acquisition.record_time(role, time)
        self.run.add(role, np.asarray(image), angle)

    def stop(self, doc: Any) -> None:
        """A successful stop: every event must have its frame (the engine then finishes the run)."""
        if self.events_waiting:
            raise MissingDataError(
                f"{len(self.events_waiting)} events never got their {self.field!r} frame from a "
                f"StreamDatum (first: descriptor/seq_num {next(iter(self.events_waiting))})."
            )


def check_tomo(tomo: Any) -> str:
    """The image field of a start document's ``tomo`` block, after checking what the run needs."""
    needed = {"image_field": "the detector's image data key", "angle_field": "the rotation's data key"}
    if not isinstance(tomo, dict):
        raise BadInputError(
            f"the start document's 'tomo' block must be a mapping with {sorted(needed)!r}; got {tomo!r}."
        )
    for key, what in needed.items():
        if not isinstance(tomo.get(key), str):
            raise BadInputError(
                f"the start document's 'tomo' block has no {key!r} ({what}; tomo_scan writes it); "
                f"got {tomo.get(key)!r} among keys {sorted(tomo)!r}."
            )
    return tomo["image_field"]
