"""Scene prediction: seam-free blending, georeferencing, nodata, safety, streaming memory."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import rasterio.features
import torch
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin

from ctfa_cli.errors import CtfaError, CtfaUsageError
from ctfa_cli.inference.predict import (
    PredictOptions,
    collect_scenes,
    plan_outputs,
    predict_scene,
    predict_scenes,
    rank_share,
    sweep,
)
from ctfa_cli.inference.reader import SceneReader
from ctfa_cli.inference.windows import WindowGrid
from ctfa_cli.inference.writers import CLASS_NODATA
from tests.inference.helpers import (
    LOCAL_TM,
    ROTATED,
    SPEC,
    ContextPredictor,
    LinearPredictor,
    smooth_image,
    tiny_network,
    write_raster,
)

REPO = Path(__file__).resolve().parents[2]
FAST = PredictOptions(tile=64, overlap=16, batch_size=5, progress=False)


def _full_forward(path: Path, predictor) -> torch.Tensor:
    """One forward pass of the whole scene: ``[C, H, W]``."""
    with SceneReader(path, predictor.spec) as reader:
        pixels = reader.read_rows(0, reader.height).pixels
    return predictor(pixels[None])[0]


def _swept(path: Path, predictor, tile: int, overlap: int, batch: int, background: bool):
    with SceneReader(path, predictor.spec) as reader:
        grid = WindowGrid(reader.height, reader.width, tile, overlap)
        blocks = list(sweep(reader, predictor, grid, batch_size=batch,
                            background_io=background))
    rows = [row for row, _, _ in blocks]
    assert rows == sorted(rows) and rows[0] == 0
    return torch.cat([p for _, p, _ in blocks], 1), torch.cat([v for _, _, v in blocks], 0)


@pytest.mark.parametrize("height,width,tile,overlap,batch,background", [
    (150, 230, 64, 16, 5, False),  # batches span window rows; last row/column flush
    (150, 230, 64, 16, 7, True),  # the same through the background reader thread
    (40, 30, 64, 16, 8, False),  # smaller than one tile: padded
    (200, 50, 32, 0, 3, False),  # no overlap: only the flush windows overlap
    (97, 131, 32, 24, 16, False),  # heavy overlap
])
def test_blended_sweep_equals_one_full_scene_forward(tmp_path, height, width, tile, overlap,
                                                     batch, background):
    path = write_raster(tmp_path / "s.tif", smooth_image(height, width, seed=height),
                        crs="EPSG:32632", transform=from_origin(0, 0, 1, 1))
    predictor = LinearPredictor()
    probs, valid = _swept(path, predictor, tile, overlap, batch, background)
    assert valid.all()
    torch.testing.assert_close(probs, _full_forward(path, predictor), rtol=0, atol=2e-6)


def test_predict_scene_writes_georeferenced_outputs_matching_the_forward_pass(tmp_path):
    data = smooth_image(150, 230, seed=5)
    scene = write_raster(tmp_path / "scene.tif", data, crs=LOCAL_TM, transform=ROTATED)
    predictor = LinearPredictor()
    out = tmp_path / "out" / "classes.tif"
    result = predict_scene(scene, predictor, out,
                           options=PredictOptions(**{**FAST.__dict__, "probs": True,
                                                     "vector": "gpkg"}))
    expected = _full_forward(scene, predictor)
    top2 = expected.topk(2, dim=0).values
    decided = (top2[0] - top2[1] > 1e-4).numpy()
    with rasterio.open(out) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert (src.width, src.height) == (230, 150)
        assert src.crs == LOCAL_TM and src.transform.almost_equals(ROTATED, precision=1e-12)
        assert src.colormap(1)[1] == (*SPEC.palette[1], 255)
        labels = src.read(1)
    assert np.array_equal(labels[decided], expected.argmax(0).numpy()[decided])
    with rasterio.open(result.probs) as src:
        assert src.crs == LOCAL_TM and src.descriptions == tuple(SPEC.classes)
        quantised = src.read().astype(int)
    assert np.abs(quantised - (expected * 255).round().numpy()).max() <= 1
    frame = pyogrio.read_dataframe(result.vector)
    assert result.vector == out.with_suffix(".gpkg") and len(frame) == result.polygons
    assert frame.crs == LOCAL_TM
    burnt = rasterio.features.rasterize(zip(frame.geometry, frame.class_id, strict=True),
                                        out_shape=labels.shape, transform=ROTATED,
                                        fill=CLASS_NODATA, dtype="uint8")
    assert np.array_equal(burnt, labels)
    assert sum(result.class_pixels.values()) == 150 * 230 and result.nodata_pixels == 0
    assert result.class_pixels["tree"] == int((labels == 2).sum())
    assert CRS.from_user_input(result.crs) == LOCAL_TM
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "classes.gpkg", "classes.tif", "classes_probs.tif"]


@pytest.mark.parametrize("garbage", [0, 200])
def test_nodata_stays_nodata_and_never_reaches_its_neighbours(tmp_path, garbage):
    data = smooth_image(120, 140, seed=9).clip(1, 255)
    hole = (slice(30, 70), slice(50, 100))
    data[:, hole[0], hole[1]] = 0
    clean = write_raster(tmp_path / "clean.tif", data, nodata=0, crs="EPSG:32632",
                         transform=from_origin(0, 0, 1, 1))
    # Same scene, but the nodata region is declared through a mask band and holds garbage.
    dirty_data = data.copy()
    dirty_data[:, hole[0], hole[1]] = garbage
    dirty = write_raster(tmp_path / "dirty.tif", dirty_data, crs="EPSG:32632",
                         transform=from_origin(0, 0, 1, 1))
    mask = np.full(data.shape[1:], 255, np.uint8)
    mask[hole] = 0
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(dirty, "r+") as dst:
        dst.write_mask(mask)
    # The window mean would carry the garbage to every pixel of the windows if it leaked.
    predictor = ContextPredictor()
    options = PredictOptions(tile=64, overlap=16, batch_size=4, probs=True, progress=False)
    outputs = {}
    for path in (clean, dirty):
        result = predict_scene(path, predictor, tmp_path / f"{path.stem}_out.tif",
                               options=options)
        assert result.nodata_pixels == 40 * 50
        with rasterio.open(result.classes) as src:
            labels = src.read(1)
        with rasterio.open(result.probs) as src:
            probs, valid = src.read(), src.dataset_mask() != 0
        assert (labels[hole] == CLASS_NODATA).all() and (labels[mask != 0] < 4).all()
        assert np.array_equal(valid, mask != 0)
        outputs[path.stem] = (labels, probs[:, valid])
    assert np.array_equal(outputs["clean"][0], outputs["dirty"][0])
    assert np.array_equal(outputs["clean"][1], outputs["dirty"][1])


def test_non_georeferenced_png_gives_an_output_without_crs_and_a_warning(tmp_path, caplog):
    scene = write_raster(tmp_path / "P0001.png", smooth_image(70, 90), driver="PNG")
    out = tmp_path / "P0001_classes.tif"
    with caplog.at_level(logging.WARNING, logger="ctfa"):
        result = predict_scene(scene, LinearPredictor(), out, options=FAST)
    assert "not georeferenced" in caplog.text
    assert result.crs is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(out) as src:
            assert src.crs is None and src.transform.is_identity
            assert (src.width, src.height) == (90, 70)


def test_outputs_are_never_clobbered_and_never_the_input(tmp_path):
    scene = write_raster(tmp_path / "s.tif", smooth_image(40, 40), crs="EPSG:32632",
                         transform=from_origin(0, 0, 1, 1))
    out = tmp_path / "c.tif"
    out.write_bytes(b"precious")
    with pytest.raises(CtfaError, match=r"c\.tif already exists; pass --overwrite"):
        predict_scene(scene, LinearPredictor(), out, options=FAST)
    assert out.read_bytes() == b"precious"
    for options in (FAST, PredictOptions(**{**FAST.__dict__, "overwrite": True})):
        with pytest.raises(CtfaError, match="refusing to write onto an input file"):
            predict_scene(scene, LinearPredictor(), scene, options=options)
    predict_scene(scene, LinearPredictor(), out,
                  options=PredictOptions(**{**FAST.__dict__, "overwrite": True}))
    with rasterio.open(out) as src:
        assert src.count == 1


class _FailingPredictor(LinearPredictor):
    def __call__(self, batch):
        if self.calls == 3:
            raise RuntimeError("device lost")
        return super().__call__(batch)


@pytest.mark.parametrize("background", [False, True])
def test_a_failure_mid_scene_leaves_no_finished_looking_file(tmp_path, background):
    scene = write_raster(tmp_path / "s.tif", smooth_image(200, 150), crs="EPSG:32632",
                         transform=from_origin(0, 0, 1, 1))
    options = PredictOptions(tile=32, overlap=8, batch_size=2, probs=True, vector="gpkg",
                             progress=False, background_io=background)
    with pytest.raises(RuntimeError, match="device lost"):
        predict_scene(scene, _FailingPredictor(), tmp_path / "out" / "c.tif", options=options)
    assert list((tmp_path / "out").iterdir()) == []


def test_tiling_options_are_checked(tmp_path):
    scene = write_raster(tmp_path / "s.tif", smooth_image(40, 40), crs="EPSG:32632",
                         transform=from_origin(0, 0, 1, 1))
    with pytest.raises(CtfaUsageError, match="--tile 40 must be a multiple of the model's patch"):
        predict_scene(scene, LinearPredictor(), tmp_path / "c.tif",
                      options=PredictOptions(tile=40, progress=False))
    with pytest.raises(CtfaUsageError, match="--overlap 64 must be >= 0 and smaller than"):
        predict_scene(scene, LinearPredictor(), tmp_path / "c.tif",
                      options=PredictOptions(tile=64, overlap=64, progress=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]


def test_default_tile_is_the_bundle_tile_rounded_to_whole_patches():
    spec = SPEC.model_copy(update={"tile_size": 612})  # DeepGlobe's chip size
    grid = PredictOptions().grid(LinearPredictor(spec), 1000, 1000)
    assert (grid.tile, grid.overlap) == (608, 152)


def test_bundle_predictor_softmax_and_tta():
    from types import SimpleNamespace

    from ctfa_cli.inference.predict import BundlePredictor

    model = tiny_network()
    bundle = SimpleNamespace(model=model, spec=SPEC)
    tiles = torch.randn(2, 3, 32, 48)
    plain = BundlePredictor(bundle, "cpu")(tiles)
    augmented = BundlePredictor(bundle, "cpu", tta=True)(tiles)
    assert BundlePredictor(bundle, "cpu").patch_size == 16
    with torch.no_grad():
        torch.testing.assert_close(plain, model.segment(tiles).softmax(1))
    for probs in (plain, augmented):
        assert probs.shape == (2, SPEC.num_classes, 32, 48)
        torch.testing.assert_close(probs.sum(1), torch.ones(2, 32, 48))
    assert not torch.allclose(plain, augmented)


def test_collect_scenes_from_files_folders_globs_and_stdin(tmp_path):
    folder = tmp_path / "scenes"
    folder.mkdir()
    for name in ("a.tif", "b.png", "notes.txt"):
        (folder / name).write_bytes(b"")
    assert collect_scenes([str(folder)]) == [folder / "a.tif", folder / "b.png"]
    assert collect_scenes([str(folder / "*.tif")]) == [folder / "a.tif"]
    stdin = io.StringIO(f"{folder / 'b.png'}\n\n{folder / 'a.tif'}\n")
    assert collect_scenes(["-", str(folder / "a.tif")], stdin) == [folder / "b.png",
                                                                  folder / "a.tif"]
    with pytest.raises(CtfaError, match="missing.tif: no such scene"):
        collect_scenes([str(tmp_path / "missing.tif")])
    with pytest.raises(CtfaError, match=r"\*\.jp2: no such scene file, folder or glob match"):
        collect_scenes([str(folder / "*.jp2")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CtfaUsageError, match="no scene to predict"):
        collect_scenes([str(tmp_path / "empty")])


def test_plan_outputs(tmp_path):
    a, b = Path("x/a.tif"), Path("y/b.tif")
    assert plan_outputs([a], tmp_path / "c.tif", FAST) == [tmp_path / "c.tif"]
    assert plan_outputs([a, b], tmp_path / "maps", FAST) == [tmp_path / "maps" / "a.tif",
                                                             tmp_path / "maps" / "b.tif"]
    with pytest.raises(CtfaUsageError, match="names one file but 2 scenes"):
        plan_outputs([a, b], tmp_path / "c.tif", FAST)
    with pytest.raises(CtfaUsageError, match="would both be written to"):
        plan_outputs([a, Path("z/a.png")], tmp_path / "maps", FAST)
    with pytest.raises(CtfaUsageError, match="--vector p.gpkg names one file"):
        plan_outputs([a, b], tmp_path / "maps", PredictOptions(vector="p.gpkg"))


def test_rank_share_under_torchrun(monkeypatch):
    items = list(range(7))
    assert rank_share(items) == items
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "1")
    assert rank_share(items) == [1, 4]


def test_predict_scenes_checks_every_output_before_starting(tmp_path):
    scenes = [write_raster(tmp_path / f"s{i}.tif", smooth_image(40, 40, seed=i),
                           crs="EPSG:32632", transform=from_origin(0, 0, 1, 1))
              for i in range(2)]
    maps = tmp_path / "maps"
    maps.mkdir()
    (maps / "s1.gpkg").write_bytes(b"")
    predictor = LinearPredictor()
    options = PredictOptions(**{**FAST.__dict__, "vector": "gpkg"})
    with pytest.raises(CtfaError, match=r"s1\.gpkg already exists"):
        list(predict_scenes(scenes, predictor, maps, options=options))
    assert predictor.calls == 0
    results = list(predict_scenes(scenes, predictor, maps,
                                  options=PredictOptions(**{**FAST.__dict__, "overwrite": True,
                                                            "vector": "gpkg"})))
    assert [r.classes.name for r in results] == ["s0.tif", "s1.tif"]
    assert all(r.vector.exists() for r in results)


_MEMORY_SCRIPT = """
import resource, sys
from pathlib import Path
from ctfa_cli.inference.predict import PredictOptions, predict_scene
from tests.inference.helpers import SPEC, LinearPredictor
classes = int(sys.argv[1])
spec = SPEC.model_copy(update={"classes": [f"c{i}" for i in range(classes)],
                               "palette": [(i, i, i) for i in range(classes)]})
options = PredictOptions(tile=64, overlap=16, batch_size=16, progress=False)
for scene in sys.argv[2:]:
    predict_scene(Path(scene), LinearPredictor(spec), Path(scene).with_suffix(".out.tif"),
                  options=options)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_peak_memory_does_not_grow_with_scene_height(tmp_path):
    """An 8× taller scene needs far less extra peak memory than its full-scene probabilities.

    One subprocess predicts the short scene, then the tall one: the growth of its peak RSS
    (a high-water mark) between the two is what the tall scene needed beyond the short one.
    """
    classes, width, short, tall = 32, 128, 2048, 16384
    block = smooth_image(512, width)
    scenes = [write_raster(tmp_path / f"h{height}.tif", np.tile(block, (1, height // 512, 1)),
                           crs="EPSG:32632", transform=from_origin(0, 0, 1, 1))
              for height in (short, tall)]
    # GDAL's block cache is bounded on its own (GDAL_CACHEMAX, 5 % of RAM by default) and would
    # hold the whole small input; keep it small so that what is measured is the pipeline. The
    # COG driver's overview pass still needs a few MB more per overview level (log of height).
    env = {**os.environ, "PYTHONPATH": str(REPO), "GDAL_CACHEMAX": "4", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(classes), *map(str, scenes)],
                          capture_output=True, text=True, env=env, check=True)
    short_peak, tall_peak = (int(v) * 1024 for v in proc.stdout.split())  # KiB on Linux
    # Holding the scene's float32 probabilities would need C · ΔH · W · 4 bytes more (235 MB).
    full_scene_difference = classes * (tall - short) * width * 4
    assert tall_peak - short_peak < 0.25 * full_scene_difference, (short_peak, tall_peak)


def test_bundle_predictor_under_bfloat16_autocast_stays_close_to_float32():
    from types import SimpleNamespace

    from ctfa_cli.errors import CtfaUsageError
    from ctfa_cli.inference.predict import BundlePredictor

    model = tiny_network(seed=0)
    bundle = SimpleNamespace(model=model, spec=SPEC)
    tiles = torch.randn(2, 3, 32, 48)
    exact = BundlePredictor(bundle, "cpu")(tiles)
    for tta in (False, True):
        reduced = BundlePredictor(bundle, "cpu", tta=tta, amp="bf16")(tiles)
        assert reduced.dtype == torch.float32 and reduced.shape == exact.shape
        torch.testing.assert_close(reduced.sum(1), torch.ones(2, 32, 48))
    reduced = BundlePredictor(bundle, "cpu", amp="bf16")(tiles)
    # bfloat16 keeps about 3 significant digits: probabilities move by a few hundredths.
    assert (reduced - exact).abs().max() < 0.05
    assert not torch.equal(reduced, exact)  # the network did run in bfloat16
    with pytest.raises(CtfaUsageError, match="unknown amp 'fp16'; choose one of none, bf16"):
        BundlePredictor(bundle, "cpu", amp="fp16")


def test_crf_runs_per_block_piece_with_the_scene_colours(tmp_path):
    from kernels.dense_crf import OFFICIAL_CRF, dense_crf

    data = smooth_image(40, 100, seed=7)
    scene = write_raster(tmp_path / "scene.tif", data, crs="EPSG:32632",
                         transform=from_origin(0, 0, 1, 1))
    predictor = LinearPredictor()
    options = PredictOptions(tile=32, overlap=0, batch_size=4, progress=False, probs=True)
    plain = predict_scene(scene, predictor, tmp_path / "plain.tif", options=options)
    crf = predict_scene(scene, predictor, tmp_path / "crf.tif",
                        options=PredictOptions(**{**options.__dict__, "crf": OFFICIAL_CRF}))
    with rasterio.open(plain.probs) as src:
        assert src.count == SPEC.num_classes
    # Expected: the CRF of the full-forward probabilities, cut where the sweep cuts (its
    # blocks of finished rows: 0-8, then 8-40 after the flush last window row; pieces one
    # tile wide), with the raster's own colours.
    with SceneReader(scene, SPEC) as reader:
        blocks = [(row, probs.shape[1]) for row, probs, _ in
                  sweep(reader, predictor, WindowGrid(40, 100, 32, 0), batch_size=4)]
    assert blocks == [(0, 8), (8, 32)]
    probs = _full_forward(scene, predictor)
    colours = torch.from_numpy(data.astype(np.float32))
    expected = torch.empty_like(probs)
    for r, n in blocks:
        for c in range(0, 100, 32):
            piece = (slice(None), slice(r, r + n), slice(c, c + 32))
            expected[piece] = dense_crf(probs[piece][None], colours[piece][None],
                                        OFFICIAL_CRF)[0]
    with rasterio.open(crf.classes) as src:
        labels = src.read(1)
    with rasterio.open(plain.classes) as src:
        assert (src.read(1) != labels).any()  # the CRF changed the map
    top2 = expected.topk(2, dim=0).values
    decided = (top2[0] - top2[1] > 1e-3).numpy()
    assert decided.mean() > 0.9
    assert np.array_equal(labels[decided], expected.argmax(0).numpy()[decided])
