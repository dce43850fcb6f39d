"""`ctfa demo`: the whole pipeline on a tiny budget writes every file it lists; bad re-runs."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas
import numpy as np
import rasterio
from PIL import Image

from ctfa_cli.config import resolve_train_config
from ctfa_cli.demo import QUICK_BUDGET, demo_budget
from tests.training.helpers import tiny_set_options

# Three one-chip scenes (train, val, test) and one tiny training step: the real pipeline,
# in seconds. Single-scale CAMs and a short PAR keep evaluation and pseudo labels cheap.
TINY_DEMO = ["--scenes", "3", "--size", "160",
             *tiny_set_options(max_iters=1, warmup_iters=0, eval_every=1, cam_scales="[1.0]",
                               par_iters=2)]


def test_tiny_demo_writes_every_file_it_lists(run_cli, tmp_path):
    out = tmp_path / "demo"
    code, stdout, err = run_cli("demo", "--out", out, "--quick", "--device", "cpu", *TINY_DEMO)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 1 and summary["device"] == "cpu"
    assert summary["budget"]["name"] == "quick" and summary["budget"]["scenes"] == 3
    # every listed output exists and is printed on its own line with how to open it
    lines = stdout.splitlines()
    for item in summary["files"]:
        path = item["path"]
        assert Path(path).exists(), path
        assert any(line.startswith(path) and item["how"] in line for line in lines), path
    for target in ("seg", "cam", "pseudo", "pseudo_labels"):
        miou = summary["metrics"][target]["miou"]
        assert 0 <= miou <= 1, target
        assert summary["metrics"][target]["pixels"] > 0
    assert "mIoU" in stdout and "segmentation" in stdout

    # predict wrote the held-out scene (scene_002, the test split) on the scene's grid
    scene = out / "data" / "scenes" / "scene_002.tif"
    with rasterio.open(scene) as src, rasterio.open(out / "predict/scene_002.tif") as pred:
        assert pred.crs == src.crs and pred.transform == src.transform
        classes = pred.read(1)
    assert classes.shape == (160, 160) and classes.max() < 6
    with rasterio.open(out / "predict/scene_002_probs.tif") as probs:
        assert probs.count == 6
    polygons = geopandas.read_file(out / "predict/scene_002.gpkg")
    assert len(polygons) > 0 and polygons.crs == "EPSG:32633"
    # previews are real pictures: the mosaic has a row per test chip, the scene preview three
    # 480-px panels side by side
    with Image.open(out / "previews/chips.png") as mosaic:
        assert mosaic.width > 5 * 160 and np.asarray(mosaic).std() > 10
    with Image.open(out / "previews/scene_002.png") as preview:
        assert preview.width > 3 * 480 and preview.height > 480


def test_existing_folder_is_refused_without_overwrite(run_cli, tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, stdout, err = run_cli("demo", "--out", out, "--quick", "--device", "cpu")
    assert code == 1 and stdout == ""
    assert err.strip().count("\n") == 0 and str(out) in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_too_few_scenes_is_a_usage_error(run_cli, tmp_path):
    code, stdout, err = run_cli("demo", "--out", tmp_path / "demo", "--scenes", "2")
    assert code == 2 and stdout == ""
    assert "at least 3 scenes" in err and not (tmp_path / "demo").exists()


def test_quick_budget_is_a_valid_short_cpu_schedule():
    budget = demo_budget(True)
    assert budget == QUICK_BUDGET
    cfg = resolve_train_config("synthetic", "cpu", None, budget.train)
    default = resolve_train_config("synthetic", "cpu")
    # shorter than the default demo, validated once at the end, the seg branch trained
    assert cfg.max_iters < default.max_iters and cfg.eval_every == cfg.max_iters
    assert cfg.warmup_iters < cfg.seg_gate_iters < cfg.max_iters
    assert demo_budget(True, overrides={"max_iters": 5}).train["max_iters"] == 5
