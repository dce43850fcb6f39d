"""`ctfa predict` end to end with a real (tiny, random) model bundle."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pyogrio
import pytest
import rasterio
from rasterio.transform import from_origin

from tests.inference.helpers import SPEC, save_tiny_bundle, smooth_image, write_raster

GEO = {"crs": "EPSG:32632", "transform": from_origin(500000, 5600000, 0.5, 0.5)}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A vit_tiny CTFA network with random weights, saved as a model bundle."""
    return save_tiny_bundle(tmp_path_factory.mktemp("bundle") / "best.pt", seed=0)


@pytest.fixture
def scenes(tmp_path):
    folder = tmp_path / "scenes"
    folder.mkdir()
    return [write_raster(folder / f"scene{i}.tif", smooth_image(80, 100, seed=i), **GEO)
            for i in range(2)]


def test_one_scene_with_every_output_and_json(run_cli, bundle, scenes, tmp_path):
    out = tmp_path / "maps" / "scene0_classes.tif"
    code, stdout, stderr = run_cli("predict", scenes[0], "-m", bundle, "--out", out,
                                   "--vector", tmp_path / "maps" / "polygons.fgb", "--probs",
                                   "--tile", 64, "--overlap", 16, "--batch-size", 3,
                                   "--device", "cpu", "--json")
    assert code == 0, stderr
    (line,) = stdout.splitlines()
    record = json.loads(line)
    assert record["classes"] == str(out) and record["width"] == 100 and record["height"] == 80
    assert sum(record["class_pixels"].values()) == 80 * 100
    with rasterio.open(out) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.crs.to_epsg() == 32632 and src.transform == GEO["transform"]
        labels = src.read(1)
    assert set(np.unique(labels)) <= set(range(SPEC.num_classes))
    with rasterio.open(record["probs"]) as src:
        assert src.count == SPEC.num_classes
        # Softmax probabilities quantised to 0..255 still sum to about 255 per pixel.
        assert np.abs(src.read().astype(int).sum(0) - 255).max() <= SPEC.num_classes
    frame = pyogrio.read_dataframe(record["vector"])
    assert len(frame) == record["polygons"] > 0
    assert set(frame.class_name) <= set(SPEC.classes)


def test_folder_stdin_and_paths_on_a_pipe(run_cli, bundle, scenes, tmp_path, monkeypatch):
    maps = tmp_path / "maps"
    code, stdout, stderr = run_cli("predict", scenes[0].parent, "-m", bundle, "--out", maps,
                                   "--tile", 64, "--device", "cpu", "--vector", "geojson")
    assert code == 0, stderr
    assert sorted(p.name for p in maps.iterdir()) == [  # a STAC Item beside each map
        "scene0.geojson", "scene0.stac.json", "scene0.tif", "scene1.geojson", "scene1.stac.json",
        "scene1.tif"]
    # stdout is not a terminal: the class COGs' paths, one per line, nothing else
    assert stdout.splitlines() == [str(maps / "scene0.tif"), str(maps / "scene1.tif")]
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{scenes[1]}\n"))
    code, stdout, stderr = run_cli("predict", "-", "-m", bundle, "--out", tmp_path / "again",
                                   "--tile", 64, "--device", "cpu", "--json")
    assert code == 0, stderr
    assert [json.loads(line)["scene"] for line in stdout.splitlines()] == [str(scenes[1])]


def test_tta_option(run_cli, bundle, tmp_path):
    scene = write_raster(tmp_path / "small.tif", smooth_image(40, 50), **GEO)
    code, _, stderr = run_cli("predict", scene, "-m", bundle, "--out", tmp_path / "t.tif",
                              "--tile", 64, "--tta", "--device", "cpu")
    assert code == 0, stderr
    with rasterio.open(tmp_path / "t.tif") as src:
        assert (src.width, src.height) == (50, 40)
        assert (src.read(1) < SPEC.num_classes).all()


def test_amp_option(run_cli, bundle, tmp_path):
    scene = write_raster(tmp_path / "small.tif", smooth_image(40, 50), **GEO)
    code, _, stderr = run_cli("predict", scene, "-m", bundle, "--out", tmp_path / "b.tif",
                              "--tile", 64, "--amp", "bf16", "--device", "cpu")
    assert code == 0, stderr
    with rasterio.open(tmp_path / "b.tif") as src:
        assert (src.width, src.height) == (50, 40)
        assert (src.read(1) < SPEC.num_classes).all()
    code, _, stderr = run_cli("predict", scene, "-m", bundle, "--out", tmp_path / "c.tif",
                              "--amp", "fp16", "--device", "cpu")
    assert code == 2 and "unknown amp 'fp16'; choose one of none, bf16" in stderr
    assert "Traceback" not in stderr and not (tmp_path / "c.tif").exists()


def test_each_torchrun_rank_takes_its_share(run_cli, bundle, scenes, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    code, stdout, stderr = run_cli("predict", *scenes, "-m", bundle, "--out", tmp_path / "maps",
                                   "--tile", 64, "--device", "cpu", "--json")
    assert code == 0, stderr
    assert [json.loads(line)["scene"] for line in stdout.splitlines()] == [str(scenes[1])]
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["scene1.stac.json",
                                                                     "scene1.tif"]


def test_refusals_are_one_line_errors(run_cli, bundle, scenes, tmp_path):
    out = tmp_path / "c.tif"
    out.write_bytes(b"")
    common = ("-m", bundle, "--tile", 64, "--device", "cpu")
    code, _, stderr = run_cli("predict", scenes[0], "--out", out, *common)
    assert code == 1 and "already exists; pass --overwrite" in stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
    code, _, stderr = run_cli("predict", scenes[0], "--out", scenes[0], "--overwrite", *common)
    assert code == 1 and "refusing to write onto an input file" in stderr
    code, _, stderr = run_cli("predict", scenes[0], "--out", tmp_path / "x.tif", "--bands",
                              "1,2", *common)
    assert code == 1 and "selects 2 bands but the model expects 3" in stderr
    code, _, stderr = run_cli("predict", scenes[0], "--out", tmp_path / "x.tif", "--overlap",
                              64, *common)
    assert code == 2 and "--overlap 64 must be >= 0 and smaller than --tile 64" in stderr
    code, _, stderr = run_cli("predict", scenes[0], "--out", tmp_path / "x.tif", "-m",
                              tmp_path / "missing.pt")
    assert code == 1 and "missing.pt: no such checkpoint" in stderr
    assert not (tmp_path / "x.tif").exists()
