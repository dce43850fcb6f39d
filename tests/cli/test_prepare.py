"""`ctfa prepare synthetic` through the console entry point: outputs, re-runs and exit codes."""

from __future__ import annotations

import json

import geopandas
import numpy as np
import pytest

from ctfa_cli.datasets.datadir import DataDir

ARGS = ("--scenes", 3, "--size", 192, "--tile", 96)


@pytest.fixture
def prepared(run_cli, tmp_path):
    out = tmp_path / "d"
    code, stdout, stderr = run_cli("prepare", "synthetic", "--out", out, *ARGS)
    assert code == 0, stderr
    return out, stdout


def test_prepare_synthetic_writes_a_georeferenced_datadir(prepared):
    out, stdout = prepared
    for name in ("class", "building", "low_vegetation", "train", "val", "test"):
        assert name in stdout  # the summary table goes to stdout
    data = DataDir.open(out)
    assert data.spec.name == "synthetic" and data.spec.tile_size == 96
    assert data.meta["chips"] == {"train": 4, "val": 4, "test": 4}
    chips = geopandas.read_file(out / "chips.gpkg")
    assert len(chips) == 12 and chips.crs.to_epsg() == 32633
    assert list(chips.geom_type.unique()) == ["Polygon"] and chips["chip_id"].is_unique
    for _, row in data.chips.iterrows():
        _, mask = data.read_chip(row)
        assert data.labels(row) == sorted(set(np.unique(mask).tolist()) - {0, 255})
    assert [p.name for p, _ in data.scene_paths("test")] == ["scene_002.tif"]
    assert len(data.scene_paths()) == 3


def test_rerun_reuses_and_prints_json(prepared, run_cli):
    out, _ = prepared
    code, stdout, stderr = run_cli("prepare", "synthetic", "--out", out, *ARGS, "--json")
    assert code == 0, stderr
    summary = json.loads(stdout)  # stdout holds the JSON only; logs went to stderr
    assert summary["reused_scenes"] == 3
    assert summary["chips"] == {"train": 4, "val": 4, "test": 4}
    assert set(summary["class_frequency"]) == set(DataDir.open(out).spec.classes)


def test_other_settings_are_refused_then_rebuilt_with_overwrite(prepared, run_cli):
    out, _ = prepared
    code, stdout, stderr = run_cli("prepare", "synthetic", "--out", out, *ARGS, "--seed", 1)
    assert code == 1 and stdout == ""
    assert stderr.startswith("Error: ") and "--overwrite" in stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
    code, _, stderr = run_cli("prepare", "synthetic", "--out", out, *ARGS, "--seed", 1,
                              "--overwrite", "--json")
    assert code == 0, stderr
    assert "seed 1" in DataDir.open(out).meta["source"]


def test_foreign_folder_is_refused(run_cli, tmp_path):
    (tmp_path / "holiday.jpg").write_bytes(b"\xff\xd8")
    code, stdout, stderr = run_cli("prepare", "synthetic", "--out", tmp_path, *ARGS)
    assert code == 1 and stdout == ""
    assert f"{tmp_path} holds files that are not a ctfa DATA_DIR" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["holiday.jpg"]


@pytest.mark.parametrize("args", [
    ("--tile", 64, "--stride", 100),  # stride larger than the tile
    ("--scenes", 0),
    ("--size", 8),
    ("--workers", -1),
])
def test_bad_options_are_usage_errors(run_cli, tmp_path, args):
    code, stdout, _ = run_cli("prepare", "synthetic", "--out", tmp_path / "d", *args)
    assert code == 2 and stdout == ""
    assert not (tmp_path / "d").exists()


def test_help_lists_the_options(run_cli):
    code, stdout, _ = run_cli("prepare", "synthetic", "--help")
    assert code == 0
    for option in ("--out", "--scenes", "--size", "--seed", "--tile", "--stride", "--workers",
                   "--overwrite", "--json"):
        assert option in stdout
