"""plans/ and callbacks/ ship inside the tomolive package, from the checkout and from a wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_imports_work_from_outside_the_checkout(tmp_path):
    code = (
        "import tomolive.plans, tomolive.callbacks, tomolive.tiled_config; print(tomolive.plans.tomo_scan.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "tomolive.plans.tomo_scan"
    bare = subprocess.run([sys.executable, "-c", "import plans"], cwd=tmp_path, capture_output=True)
    assert bare.returncode != 0, "a bare `plans` package must not be importable"


def test_wheel_contains_plans_callbacks_and_config(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO),
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            "-q",
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("tomolive-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in (
        "tomolive/__init__.py",
        "tomolive/plans/__init__.py",
        "tomolive/plans/tomo_scan.py",
        "tomolive/callbacks/__init__.py",
        "tomolive/callbacks/tomo_pipeline.py",
        "tomolive/tiled_config/sqlite.yml",
        "tomolive/server/static/index.html",
        "tomolive/server/static/view.js",
        "tomolive/recon/__init__.py",
        "tomolive/preprocess/__init__.py",
    ):
        assert expected in names, f"{expected} missing from {wheel.name}"
    assert not any(name.startswith(("plans/", "callbacks/", "src/")) for name in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "tomolive = tomolive.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
