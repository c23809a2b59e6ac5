"""Raw runs (TiledWriter) and processed results linked both ways; databroker queries over raw runs."""

from __future__ import annotations

import random
import time
import uuid

import pytest
from bluesky import RunEngine
from bluesky_tiled_plugins import TiledWriter
from databroker.queries import Key, ScanID, TimeRange

from tomolive.errors import MissingDataError
from tomolive.plans import tomo_scan
from tomolive.store import TiledResult, connect, processed_for, raw_for, raw_root


def test_raw_and_processed_are_linked_both_ways(tiled_server, beamline, scan_with_raw_run):
    uid = scan_with_raw_run(beamline, n_angles=60, sample="foam-linked")
    client = connect(tiled_server.uri, api_key=tiled_server.api_key)
    raw = client["raw"][uid]
    raw_md = dict(raw.metadata)

    # processed -> raw: the uid and the path of the raw node are in the processed metadata
    processed = client["processed"][uid]
    assert processed.metadata["raw_uid"] == uid
    assert processed.metadata["links"]["raw"] == f"raw/{uid}"
    for via in (processed, uid):
        run = raw_for(client, via)
        assert run.metadata["start"]["uid"] == uid
        assert run["primary"]["sim_det_image"].shape == (60, 16, 96)

    # raw -> processed: found by searching the processed container, from the uid or the run
    for via in (uid, raw):
        found = processed_for(client, via)
        assert list(found) == [uid]
        assert found.values().first()["recon"].shape == (16, 96, 96)
    assert list(processed_for(client, str(uuid.uuid4()))) == []
    assert dict(client["raw"][uid].metadata) == raw_md  # the raw run is only read


def test_a_result_without_its_raw_run_names_the_missing_link(tiled_server):
    client = connect(tiled_server.uri, api_key=tiled_server.api_key)
    uid = str(uuid.uuid4())
    TiledResult.create(client, uid, {"sample": "from-a-file", "source": "/data/scan.h5"})
    with pytest.raises(MissingDataError, match=f"raw/{uid}.*processed from /data/scan.h5"):
        raw_for(client, uid)


def test_databroker_queries_find_the_right_raw_run(tiled_server, beamline):
    """TimeRange, ScanID and Key work on the TiledWriter container (v3 client; no .v2 here)."""
    catalog = raw_root(connect(tiled_server.uri, api_key=tiled_server.api_key))
    RE = RunEngine()
    RE.subscribe(TiledWriter(catalog))
    RE.md["scan_id"] = base = random.randrange(10**6, 10**9)
    tag = uuid.uuid4().hex[:8]
    uids, between = [], 0.0
    for i in range(2):
        (uid,) = RE(
            tomo_scan(
                beamline.detector,
                beamline.rotation,
                [0.0, 45.0, 90.0, 135.0],
                1,
                1,
                shutter=beamline.shutter,
                sample_x=beamline.sample_x,
                sample_out=beamline.sample_out,
                md={"sample": f"db-{tag}-{i}"},
            )
        )
        uids.append(uid)
        if i == 0:
            time.sleep(0.05)
            between = time.time()
            time.sleep(0.05)

    def found(query) -> set[str]:
        return set(catalog.search(query)) & set(uids)

    assert found(ScanID(base + 1)) == {uids[0]}
    assert found(ScanID(base + 2)) == {uids[1]}
    assert found(Key("sample") == f"db-{tag}-1") == {uids[1]}  # Key("sample") means start.sample
    assert found(TimeRange(since=between, timezone="UTC")) == {uids[1]}
    assert found(TimeRange(since=between - 3600, until=between, timezone="UTC")) == {uids[0]}
    assert catalog.v3[uids[0]].metadata["start"]["scan_id"] == base + 1
