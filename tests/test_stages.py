"""Users' own stages, registered through the ``tomolive.stages`` entry-point group, run in a real scan."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from site import addsitedir

import numpy as np
import pytest
from bluesky import RunEngine
from scipy.ndimage import median_filter
from tiled.queries import Key

from tomolive.errors import BadInputError
from tomolive.stages import BlockStage, available_stages, load_stage
from tomolive.store import connect
from tomolive.techniques.tomo import PipelineParams

STAGES_MODULE = '''
import numpy as np
from tomolive.stages import BlockStage


def scaled(block, *, factor=1.0, offset=0.0):
    """A plain function: a float32 volume of the block's shape."""
    return factor * block + offset


def _z_gradient(block):
    return np.gradient(block, axis=0)


def _above(block, *, level):
    return {"mean": float(block.mean()), "fraction_above": float((block > level).mean())}


z_gradient = BlockStage(_z_gradient, overlap=1)  # needs one neighbour slice each side
above = BlockStage(_above, output="metrics")
'''


def install(site: Path, module: str, version: str, source: str, stages: tuple[str, ...]) -> None:
    """What ``pip install --target site`` of a distribution declaring ``stages`` would leave."""
    (site / module).mkdir(parents=True)
    (site / module / "__init__.py").write_text(source)
    info = site / f"{module}-{version}.dist-info"
    info.mkdir()
    name = module.replace("_", "-")
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{stage} = {module}:{stage}\n" for stage in stages)
    (info / "entry_points.txt").write_text(f"[tomolive.stages]\n{lines}")


@pytest.fixture
def user_stages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dask_client) -> Iterator[Path]:
    """A distribution ``tomolive-test-stages 0.3`` installed (on sys.path) here and on the workers."""
    site = tmp_path / "site"
    install(site, "tomolive_test_stages", "0.3", STAGES_MODULE, ("scaled", "z_gradient", "above"))
    monkeypatch.syspath_prepend(str(site))
    dask_client.run(addsitedir, str(site))  # installed where the workers run, too
    yield site
    sys.modules.pop("tomolive_test_stages", None)


def test_entry_point_stages_run_in_a_scan_and_land_in_tiled(
    tiled_server, pipeline, monkeypatch, beamline, scan_plan, user_stages
):
    names = ("z_gradient", "scaled", "above")
    stage_params = {"scaled": {"factor": 2.0, "offset": 1.0}, "above": {"level": 0.01}}
    params = PipelineParams(rows_per_block=4, extra_stages=names, stage_params=stage_params)  # 4 blocks
    monkeypatch.setattr(pipeline, "params", params)
    RE = RunEngine()
    RE.subscribe(pipeline)
    (uid,) = RE(scan_plan(beamline, n_angles=90, md={"sample": "foam-stages"}))
    outcome = pipeline.wait(uid, timeout=300)
    assert outcome.status == "complete", outcome.reason

    client = connect(tiled_server.uri, api_key=tiled_server.api_key)
    scan = client["processed"][uid]
    recon = scan["recon"].read()
    assert scan["scaled"].dtype == np.float32 and scan["scaled"].shape == recon.shape
    np.testing.assert_allclose(scan["scaled"].read(), 2.0 * recon + 1.0, rtol=1e-6)
    # Block edges see their neighbours (overlap=1): same as the gradient of the whole volume.
    np.testing.assert_allclose(scan["z_gradient"].read(), np.gradient(recon, axis=0), rtol=1e-6, atol=1e-7)
    md = scan.metadata
    np.testing.assert_allclose(md["metrics"]["above"]["mean"], recon.mean(dtype=np.float64), rtol=1e-5)
    assert md["metrics"]["above"]["fraction_above"] == pytest.approx((recon > 0.01).mean())
    assert md["stages"][-3:] == list(names)
    records = {r["name"]: r for r in md["provenance"]["extra_stages"]}
    assert records["scaled"] == {
        "name": "scaled",
        "distribution": "tomolive-test-stages",
        "version": "0.3",
        "value": "tomolive_test_stages:scaled",
        "output": "volume",
        "params": {"factor": 2.0, "offset": 1.0},
    }
    assert records["above"]["output"] == "metrics" and records["above"]["params"] == {"level": 0.01}
    assert set(names) <= set(md["provenance"]["seconds_per_stage"])
    assert uid in client["processed"].search(Key("metrics.above.fraction_above") > 0)


def test_stage_names_are_checked_with_the_available_ones_listed(user_stages):
    assert {"median", "scaled", "z_gradient", "above"} <= set(available_stages())
    with pytest.raises(BadInputError, match=r"unknown stage 'nope'; available stages: \[.*'median'.*'scaled'"):
        PipelineParams(extra_stages=("nope",))
    with pytest.raises(BadInputError, match="tuple of stage names"):
        PipelineParams(extra_stages="median")
    with pytest.raises(BadInputError, match="one of tomolive's own arrays"):
        PipelineParams(extra_stages=("recon",))
    with pytest.raises(BadInputError, match=r"stage_params given for \['scaled'\]"):
        PipelineParams(extra_stages=("median",), stage_params={"scaled": {}})
    loaded = load_stage("scaled")
    assert loaded.stage.output == "volume" and loaded.source["version"] == "0.3"


def test_builtin_median_stage_matches_scipy():
    block = np.random.default_rng(0).random((6, 20, 20), dtype=np.float32)
    median = load_stage("median")
    assert median.source["distribution"] == "tomolive" and median.stage.overlap >= 1
    np.testing.assert_array_equal(median.stage(block, size=3), median_filter(block, size=3, mode="nearest"))
    with pytest.raises(BadInputError, match="size must be 1, 3 or 5"):
        median.stage(block, size=7)


def test_stage_declarations_are_checked():
    with pytest.raises(BadInputError, match="output must be one of"):
        BlockStage(np.negative, output="image")
    with pytest.raises(BadInputError, match="overlap=0"):
        BlockStage(np.mean, output="metrics", overlap=1)


def test_a_stage_missing_on_the_workers_fails_the_scan_clearly(pipeline, tmp_path, monkeypatch, beamline, scan_plan):
    site = tmp_path / "client-only"
    install(site, "tomolive_client_only", "1.0", "def doubled(block):\n    return 2 * block\n", ("doubled",))
    monkeypatch.syspath_prepend(str(site))  # not on the workers
    monkeypatch.setattr(pipeline, "params", PipelineParams(extra_stages=("doubled",)))
    RE = RunEngine()
    RE.subscribe(pipeline)
    (uid,) = RE(scan_plan(beamline, n_angles=60))
    outcome = pipeline.wait(uid, timeout=300)
    sys.modules.pop("tomolive_client_only", None)
    assert outcome.status == "failed"
    assert "stage 'doubled' cannot be loaded on the Dask worker" in outcome.reason
    assert "install its distribution where the workers run" in outcome.reason
