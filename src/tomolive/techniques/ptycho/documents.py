"""How ptychography reads its frames from Bluesky documents.

Patterns come from the ``primary`` stream, inline in events or from the detector's files
(Resource/Datum, read by :class:`tomolive.io.assets.AssetResolver`). The start document's
``ptycho`` block (checked by :func:`.geometry.check_block`) names the pattern field, the two
stage readbacks (micrometres) and, for a rotation series, the rotation readback (degrees).

Each event becomes two frames for the acquisition, both at the event's angle: the pattern
(role ``"pattern"``), then its probe centre (role ``"position"``, a (2,) array: row, col in
object pixels). The pattern goes first, so the engine sizes its ingest queue by patterns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from event_model import DocumentRouter, unpack_datum_page

from ...errors import BadInputError
from ...io.assets import AssetResolver
from .geometry import ScanSetup, check_block

if TYPE_CHECKING:
    from ...engine.run import Run


class PtychoDocuments(DocumentRouter):
    """Turns one ptychography run's documents into ``run.add`` calls; raises on malformed ones."""

    def __init__(self, start_doc: dict, run: Run):
        super().__init__()
        self.setup: ScanSetup = check_block(start_doc["ptycho"])
        self.run = run
        self.primary: set[str] = set()
        self.assets = AssetResolver()

    def descriptor(self, doc: Any) -> None:
        if doc["name"] != "primary":
            return
        setup = self.setup
        wanted = [setup.image_field, setup.y_field, setup.x_field, *([setup.angle_field] if setup.angle_field else [])]
        missing = [key for key in wanted if key not in doc["data_keys"]]
        if missing:
            raise BadInputError(
                f"the primary stream has no {missing!r} (named in the start document's ptycho block); "
                f"its data keys are {sorted(doc['data_keys'])!r}."
            )
        self.primary.add(doc["uid"])

    def resource(self, doc: Any) -> None:
        self.assets.resource(doc)

    def datum_page(self, doc: Any) -> None:
        for datum in unpack_datum_page(doc):
            self.assets.datum(datum)

    def event_page(self, doc: Any) -> Any:
        if doc["descriptor"] not in self.primary:
            return
        setup, data = self.setup, doc["data"]
        keys = [setup.image_field, setup.y_field, setup.x_field, *([setup.angle_field] if setup.angle_field else [])]
        missing = [key for key in keys if key not in data]
        if missing:
            raise BadInputError(
                f"primary event {doc['seq_num'][0]} has no {missing!r}; its data keys are {sorted(data)!r} "
                "(ptycho reads patterns inline or from Resource/Datum files)."
            )
        filled = doc.get("filled", {}).get(setup.image_field)
        for i in range(len(doc["seq_num"])):
            image = data[setup.image_field][i]
            pattern = self.assets.fill(image) if filled and not filled[i] else image
            angle = float(data[setup.angle_field][i]) if setup.angle_field else 0.0
            position = setup.to_pixels(float(data[setup.y_field][i]), float(data[setup.x_field][i]))
            self.run.add("pattern", np.asarray(pattern), angle)
            self.run.add("position", position, angle)
