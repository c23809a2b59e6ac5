"""The plan's documents are valid event-model documents with the metadata users search on."""

from __future__ import annotations

from collections import Counter

import numpy as np
from bluesky import RunEngine
from event_model import DocumentNames, schema_validators

from tomolive.plans import tomo_scan


def test_every_document_passes_the_schema(beamline):
    RE = RunEngine()
    documents: list[tuple[str, dict]] = []

    def validate(name: str, doc: dict) -> None:
        schema_validators[DocumentNames[name]].validate(doc)
        documents.append((name, doc))

    RE.subscribe(validate)
    angles = np.linspace(0, 180, 12, endpoint=False)
    b = beamline
    (uid,) = RE(
        tomo_scan(
            b.detector,
            b.rotation,
            angles,
            3,
            4,
            shutter=b.shutter,
            sample_x=b.sample_x,
            sample_out=b.sample_out,
            pixel_size=0.65,
            energy=25.0,
            md={"sample": "foam-1"},
        )
    )
    names = Counter(name for name, _ in documents)
    assert names == {"start": 1, "descriptor": 3, "event": 3 + 4 + 12, "stop": 1}

    start = documents[0][1]
    assert start["uid"] == uid and start["sample"] == "foam-1" and start["scan_id"] >= 1
    assert start["pixel_size_um"] == 0.65 and start["energy_kev"] == 25.0
    assert start["tomo"]["angles"] == list(angles) and start["tomo"]["n_angles"] == 12
    assert start["tomo"]["image_field"] == "sim_det_image"
    assert start["tomo"]["angle_field"] == "sim_rotation"

    descriptors = {doc["uid"]: doc for name, doc in documents if name == "descriptor"}
    assert {d["name"] for d in descriptors.values()} == {"dark", "flat", "primary"}
    image_key = next(iter(descriptors.values()))["data_keys"]["sim_det_image"]
    assert image_key["shape"] == [16, 96] and image_key["dtype_numpy"] == "<u2"

    events = [doc for name, doc in documents if name == "event"]
    primary = [e for e in events if descriptors[e["descriptor"]]["name"] == "primary"]
    read_angles = [e["data"]["sim_rotation"] for e in primary]
    np.testing.assert_allclose(read_angles, angles)
    darks = [e for e in events if descriptors[e["descriptor"]]["name"] == "dark"]
    flats = [e for e in events if descriptors[e["descriptor"]]["name"] == "flat"]
    # Darks see no beam; flats see more light than any projection pixel behind the sample.
    assert max(np.max(e["data"]["sim_det_image"]) for e in darks) < 200
    assert np.mean(flats[0]["data"]["sim_det_image"]) > np.mean(primary[0]["data"]["sim_det_image"])
    assert documents[-1][1]["exit_status"] == "success"
    # The sample is back in the beam after the flats.
    assert b.sample_x.position == 0.0
