"""The web view in a real browser: headless Debian chromium against the live Tiled server."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from skimage.feature import match_template
from tiled.client import from_uri

from tomolive.recon import reconstruct
from tomolive.server.web import web_url
from tomolive.sim.devices import make_sim_beamline
from tomolive.sim.phantoms import make_foam

from .web_scans import THIN_ROWS, process_thin_file

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium): no browser to drive"
)

MATCH_FLOOR = 0.98
"""Peak normalised cross-correlation between the screenshot and a slice read from Tiled: the
right slice matches almost exactly, any wrong picture far lower (docs/measurements/moves.md)."""
ZOOMS = (1, 2, 3, 4)


def browse(url: str, tmp_path: Path, name: str) -> tuple[np.ndarray, str]:
    """Open ``url`` in a fresh headless profile: the screenshot (grey levels) and the DOM."""
    png = tmp_path / f"{name}.png"
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--user-data-dir={tmp_path / name}",
        "--window-size=1280,1000",
        "--virtual-time-budget=15000",
        f"--screenshot={png}",
        "--dump-dom",
        url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, check=True)
    return np.asarray(Image.open(png).convert("L"), dtype=np.float32), result.stdout


def best_match(screen: np.ndarray, image: np.ndarray) -> float:
    """Highest correlation of ``image``, drawn at any integer zoom, anywhere on ``screen``."""
    scores = []
    for zoom in ZOOMS:
        template = np.kron(image.astype(np.float32), np.ones((zoom, zoom), np.float32))
        if template.shape[0] <= screen.shape[0] and template.shape[1] <= screen.shape[1]:
            scores.append(float(match_template(screen, template).max()))
    return max(scores)


def row(dom: str, name: str) -> str:
    """Text of one row of the page's metadata (or outputs) table."""
    found = re.search(rf"<th>{re.escape(name)}</th><td[^>]*>([^<]*)</td>", dom)
    assert found, f"no {name!r} row in the page"
    return html.unescape(found.group(1))


def caption(dom: str, panel: str) -> str:
    """Caption of the image panel ``panel`` (an array's name, or xy / xz / yz)."""
    found = re.search(rf'<figure id="panel-{re.escape(panel)}">.*?<figcaption>([^<]*)</figcaption>', dom, re.S)
    assert found, f"no shown {panel!r} panel in the page"
    return html.unescape(found.group(1))


def img_size(dom: str, panel: str) -> tuple[int, int]:
    """(height, width) the page draws panel ``panel``'s image at."""
    found = re.search(rf'<figure id="panel-{re.escape(panel)}">.*?<img [^>]*width="(\d+)" height="(\d+)"', dom, re.S)
    assert found, f"no shown {panel!r} panel in the page"
    return int(found.group(2)), int(found.group(1))


def match_at(screen: np.ndarray, image: np.ndarray, zoom_y: int, zoom_x: int) -> float:
    """Correlation of ``image`` drawn ``zoom_y`` x ``zoom_x`` screen pixels per pixel, best place on ``screen``."""
    template = np.kron(image.astype(np.float32), np.ones((zoom_y, zoom_x), np.float32))
    return float(match_template(screen, template).max())


def test_page_shows_central_slices_and_metadata(tiled_server, pipeline, beamline, run_scan, tmp_path):
    uid = run_scan(beamline, sample="foam-web")
    assert pipeline.wait(uid, timeout=300).status == "complete"
    scan = from_uri(tiled_server.uri, api_key=tiled_server.api_key)["processed"][uid]
    recon, preview, md = scan["recon"].read(), scan["preview"].read(), scan.metadata
    nz, ny, nx = recon.shape

    screen, dom = browse(f"{web_url(tiled_server.uri)}?scan={uid}&api_key={tiled_server.api_key}", tmp_path, "key")
    shown = {
        "xy": recon[nz // 2],
        "xz": recon[:, ny // 2],
        "yz": recon[:, :, nx // 2],
        "preview": preview[len(preview) // 2],
    }
    scores = {name: best_match(screen, image) for name, image in shown.items()}
    assert min(scores.values()) >= MATCH_FLOOR, scores

    # The check tells the right slice from plausible wrong ones.
    angles = np.linspace(0, np.pi, 120, endpoint=False)
    other = make_sim_beamline(make_foam((16, 96, 96), seed=12), photons=None, seed=12).phantom
    wrong = {
        "other foam": reconstruct(other.sinogram(angles)[:, nz // 2 : nz // 2 + 1], angles)[0],
        "4 planes away": recon[nz // 2 - 4],
        "transposed": recon[nz // 2].T,
    }
    wrong_scores = {name: best_match(screen, image) for name, image in wrong.items()}
    assert max(wrong_scores.values()) < MATCH_FLOOR, wrong_scores

    assert row(dom, "sample") == "foam-web" and row(dom, "status") == "complete"
    assert row(dom, "raw uid") == uid and row(dom, "scan id") == str(md["scan_id"])
    centre = float(row(dom, "rotation centre").split()[0])
    assert abs(centre - md["provenance"]["center"]["center"]) < 0.01
    assert float(row(dom, "SNR")) == pytest.approx(md["qc"]["snr"], rel=1e-3)
    assert float(row(dom, "CNR")) == pytest.approx(md["qc"]["cnr"], rel=1e-3)
    assert row(dom, "QC alerts") == ("; ".join(md["qc"]["alerts"]) or "none")

    # Without a key the page reads nothing, says so, and no slice is on screen.
    blank, dom = browse(f"{web_url(tiled_server.uri)}?scan={uid}", tmp_path, "nokey")
    blank_score = best_match(blank, shown["xy"])
    assert blank_score < MATCH_FLOOR, blank_score
    assert '<form id="login" method="get">' in dom and "needs an API key" in dom
    served = [httpx.get(web_url(tiled_server.uri) + name).text for name in ("", "view.js")]
    assert not any(tiled_server.api_key in text for text in served)


# --- a scan processed from a file, other techniques' results, the key statement ---------------


@pytest.fixture(scope="module")
def file_scan(tiled_server, dask_client, tmp_path_factory) -> str:
    """``tomolive process`` on a small DXchange file of a thin foam: the processed uid."""
    return process_thin_file(tiled_server, dask_client.scheduler.address, tmp_path_factory.mktemp("web-file"))


def test_page_shows_a_thin_scan_processed_from_a_file(tiled_server, file_scan, tmp_path):
    scan = from_uri(tiled_server.uri, api_key=tiled_server.api_key)["processed"][file_scan]
    recon, md, preview_md = scan["recon"].read(), scan.metadata, scan["preview"].metadata
    nz, ny, nx = recon.shape
    assert nz == THIN_ROWS[1] - THIN_ROWS[0] and md["tomo"]["angular_range"] == 178.0

    screen, dom = browse(
        f"{web_url(tiled_server.uri)}?scan={file_scan}&api_key={tiled_server.api_key}", tmp_path, "file"
    )
    assert row(dom, "angles") == "90 over 178 deg (0 to 178)"
    assert row(dom, "source") == f"{md['source']} (dxchange)" and row(dom, "volume") == f"{nz} x {ny} x {nx}"
    assert "#?" not in dom and "undefined" not in dom and "NaN" not in dom
    assert "<th>edge width (px)</th><td>0</td>" not in dom
    # The preview says how many of the file's angles it holds, over which range, and what it skipped.
    low, high = preview_md["angle_range_deg"]
    said = caption(dom, "preview")
    assert f"{preview_md['n_angles']} angles ({low:.4g} to {high:.4g} deg)" in said, said
    if preview_md.get("frames_dropped"):
        assert f"{preview_md['frames_dropped']} projections not previewed" in said

    # A 2-slice volume: xz and yz stretched along z to a visible strip, said so, and drawn right.
    scale = 256 // nx
    stretch = -(-32 // (nz * scale))
    assert img_size(dom, "xy") == (ny * scale, nx * scale)
    for panel, image in (("xz", recon[:, ny // 2]), ("yz", recon[:, :, nx // 2])):
        assert img_size(dom, panel) == (nz * scale * stretch, nx * scale)
        assert f"z drawn {stretch}x taller ({nz} slices)" in caption(dom, panel)
        score = match_at(screen, image, scale * stretch, scale)
        assert score >= MATCH_FLOOR, (panel, score)
    assert match_at(screen, recon[nz // 2], scale, scale) >= MATCH_FLOOR

    # Each stage with what it wrote; the preview as written during acquisition.
    assert md["stages"] == ["normalize", "stripes", "center", "recon", "qc"]
    assert row(dom, "recon").startswith(f"recon ({nz} x {ny} x {nx} f32)")
    assert row(dom, "center").startswith("rotation centre") and row(dom, "qc").startswith("QC numbers")
    assert row(dom, "during acquisition") == "preview ({} x {} x {} f32)".format(*scan["preview"].shape)


def _ptycho_and_bragg(tiled_server) -> tuple[str, str, dict[str, np.ndarray]]:
    """Results of two other techniques written straight into Tiled: no tomo keys, no recon."""
    import pandas as pd

    from tomolive.store import connect, processed_root

    root = processed_root(connect(tiled_server.uri, api_key=tiled_server.api_key))
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:48, :48]
    images = {
        "object_phase": np.sin(xx / 5.0) * np.cos(yy / 7.0) + 0.1 * rng.standard_normal((48, 48)),
        "object_amplitude": np.hypot(xx - 20, yy - 28) + 3 * rng.standard_normal((48, 48)),
        "preview_phase": rng.standard_normal((32, 32)),
        "preview_amplitude": np.add.outer(np.arange(32.0), np.arange(32.0) ** 1.5) % 17,
    }
    filler = {"sample": "filler-web", "status": "complete", "created": "2021-01-01T00:00:00+00:00"}
    for _ in range(100):  # newer than the ptycho result only: it falls out of the listing's newest 100
        root.create_container(f"filler-{uuid.uuid4().hex[:8]}", metadata=filler)
    uids = []
    for technique, md in (
        ("ptycho", {"sample": "ptycho-web", "stages": ["ptycho_recon"], "ptycho": {"n_positions": 400}}),
        ("bragg", {"sample": "bragg-web", "stages": ["peaks"]}),
    ):
        uid = f"{technique}-{uuid.uuid4().hex[:8]}"
        provenance = {"parameters": {"technique": technique}, "seconds_per_stage": {md["stages"][0]: 1.5}}
        # the ptycho result is older than the listing's newest 100: asked for by uid, it is still shown
        created = "2020-01-01T00:00:00+00:00" if technique == "ptycho" else datetime.now(UTC).isoformat()
        node = root.create_container(
            uid, metadata={**md, "status": "complete", "created": created, "provenance": provenance}
        )
        if technique == "ptycho":
            for key, image in images.items():
                node.write_array(image.astype(np.float32), key=key)
        else:
            peaks = pd.DataFrame({"frame": [0, 0, 3], "x": [10.2, 40.7, 12.0], "y": [5.5, 9.1, 30.3]})
            node.write_table(peaks, key="peaks")
        uids.append(uid)
    return uids[0], uids[1], images


def test_results_of_other_techniques_show_their_images_and_stages(tiled_server, file_scan, tmp_path, capsys):
    from tomolive.cli import main

    ptycho, bragg, images = _ptycho_and_bragg(tiled_server)
    key = tiled_server.api_key or ""
    screen, dom = browse(f"{web_url(tiled_server.uri)}?scan={ptycho}&api_key={key}", tmp_path, "ptycho")
    for name, image in images.items():
        assert caption(dom, name) == name
        zoom = 256 // image.shape[0]
        assert img_size(dom, name) == (image.shape[0] * zoom,) * 2
        score = match_at(screen, image, zoom, zoom)
        assert score >= MATCH_FLOOR, (name, score)
    assert row(dom, "technique") == "ptycho" and row(dom, "ptycho.n_positions") == "400"
    assert row(dom, "ptycho_recon") == "1.5 s"
    assert row(dom, "other outputs").startswith("object_amplitude (48 x 48 f32); object_phase")
    assert row(dom, "during acquisition").startswith("preview_amplitude (32 x 32 f32)")
    assert "Could not read" not in dom and 'id="panel-xy"' not in dom
    # The listing holds every kind of result: these two, and a tomography scan.
    options = dict(re.findall(r'<option value="([^"]+)"[^>]*>([^<]*)</option>', dom))
    assert options[bragg].startswith("bragg-web · bragg · complete") and options[ptycho].startswith("ptycho-web")
    assert options[file_scan].startswith("thin-file · complete")

    _, dom = browse(f"{web_url(tiled_server.uri)}?scan={bragg}&api_key={key}", tmp_path, "bragg")
    assert row(dom, "peaks") == "peaks (table: frame, x, y); 1.5 s" and row(dom, "technique") == "bragg"
    assert "Could not read" not in dom and "<figure" not in dom

    assert main(["ls", "--uri", tiled_server.uri, "--api-key", key, "--sample", "bragg-web"]) == 0
    assert bragg in capsys.readouterr().out


def test_the_page_explains_an_edge_width_of_0_and_a_preview_that_waited(tiled_server, tmp_path):
    from tomolive.store import connect, processed_root
    from tomolive.techniques.tomo.acquisition import FLATS_ARRIVED

    uid = f"edge0-{uuid.uuid4().hex[:8]}"
    md = {"sample": "edge0-web", "status": "complete", "created": datetime.now(UTC).isoformat(),
          "preview_status": FLATS_ARRIVED, "qc": {"edge_width_px": 0, "alerts": []}}  # fmt: skip
    processed_root(connect(tiled_server.uri, api_key=tiled_server.api_key)).create_container(uid, metadata=md)
    _, dom = browse(f"{web_url(tiled_server.uri)}?scan={uid}&api_key={tiled_server.api_key}", tmp_path, "edge0")
    assert row(dom, "edge width (px)") == "0 (at the limit of the measurement: sharper than 1 px, or noise)"
    assert row(dom, "live preview") == FLATS_ARRIVED
