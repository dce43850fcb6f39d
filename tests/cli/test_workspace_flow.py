"""The design card's command lines, verbatim, in a temporary home: the workspace's defaults."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from tests.datasets.fake_layouts import make_potsdam
from tests.training.helpers import tiny_set_options


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A temporary home directory with no workspace variable set: the real defaults apply
    (``~/ctfa``), and ``~`` is this folder. The current directory is ``home/work``."""
    home = tmp_path / "home"
    (home / "work").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("CTFA_HOME")
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.chdir(home / "work")
    return home


def scene(path: Path, seed: int, bands: tuple[str, ...] = ("r", "g", "b")) -> Path:
    """A 3-band 48×48 px UTM scene whose band descriptions name ``bands``."""
    image = np.random.default_rng(seed).integers(0, 256, (3, 48, 48), dtype=np.uint8)
    profile = {"driver": "GTiff", "count": 3, "height": 48, "width": 48, "dtype": "uint8",
               "crs": "EPSG:32633", "transform": from_origin(400000, 5800000, 0.5, 0.5)}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(image)
        dst.descriptions = bands
    return path


def test_prepare_train_twice_predict_as_written(run_cli, home):
    make_potsdam(home / "ctfa" / "raw" / "potsdam", size=48,
                 folders=("3_Ortho_IRRG", "5_Labels_all"))
    code, out, err = run_cli("prepare", "potsdam", "--json")
    assert code == 0, err
    assert json.loads(out)["out"] == str(home / "ctfa" / "data" / "potsdam")

    runs = []
    for _ in range(2):
        code, out, err = run_cli("train", "--dataset", "potsdam", "--preset", "cpu",
                                 "--max-iters", "2")
        assert code == 0, err
        assert out.splitlines()[1].startswith(' "run_dir": ')  # first field, for head/jq
        runs.append(json.loads(out))
    base = home / "ctfa" / "runs" / "potsdam"
    assert [r["run_dir"] for r in runs] == [str(base / "train"), str(base / "train2")]
    assert json.loads((base / "train2" / "run.json").read_text()) == runs[1]

    scene(home / "work" / "scene.tif", seed=1, bands=("IR", "R", "G"))  # the model's bands
    code, out, err = run_cli("predict", "scene.tif")
    assert code == 0, err
    written = home / "ctfa" / "predictions" / "potsdam" / "train2" / "scene.tif"
    assert out == f"{written}\n"  # the path only, for pipelines
    # the stderr log says which model (rich wraps it: compare without white space)
    assert f"model:{base / 'train2' / 'checkpoints' / 'best.pt'}(potsdam,6classes:" \
           "impervious_surfaces" in "".join(err.split())
    with rasterio.open(written) as src:
        assert src.crs.to_epsg() == 32633 and (src.width, src.height) == (48, 48)
    code, _, err = run_cli("predict", "scene.tif")
    assert code == 1 and "already exists; pass --overwrite" in err  # a default never clobbers

    # --resume without --out continues the newest run of the dataset; --name picks a folder.
    code, out, err = run_cli("train", "--dataset", "potsdam", "--resume", "--max-iters", "3")
    assert code == 0, err
    assert (json.loads(out)["run_dir"], json.loads(out)["step"]) == (str(base / "train2"), 3)
    options = ("train", "--dataset", "potsdam", "--preset", "cpu", "--max-iters", "1",
               "--name", "exp", *tiny_set_options())
    code, out, err = run_cli(*options)
    assert code == 0 and json.loads(out)["run_dir"] == str(base / "exp"), err
    code, _, err = run_cli(*options)
    assert code == 1 and "exp" in err and "--overwrite" in err
    # A dataset name, or a run name, as --model.
    code, out, err = run_cli("predict", "scene.tif", "--model", "potsdam/train", "--json")
    assert code == 0, err
    assert json.loads(out)["classes"] == str(
        home / "ctfa" / "predictions" / "potsdam" / "train" / "scene.tif")


def test_demo_then_predict_uses_the_demo_model(run_cli, home):
    # The tiny budget of tests/cli/test_demo.py.
    code, _, err = run_cli(
        "demo", "--quick", "--scenes", 3, "--size", 64,
        *tiny_set_options(max_iters=1, warmup_iters=0, eval_every=1, cam_scales="[1.0]",
                          seg_gate_iters=0))
    assert code == 0, err
    registered = home / "ctfa" / "runs" / "synthetic" / "demo" / "run.json"
    demo_model = home / "work" / "ctfa-demo" / "run" / "checkpoints" / "last.pt"
    assert json.loads(registered.read_text())["model"] == str(demo_model)
    for seed, name in enumerate(("a.tif", "b.tif")):
        scene(home / "work" / name, seed)
    code, out, err = run_cli("predict", "a.tif", "b.tif")
    assert code == 0, err
    folder = home / "ctfa" / "predictions" / "synthetic" / "demo"
    assert out.splitlines() == [str(folder / "a.tif"), str(folder / "b.tif")]
    for line in out.splitlines():  # `| xargs -n1 gdalinfo`: every line opens as a raster
        with rasterio.open(line) as src:
            assert src.count == 1 and src.crs.to_epsg() == 32633
    assert f"model:{demo_model}(synthetic" in "".join(err.split())


def test_each_missing_thing_says_how_to_make_it(run_cli, home, monkeypatch):
    scene(home / "work" / "scene.tif", seed=0)
    code, _, err = run_cli("predict", "scene.tif")
    assert code == 1 and err.startswith("Error: no trained model yet: run `ctfa demo` or "
                                        "`ctfa train …`, or pass --model")
    code, _, err = run_cli("prepare", "potsdam")
    assert code == 1 and err.count("\n") == 1
    assert f"no potsdam release: {home / 'ctfa' / 'raw' / 'potsdam'} does not exist;" in err
    assert "Potsdam.zip" in err and "2d-sem-label-potsdam.aspx" in err
    (home / "ctfa" / "raw" / "deepglobe").mkdir(parents=True)
    code, _, err = run_cli("prepare", "deepglobe")
    assert code == 1 and "deepglobe does not exist" not in err and "is empty" in err
    assert "deepglobe.org" in err
    code, _, err = run_cli("train", "--dataset", "isaid")
    assert code == 1 and "no prepared isaid DATA_DIR at" in err
    assert "`ctfa prepare isaid`" in err
    code, _, err = run_cli("train")
    assert code == 2 and "pass --dataset NAME" in err
    code, _, err = run_cli("train", "--dataset", "vaihingen", "--data", home, "--resume")
    assert code == 1 and "no run of vaihingen to resume" in err
    # A variable that points at a missing folder is named by the verb that needed it.
    monkeypatch.setenv("CTFA_RAW_DIR", str(home / "elsewhere"))
    code, _, err = run_cli("prepare", "vaihingen")
    assert code == 1 and f"{home / 'elsewhere' / 'vaihingen'} does not exist (raw folder " \
                         "set by environment CTFA_RAW_DIR)" in err
    monkeypatch.setenv("CTFA_RUNS_DIR", str(home / "no-runs"))
    code, _, err = run_cli("predict", "scene.tif")
    assert code == 1 and "(runs folder set by environment CTFA_RUNS_DIR)" in err


def test_root_flags_after_the_verb(run_cli, home):
    code, out, err = run_cli("prepare", "synthetic", "--scenes", 2, "--size", 64, "--json",
                             "-q")
    assert code == 0, err
    assert json.loads(out)["out"] == str(home / "ctfa" / "data" / "synthetic")
    assert "INFO" not in err  # -q took effect
    code, out, _ = run_cli("settings", "--json", "--home", home / "h")
    assert code == 2  # --home is a root option only: it goes before the verb
    code, out, _ = run_cli("--home", home / "h", "settings", "--json")
    assert json.loads(out)["roots"]["runs"] == {"path": str(home / "h" / "runs"),
                                                "source": "flag --home"}
