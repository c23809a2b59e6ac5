"""What the web view says and reads, checked without a browser: the key statement, and the
numbers a file-processed scan records for the page (angle range, darks and flats, preview angles)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from tiled.client import from_uri

from tomolive.server.web import web_url

from .web_scans import FILE_ANGLES, THIN_ROWS, process_thin_file


def _text(path: Path) -> str:
    """A file's prose with markup and line breaks flattened: backticks, asterisks, runs of spaces."""
    return " ".join(path.read_text().replace("`", "").replace("*", "").split())


def test_readme_and_page_say_the_same_about_the_key(tiled_server):
    page = httpx.get(web_url(tiled_server.uri)).text
    found = re.search(r'<small id="key-how">(.*?)</small>', page, re.S)
    assert found, "the page's key statement is gone"
    statement = " ".join(found.group(1).split())
    root = Path(__file__).parents[1]
    for doc in ("README.md", "docs/web.md"):
        assert statement in _text(root / doc), doc
    # What the statement promises is what the code does: the address carries no key, the page drops it.
    assert "?api_key" not in web_url(tiled_server.uri)
    script = httpx.get(web_url(tiled_server.uri) + "view.js").text
    assert 'params.delete("api_key")' in script


def test_a_file_processed_scan_records_what_the_page_shows(tiled_server, dask_client, tmp_path):
    uid = process_thin_file(tiled_server, dask_client.scheduler.address, tmp_path)
    scan = from_uri(tiled_server.uri, api_key=tiled_server.api_key)["processed"][uid]
    tomo, preview = scan.metadata["tomo"], scan["preview"].metadata
    assert tomo["angular_range"] == pytest.approx(178.0) and (tomo["n_darks"], tomo["n_flats"]) == (3, 3)
    assert scan["recon"].shape[0] == THIN_ROWS[1] - THIN_ROWS[0]
    low, high = preview["angle_range_deg"]
    # a file replays faster than the preview back-projects: the frames it had not reached at the stop are dropped
    assert preview["n_angles"] > 0 and preview["n_angles"] + preview["frames_dropped"] == len(FILE_ANGLES)
    assert 0.0 <= low <= high <= 178.0 and (low == high) == (preview["n_angles"] == 1)
    assert scan.metadata["stages"] == ["normalize", "stripes", "center", "recon", "qc"]
