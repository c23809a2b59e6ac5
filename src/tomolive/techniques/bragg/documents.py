"""How Bragg-peak analysis reads its frames from Bluesky documents.

Frames come from the ``primary`` stream; the start document's ``bragg`` block (written by
``bragg_scan``) names the image and rotation-angle fields. Images come inline in the events;
a detector that writes files (an ``external`` data key) is refused with a clear error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from event_model import DocumentRouter

from ...errors import BadInputError

if TYPE_CHECKING:
    from ...engine.run import Run


class BraggDocuments(DocumentRouter):
    """Turns one Bragg run's primary events into ``run.add("frame", image, angle)`` calls."""

    def __init__(self, start_doc: dict, run: Run):
        super().__init__()
        self.bragg = check_bragg(start_doc.get("bragg"))
        self.field: str = self.bragg["image_field"]
        self.angle_field: str = self.bragg["angle_field"]
        self.run = run
        self.primary: set[str] = set()

    def descriptor(self, doc: Any) -> None:
        if doc["name"] != "primary":
            return
        keys = doc["data_keys"]
        for field, what in ((self.field, "image"), (self.angle_field, "angle")):
            if field not in keys:
                raise BadInputError(
                    f"the primary stream has no {what} field {field!r} (start document's bragg block); "
                    f"its data keys are {sorted(keys)!r}."
                )
        if keys[self.field].get("external"):
            raise BadInputError(
                f"image field {self.field!r} is stored externally ({keys[self.field]['external']!r}); the Bragg "
                "technique reads images inline in the events."
            )
        self.primary.add(doc["uid"])

    def event_page(self, doc: Any) -> Any:
        if doc["descriptor"] not in self.primary:
            return
        data = doc["data"]
        for i in range(len(doc["seq_num"])):
            self.run.add("frame", np.asarray(data[self.field][i]), float(data[self.angle_field][i]))


def check_bragg(bragg: Any) -> dict[str, Any]:
    """A start document's ``bragg`` block, after checking it names the fields the run needs."""
    if not isinstance(bragg, dict):
        raise BadInputError(f"the start document's 'bragg' block must be a mapping; got {bragg!r}.")
    for key in ("image_field", "angle_field"):
        if not isinstance(bragg.get(key), str):
            raise BadInputError(
                f"the start document's 'bragg' block has no {key!r} (bragg_scan writes it); "
                f"got {bragg.get(key)!r} among keys {sorted(bragg)!r}."
            )
    shape = bragg.get("frame_shape")
    if shape is not None and (not isinstance(shape, list | tuple) or len(shape) != 2):
        raise BadInputError(f"bragg.frame_shape must be [rows, columns]; got {shape!r}.")
    return bragg
