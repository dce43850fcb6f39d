"""`ctfa export` and `ctfa predict --model model.onnx` end to end."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from tests.inference.helpers import save_tiny_bundle, smooth_image, write_raster


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return save_tiny_bundle(tmp_path_factory.mktemp("bundle") / "best.pt", seed=1)


def test_export_then_predict_with_onnx_equals_the_checkpoint(run_cli, bundle, tmp_path):
    out = tmp_path / "export" / "model.onnx"
    code, stdout, stderr = run_cli("export", "-m", bundle, "--out", out, "--resolution", "50",
                                   "--json")
    assert code == 0, stderr
    record = json.loads(stdout)
    assert record["onnx"] == str(out) and record["outputs"] == ["probs"]
    assert record["max_abs_diff"] <= 1e-4 and record["resolution_cm"] == 50.0
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx"]  # no temporary left
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["probs"]
    assert json.loads(session.get_modelmeta().custom_metadata_map["resolution"]) == 50.0

    scene = write_raster(tmp_path / "scene.tif", smooth_image(96, 120, seed=5),
                         crs="EPSG:32632", transform=from_origin(500000, 5600000, 0.5, 0.5))
    maps = {}
    for name, model in (("pt", bundle), ("onnx", out)):
        target = tmp_path / f"map_{name}.tif"
        code, stdout, stderr = run_cli("predict", scene, "-m", model, "--out", target,
                                       "--tile", 64, "--overlap", 16, "--device", "cpu",
                                       "--probs")
        assert code == 0, stderr
        assert stdout.splitlines() == [str(target)]
        with rasterio.open(target) as src:
            maps[name] = src.read(1)
            assert src.crs.to_epsg() == 32632
        with rasterio.open(tmp_path / f"map_{name}_probs.tif") as src:
            maps[f"{name}_probs"] = src.read().astype(int)
    item = json.loads((tmp_path / "map_onnx.stac.json").read_text())
    assert item["properties"]["ctfa:model_format"] == "ctfa-onnx/1"
    assert item["properties"]["ctfa:model"] == str(out.absolute())
    assert item["properties"]["ctfa:model_source_sha256"] == record["sha256"]
    item = json.loads((tmp_path / "map_pt.stac.json").read_text())
    assert item["properties"]["ctfa:model_format"] == "ctfa-bundle/1"
    assert item["properties"]["ctfa:model_sha256"] == record["sha256"]
    assert item["properties"]["ctfa:backbone"] == "vit_tiny_patch16_224"
    # Probabilities stored as round(p·255) differ by at most one step where p sits on a
    # rounding boundary; classes differ at most where two classes tie within the tolerance.
    assert np.abs(maps["pt_probs"] - maps["onnx_probs"]).max() <= 1
    assert (maps["pt"] != maps["onnx"]).mean() < 0.01


def test_export_refuses_existing_output_and_foreign_files(run_cli, bundle, tmp_path):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"keep me")
    code, stdout, stderr = run_cli("export", "-m", bundle, "--out", out)
    assert code == 1 and stdout == ""
    assert stderr.strip() == f"Error: {out} already exists; pass --overwrite to replace it"
    assert out.read_bytes() == b"keep me"
    code, stdout, stderr = run_cli("export", "-m", bundle, "--out", out, "--overwrite", "--cams")
    assert code == 0, stderr
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["probs", "cam", "aux_cam"]

    foreign = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, foreign)
    code, _, stderr = run_cli("export", "-m", foreign, "--out", tmp_path / "foreign.onnx")
    assert code == 1 and len(stderr.strip().splitlines()) == 1
    assert f"{foreign}: not a ctfa model bundle" in stderr
    assert not (tmp_path / "foreign.onnx").exists()


def test_predict_with_onnx_refuses_tta(run_cli, bundle, tmp_path):
    out = tmp_path / "model.onnx"
    assert run_cli("export", "-m", bundle, "--out", out)[0] == 0
    scene = write_raster(tmp_path / "scene.tif", smooth_image(64, 64, seed=1))
    code, _, stderr = run_cli("predict", scene, "-m", out, "--out", tmp_path / "m.tif", "--tta")
    assert code == 2 and "--tta and --amp work with checkpoints only" in stderr
    code, _, stderr = run_cli("predict", scene, "-m", out, "--out", tmp_path / "m.tif",
                              "--no-stac")
    assert code == 0, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tif", "model.onnx", "scene.tif"]
