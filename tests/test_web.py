"""The web view in a real browser: headless Debian chromium against the live Tiled server."""

from __future__ import annotations

import re
import shutil
import subprocess
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
    """Text of one row of the page's metadata table."""
    found = re.search(rf"<th>{re.escape(name)}</th><td[^>]*>([^<]*)</td>", dom)
    assert found, f"no {name!r} row in the page"
    return found.group(1)


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
