"""ONNX export (``ctfa_cli.inference.onnx_export``) and the ONNX predictor, against PyTorch.

Tolerance: softmax probabilities of the exported graph (onnxruntime, CPU, float32) must equal
PyTorch's within 1e-4 absolute (measured ~1e-7 on these tiles).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from ctfa_cli import __version__
from ctfa_cli.errors import CtfaError
from ctfa_cli.inference.onnx_export import export_onnx
from ctfa_cli.inference.onnx_predict import OnnxPredictor, model_predictor
from ctfa_cli.inference.predict import BundlePredictor, PredictOptions, predict_scene, sweep
from ctfa_cli.inference.reader import SceneReader
from ctfa_cli.model.bundle import load_bundle
from tests.inference.helpers import SPEC, save_tiny_bundle, smooth_image, write_raster

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A vit_tiny CTFA network with random weights (decoder too), saved as a model bundle."""
    return save_tiny_bundle(tmp_path_factory.mktemp("bundle") / "best.pt", seed=0)


@pytest.fixture(scope="module")
def exported(bundle, tmp_path_factory):
    """The bundle exported with the CAM heads and a stated resolution."""
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    result = export_onnx(bundle, out, cams=True, resolution_cm=5.0)
    return out, result


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 48, 80), (1, 3, 224, 224)])
def test_onnx_equals_pytorch_on_random_tiles_of_any_size(bundle, exported, shape):
    # 224 is the ViT's own 14×14 grid (no resampling of position embeddings), 48×80 a
    # non-square tile; all run through the one dynamic graph.
    path, _ = exported
    model = load_bundle(bundle).model
    tile = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    with torch.no_grad():
        probs = model.segment(tile).softmax(1)
        cam, aux_cam = model.cams(tile)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = dict(zip(["probs", "cam", "aux_cam"], session.run(None, {"image": tile.numpy()}),
                   strict=True))
    assert got["probs"].shape == (shape[0], 4, shape[2], shape[3])
    assert got["cam"].shape == (shape[0], 3, shape[2] // 16, shape[3] // 16)
    np.testing.assert_allclose(got["probs"], probs.numpy(), atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(got["cam"], cam.numpy(), atol=1e-3, rtol=1e-4)
    np.testing.assert_allclose(got["aux_cam"], aux_cam.numpy(), atol=1e-3, rtol=1e-4)


def test_metadata_round_trips_with_deepness_and_ctfa_keys(bundle, exported):
    path, result = exported
    meta = {k: json.loads(v) for k, v in ort.InferenceSession(
        str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map.items()}
    assert meta["model_type"] == "Segmentor"
    assert meta["class_names"] == {"0": "background", "1": "building", "2": "tree", "3": "water"}
    assert meta["resolution"] == 5.0
    assert meta["tile_size"] == meta["tiles_size"] == 64
    assert meta["tiles_overlap"] == 25
    assert meta["standardization_mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta["standardization_std"] == pytest.approx([0.229, 0.224, 0.225])
    assert meta["ctfa_format"] == "ctfa-onnx/1"
    assert meta["ctfa_version"] == __version__
    assert meta["ctfa_dataset"] == "tiny"
    assert meta["ctfa_bands"] == ["r", "g", "b"]
    assert meta["ctfa_palette"] == [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]]
    assert meta["ctfa_patch_size"] == 16
    assert meta["ctfa_outputs"] == ["probs", "cam", "aux_cam"]
    assert meta["ctfa_backbone"] == "vit_tiny_patch16_224"
    assert meta["ctfa_source_checkpoint"] == "best.pt"
    assert meta["ctfa_source_sha256"] == hashlib.sha256(bundle.read_bytes()).hexdigest()
    assert meta["ctfa_spec"]["classes"] == ["background", "building", "tree", "water"]
    assert result.sha256 == meta["ctfa_source_sha256"]
    assert result.max_abs_diff <= TOLERANCE
    # The ONNX predictor reads the same spec back.
    predictor = OnnxPredictor(path)
    assert predictor.spec == SPEC and predictor.patch_size == 16


def test_onnx_predictor_sweep_and_class_cog_equal_the_checkpoint(bundle, exported, tmp_path):
    path, _ = exported
    scene = write_raster(tmp_path / "scene.tif", smooth_image(80, 100, seed=3),
                         crs="EPSG:32632", transform=from_origin(500000, 5600000, 0.5, 0.5))
    torch_predictor = BundlePredictor.from_checkpoint(bundle)
    onnx_predictor = model_predictor(path)
    assert isinstance(onnx_predictor, OnnxPredictor)
    options = PredictOptions(tile=64, overlap=16, batch_size=3, progress=False)
    blended = []
    for predictor in (torch_predictor, onnx_predictor):
        with SceneReader(scene, SPEC) as reader:
            grid = options.grid(predictor, reader.height, reader.width)
            blended.append(torch.cat([probs for _, probs, _ in
                                      sweep(reader, predictor, grid, batch_size=3)], dim=1))
    assert blended[0].shape == (4, 80, 100)
    assert (blended[0] - blended[1]).abs().max() <= TOLERANCE
    maps = []
    for name, predictor in (("torch", torch_predictor), ("onnx", onnx_predictor)):
        predict_scene(scene, predictor, tmp_path / f"{name}.tif", options=options)
        with rasterio.open(tmp_path / f"{name}.tif") as src:
            maps.append(src.read(1))
    # Classes agree wherever the winning class wins by more than twice the tolerance.
    top2 = blended[0].topk(2, dim=0).values
    decided = (top2[0] - top2[1] > 2 * TOLERANCE).numpy()
    assert decided.mean() > 0.9  # a random network has many near-ties
    np.testing.assert_array_equal(maps[0][decided], maps[1][decided])


def test_onnx_without_ctfa_keys_is_refused_naming_the_key(exported, tmp_path):
    path, _ = exported
    model = onnx.load(str(path))
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != "ctfa_spec"]
    del model.metadata_props[:]
    for key, value in kept:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(tmp_path / "no_spec.onnx"))
    with pytest.raises(CtfaError, match=r"lacks ctfa's key 'ctfa_spec'"):
        OnnxPredictor(tmp_path / "no_spec.onnx")
    del model.metadata_props[:]  # a foreign ONNX model: the first key is missing
    onnx.save(model, str(tmp_path / "foreign.onnx"))
    with pytest.raises(CtfaError, match=r"lacks ctfa's key 'ctfa_format'"):
        OnnxPredictor(tmp_path / "foreign.onnx")
    (tmp_path / "junk.onnx").write_text("not a model")
    with pytest.raises(CtfaError, match=r"junk.onnx: not a readable ONNX model"):
        OnnxPredictor(tmp_path / "junk.onnx")


def test_resolution_of_the_training_data_in_cm(tmp_path):
    from ctfa_cli.datasets.registry import get_spec
    from ctfa_cli.datasets.tiling import build_datadir
    from ctfa_cli.inference.onnx_export import training_resolution_cm
    from tests.datasets.tiny_scenes import write_scene

    spec = get_spec("synthetic")
    utm = write_scene(tmp_path / "raw", "a", height=64, width=64, seed=1, pixel_size=0.3)
    build_datadir([utm.record], spec, tmp_path / "utm", tile=32)
    assert training_resolution_cm(tmp_path / "utm") == pytest.approx(30.0)
    plain = write_scene(tmp_path / "raw2", "b", height=64, width=64, seed=2, crs=None)
    build_datadir([plain.record], spec, tmp_path / "plain", tile=32)
    assert training_resolution_cm(tmp_path / "plain") is None  # pixels, not metres
    assert training_resolution_cm(tmp_path / "missing") is None
    assert training_resolution_cm(None) is None
