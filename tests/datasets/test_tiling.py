"""The shared tiler: window grid, chips, chips.gpkg, labels, colour decoding, safety, re-runs."""

from __future__ import annotations

import dataclasses
import os

import geopandas
import numpy as np
import pytest
import rasterio
import rasterio.windows
import yaml
from rasterio.transform import Affine

from ctfa_cli.datasets import tiling
from ctfa_cli.datasets.datadir import DataDir
from ctfa_cli.datasets.registry import get_spec
from ctfa_cli.datasets.tiling import build_datadir, decode_color_mask, resolve_tiling, window_grid
from ctfa_cli.errors import CtfaError, CtfaUsageError
from tests.datasets.tiny_scenes import write_scene

SPEC = get_spec("synthetic")  # ISPRS classes, r,g,b, class 0 is background


# --- window grid -------------------------------------------------------------------------------


@pytest.mark.parametrize("stride", [512, 400, 256, 200, 100])
def test_window_grid_covers_odd_sizes_completely(stride):
    height, width, tile = 1000, 777, 512
    windows = window_grid(height, width, tile, stride)
    cover = np.zeros((height, width), np.int32)
    for w in windows:
        assert (w.height, w.width) == (tile, tile)
        assert 0 <= w.row_off <= height - tile and 0 <= w.col_off <= width - tile
        cover[w.row_off:w.row_off + w.height, w.col_off:w.col_off + w.width] += 1
    assert cover.min() >= 1  # no pixel dropped
    for size, offsets in ((height, sorted({w.row_off for w in windows})),
                          (width, sorted({w.col_off for w in windows}))):
        regular = list(range(0, size - tile + 1, stride))
        assert offsets[:len(regular)] == regular
        assert offsets[-1] == size - tile  # the last one is flush with the border
        assert len(offsets) == len(regular) + (regular[-1] != size - tile)
    assert len(windows) == len({(w.row_off, w.col_off) for w in windows})


def test_window_grid_row_major_and_exact_fit():
    windows = window_grid(1024, 512, 512, 512)
    assert [(w.row_off, w.col_off) for w in windows] == [(0, 0), (512, 0)]


def test_window_grid_scene_smaller_than_tile():
    windows = window_grid(300, 100, 512, 256)
    assert len(windows) == 1
    w = windows[0]
    assert (w.row_off, w.col_off, w.height, w.width) == (0, 0, 300, 100)
    # one short axis only: full windows along the long one, own size along the short one
    windows = window_grid(100, 1200, 512, 512)
    assert {(w.height, w.width) for w in windows} == {(100, 512)}
    assert [w.col_off for w in windows] == [0, 512, 688]


def test_window_grid_rejects_bad_stride():
    with pytest.raises(ValueError):
        window_grid(100, 100, 64, 65)
    with pytest.raises(ValueError):
        window_grid(100, 100, 64, 0)


def test_resolve_tiling():
    assert resolve_tiling(SPEC, None, None) == (SPEC.tile_size, SPEC.stride)
    assert resolve_tiling(SPEC, 64, None) == (64, 64)
    assert resolve_tiling(SPEC, 64, 32) == (64, 32)
    with pytest.raises(CtfaUsageError, match="larger than --tile"):
        resolve_tiling(SPEC, 64, 100)


# --- chips, geometry, labels -------------------------------------------------------------------


def test_chips_keep_crs_transform_and_pixels(tmp_path):
    scene = write_scene(tmp_path / "raw", "s1", height=100, width=130, seed=1)
    summary = build_datadir([scene.record], SPEC, tmp_path / "d", tile=64, stride=48)
    data = DataDir.open(tmp_path / "d")
    expected = window_grid(100, 130, 64, 48)
    assert summary.chips == {"train": len(expected)} == {"train": len(data.chips)}
    assert data.chips.crs.to_epsg() == 32633
    assert list(data.chips.geom_type.unique()) == ["Polygon"]
    for window, (_, row) in zip(expected, data.chips.iterrows(), strict=True):
        r, c = int(window.row_off), int(window.col_off)
        assert row["chip_id"] == f"s1_r{r}_c{c}"
        assert (row["row_off"], row["col_off"], row["height"], row["width"]) == (r, c, 64, 64)
        with rasterio.open(data.image_path(row)) as src:
            assert src.crs.to_epsg() == 32633
            assert src.transform == scene.transform @ Affine.translation(c, r)
            assert src.descriptions == tuple(SPEC.bands)
            np.testing.assert_array_equal(src.read(), scene.image[:, r:r + 64, c:c + 64])
        with rasterio.open(data.mask_path(row)) as src:
            assert src.transform == scene.transform @ Affine.translation(c, r)
            assert src.colormap(1)[1][:3] == tuple(SPEC.palette[1])
            mask = src.read(1)
        np.testing.assert_array_equal(mask, scene.mask[r:r + 64, c:c + 64])
        # footprint polygon = the chip's bounds in the scene CRS
        bounds = rasterio.windows.bounds(window, scene.transform)
        np.testing.assert_allclose(row.geometry.bounds, bounds)
        assert row.geometry.area == pytest.approx(64 * 64 * 0.5 * 0.5)
        # image-level labels = classes in the chip mask, background and ignore excluded
        present = sorted(set(np.unique(mask).tolist()) - {0, 255})
        assert data.labels(row) == present
        assert row["labels"] == ",".join(map(str, present))
        for k in SPEC.foreground_classes:
            assert bool(row[f"has_{SPEC.classes[k]}"]) == (k in present)
    labelled = {frozenset(data.labels(r)) for _, r in data.chips.iterrows()}
    assert len(labelled) > 1  # the tiny scene gives chips different label subsets


def test_dataset_yaml_statistics_are_computed(tmp_path):
    scenes = [write_scene(tmp_path / "raw", f"s{i}", height=64, width=96, seed=i,
                          split=split) for i, split in enumerate(["train", "train", "test"])]
    build_datadir([s.record for s in scenes], SPEC, tmp_path / "d", tile=32, source="tiny")
    meta = yaml.safe_load((tmp_path / "d" / "dataset.yaml").read_text())
    assert meta["format"] == "ctfa-datadir/1"
    assert meta["source"] == "tiny" and meta["tile_size"] == 32 and meta["stride"] == 32
    assert meta["spec"]["tile_size"] == 32 and meta["spec"]["classes"] == SPEC.classes
    assert "32633" in meta["crs"] or "UTM zone 33N" in meta["crs"]
    assert meta["chips"] == {"train": 12, "test": 6}
    train = np.concatenate([s.image.reshape(3, -1) for s in scenes[:2]], axis=1) / 255
    np.testing.assert_allclose(meta["statistics"]["mean"], train.mean(1), atol=1e-6)
    np.testing.assert_allclose(meta["statistics"]["std"], train.std(1), atol=1e-6)
    counts = np.bincount(np.concatenate([s.mask.ravel() for s in scenes[:2]]), minlength=6)
    freq = meta["class_pixel_frequency"]["train"]
    np.testing.assert_allclose([freq[c] for c in SPEC.classes], counts / counts.sum(), atol=1e-6)
    assert [s["id"] for s in meta["scenes"]] == ["s0", "s1", "s2"]


def test_colour_masks_unknown_colours_become_ignore_and_are_counted(tmp_path):
    scene = write_scene(tmp_path / "raw", "c", height=64, width=64, seed=3, label="color")
    with rasterio.open(scene.record.label, "r+") as dst:
        rgb = dst.read()
        rgb[:, 5:10, 5:9] = np.array([12, 34, 56], np.uint8)[:, None, None]  # 20 unknown pixels
        dst.write(rgb)
    summary = build_datadir([scene.record], SPEC, tmp_path / "d", tile=32)
    assert summary.unknown_colours == {str(scene.record.label): 20}
    data = DataDir.open(tmp_path / "d")
    _, mask = data.read_chip(data.chips.iloc[0])
    expected = scene.mask[:32, :32].copy()
    expected[5:10, 5:9] = 255
    np.testing.assert_array_equal(mask, expected)
    assert data.meta["unknown_colour_pixels"] == {str(scene.record.label): 20}
    assert "20 pixels of unknown colours" in summary.table().caption


def test_a_wrong_palette_stops_prepare_unless_unknown_colours_are_ignored(tmp_path):
    scene = write_scene(tmp_path / "raw", "w", height=64, width=64, seed=3, label="color")
    with rasterio.open(scene.record.label, "r+") as dst:
        rgb = dst.read()
        rgb[0] = 255 - rgb[0]  # the red channel inverted: a wrong palette or band order
        dst.write(rgb)
    palette = {tuple(c) for c in SPEC.palette}
    colours = [tuple(int(v) for v in rgb[:, i, j]) for i in range(64) for j in range(64)]
    unknown = sum(c not in palette for c in colours)
    assert unknown > 0.01 * 64 * 64  # independent count: far over the 1 % limit
    with pytest.raises(CtfaError) as raised:
        build_datadir([scene.record], SPEC, tmp_path / "d", tile=32)
    message = str(raised.value)
    assert message.startswith(f"{scene.record.label}: {unknown / 4096:.0%} of the label pixels "
                              "of scene w are in no class (most frequent: (")
    assert f"the palette: {SPEC.classes[0]} {tuple(SPEC.palette[0])}" in message
    assert "--ignore-unknown-colours" in message and "\n" not in message
    assert not (tmp_path / "d" / "dataset.yaml").exists()  # not a finished DATA_DIR
    summary = build_datadir([scene.record], SPEC, tmp_path / "d", tile=32, ignore_unknown=True)
    assert summary.unknown_colours == {str(scene.record.label): unknown}
    assert summary.reused_scenes == 1  # the refused run's tiles are reused


def test_decode_color_mask_with_threshold_and_explicit_map():
    rgb = np.array([[[250, 3, 130]], [[240, 0, 0]], [[10, 200, 0]]], np.uint8)  # [3, 1, 3]
    color_map = [((255, 255, 0), 1), ((0, 0, 0), 255)]
    mask, unknown = decode_color_mask(rgb, color_map, 255, threshold=128)
    assert mask.tolist() == [[1, 255, 255]]  # the last two are unknown after thresholding
    assert unknown == {(0, 0, 255): 1, (255, 0, 0): 1}
    mask, unknown = decode_color_mask(rgb, color_map, 255)
    assert mask.tolist() == [[255, 255, 255]] and sum(unknown.values()) == 3
    with pytest.raises(ValueError, match="twice"):
        decode_color_mask(rgb, [((1, 2, 3), 0), ((1, 2, 3), 1)], 255)


def test_index_mask_values_outside_the_classes_become_ignore(tmp_path):
    scene = write_scene(tmp_path / "raw", "i", height=40, width=40, seed=4)
    with rasterio.open(scene.record.label, "r+") as dst:
        mask = dst.read(1)
        mask[0, :7] = 9
        dst.write(mask[None])
    summary = build_datadir([scene.record], SPEC, tmp_path / "d", tile=40)
    assert summary.unknown_colours == {str(scene.record.label): 7}
    _, chip_mask = DataDir.open(tmp_path / "d").read_chip(
        DataDir.open(tmp_path / "d").chips.iloc[0])
    assert (chip_mask[0, :7] == 255).all()


def test_tags_and_tagger_for_scenes_without_masks(tmp_path):
    tagged = write_scene(tmp_path / "raw", "t", height=64, width=64, seed=5, label=None)
    tagged = dataclasses.replace(tagged.record, tags=(0, 3, 1))
    plain = write_scene(tmp_path / "raw", "p", height=64, width=32, seed=6, label=None).record
    seen = {}

    def tagger(chips: geopandas.GeoDataFrame) -> list[tuple[int, ...]]:
        seen["ids"] = list(chips["chip_id"])
        seen["crs"] = chips.crs
        return [(4,) if row.col_off == 0 and row.row_off == 0 else () for row in
                chips.itertuples()]

    build_datadir([tagged, plain], SPEC, tmp_path / "d", tile=32, tagger=tagger)
    data = DataDir.open(tmp_path / "d")
    assert seen["ids"] == ["p_r0_c0", "p_r32_c0"] and seen["crs"].to_epsg() == 32633
    labels = dict(zip(data.chips["chip_id"], data.chips["labels"], strict=True))
    assert labels == {"t_r0_c0": "1,3", "t_r0_c32": "1,3", "t_r32_c0": "1,3",
                      "t_r32_c32": "1,3", "p_r0_c0": "4", "p_r32_c0": ""}
    assert data.chips["mask"].isna().all()
    row = data.chips.iloc[0]
    assert data.mask_path(row) is None and data.read_chip(row)[1] is None
    assert not (tmp_path / "d" / "chips" / "train" / "masks").exists()


def test_out_of_range_tags_are_refused(tmp_path):
    record = write_scene(tmp_path / "raw", "t", height=32, width=32, seed=5, label=None).record
    with pytest.raises(CtfaError, match="outside the 6 classes"):
        build_datadir([dataclasses.replace(record, tags=(7,))], SPEC, tmp_path / "d", tile=32)


def test_non_georeferenced_png_gives_pixel_footprints_without_crs(tmp_path):
    scene = write_scene(tmp_path / "raw", "P0001", height=48, width=80, seed=7, crs=None,
                        driver="PNG")
    build_datadir([scene.record], SPEC, tmp_path / "d", tile=32)
    data = DataDir.open(tmp_path / "d")
    assert data.chips.crs is None and data.meta["crs"] is None
    row = data.chips[data.chips["chip_id"] == "P0001_r16_c48"].iloc[0]
    assert row.geometry.bounds == (48.0, 16.0, 80.0, 48.0)  # pixel coordinates
    with rasterio.open(data.image_path(row)) as src:
        assert src.crs is None
        np.testing.assert_array_equal(src.read(), scene.image[:, 16:48, 48:80])


def test_scenes_in_several_crs_share_one_index_crs(tmp_path):
    a = write_scene(tmp_path / "raw", "a", height=32, width=32, seed=1)
    b = write_scene(tmp_path / "raw", "b", height=32, width=32, seed=2, origin=(367000, 5808000))
    c = write_scene(tmp_path / "raw", "c", height=32, width=32, seed=3, crs="EPSG:32632",
                    origin=(770000, 5810000))
    build_datadir([a.record, b.record, c.record], SPEC, tmp_path / "d", tile=32)
    data = DataDir.open(tmp_path / "d")
    assert data.chips.crs.to_epsg() == 32633  # the most common CRS
    footprint = geopandas.GeoSeries([data.chips.geometry.iloc[2]], crs=32633).to_crs(32632)
    np.testing.assert_allclose(footprint.total_bounds, [770000, 5810000 - 16, 770016, 5810000],
                               atol=0.01)
    with rasterio.open(data.image_path(data.chips.iloc[2])) as src:
        assert src.crs.to_epsg() == 32632  # the chip keeps its scene's CRS


def test_non_uint8_bands_are_stretched_per_scene(tmp_path):
    scene = write_scene(tmp_path / "raw", "u", height=50, width=50, seed=8, dtype="uint16")
    summary = build_datadir([scene.record], SPEC, tmp_path / "d", tile=50)
    data = DataDir.open(tmp_path / "d")
    image, _ = data.read_chip(data.chips.iloc[0])
    assert image.dtype == np.uint8 and image.min() == 0 and image.max() == 255
    with rasterio.open(scene.record.image) as src:
        raw = src.read(1).astype(float)
    low, high = np.percentile(raw, [2, 98])
    expected = np.clip((raw - low) * 255 / (high - low), 0, 255).round()
    np.testing.assert_array_equal(image[0], expected)
    assert summary.stretched_scenes == ["u"]
    assert data.meta["uint8_stretch"]["scenes"]["u"][0] == pytest.approx([low, high])


def test_extra_band_is_appended_and_its_statistics_measured(tmp_path):
    scene = write_scene(tmp_path / "raw", "e", height=40, width=40, seed=9)
    dsm = write_scene(tmp_path / "raw", "e_dsm", height=40, width=40, seed=10, bands=1,
                      label=None)
    record = dataclasses.replace(scene.record, extra_bands=(dsm.record.image,))
    # The first three bands state their statistics, the extra one leaves them to prepare.
    spec = SPEC.model_copy(update={"bands": ["r", "g", "b", "dsm"], "mean": [*SPEC.mean, None],
                                   "std": [*SPEC.std, None]})
    build_datadir([record], spec, tmp_path / "d", tile=40)
    data = DataDir.open(tmp_path / "d")
    image, _ = data.read_chip(data.chips.iloc[0])
    np.testing.assert_array_equal(image, np.concatenate([scene.image, dsm.image]))
    assert data.spec.mean[:3] == SPEC.mean and data.spec.std[:3] == SPEC.std
    np.testing.assert_allclose(data.spec.mean[3], dsm.image.mean() / 255, rtol=1e-6)
    np.testing.assert_allclose(data.spec.std[3], dsm.image.std() / 255, rtol=1e-6)


def test_a_spec_without_band_statistics_is_refused(tmp_path):
    scene = write_scene(tmp_path / "raw", "s", height=40, width=40, seed=1)
    build_datadir([scene.record], SPEC, tmp_path / "d", tile=40)
    path = tmp_path / "d" / "dataset.yaml"
    meta = yaml.safe_load(path.read_text())
    meta["spec"]["std"][2] = None
    path.write_text(yaml.safe_dump(meta))
    with pytest.raises(CtfaError, match=r"dataset\.yaml: no mean/std for band\(s\) b; rebuild"):
        DataDir.open(tmp_path / "d")


@pytest.mark.parametrize("problem", ["size", "missing", "bands", "band_index", "corrupt"])
def test_bad_input_is_a_clear_error_naming_the_file(tmp_path, problem):
    scene = write_scene(tmp_path / "raw", "s", height=40, width=40, seed=1)
    record = scene.record
    if problem == "size":
        other = write_scene(tmp_path / "raw", "small", height=30, width=40, seed=2)
        record = dataclasses.replace(record, label=other.record.label)
        named, match = other.record.label, "30x40"
    elif problem == "missing":
        record = dataclasses.replace(record, image=tmp_path / "raw" / "nope.tif")
        named, match = record.image, "no such file"
    elif problem == "bands":
        record = dataclasses.replace(record, bands=(1, 2))
        named, match = record.image, "expects 3"
    elif problem == "band_index":
        record = dataclasses.replace(record, bands=(1, 2, 5))
        named, match = record.image, "has 3 bands"
    else:
        record.label.write_bytes(b"not a raster at all")
        named, match = record.label, "unreadable"
    with pytest.raises(CtfaError, match=match) as info:
        build_datadir([record], SPEC, tmp_path / "d", tile=32)
    assert str(named) in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "d" / "dataset.yaml").exists()


def test_duplicate_or_unsafe_scene_ids_are_refused(tmp_path):
    record = write_scene(tmp_path / "raw", "s", height=32, width=32, seed=1).record
    with pytest.raises(CtfaUsageError, match="duplicate"):
        build_datadir([record, record], SPEC, tmp_path / "d", tile=32)
    with pytest.raises(CtfaUsageError, match="'a/b'"):
        build_datadir([dataclasses.replace(record, scene_id="a/b")], SPEC, tmp_path / "d",
                      tile=32)


# --- re-runs, refusal, overwrite, interruptions ------------------------------------------------


def _chip_files(root):
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns
            for p in (root / "chips").rglob("*") if p.is_file()}


def test_rerun_is_idempotent_and_reuses_finished_scenes(tmp_path):
    scenes = [write_scene(tmp_path / "raw", f"s{i}", height=64, width=64, seed=i).record
              for i in range(2)]
    out = tmp_path / "d"
    build_datadir(scenes, SPEC, out, tile=32, source="x")
    before = _chip_files(out)
    index = geopandas.read_file(out / "chips.gpkg")
    yaml_text = (out / "dataset.yaml").read_text()
    summary = build_datadir(scenes, SPEC, out, tile=32, source="x")
    assert summary.reused_scenes == 2
    assert _chip_files(out) == before  # nothing rewritten
    assert (out / "dataset.yaml").read_text() == yaml_text
    assert geopandas.read_file(out / "chips.gpkg").equals(index)
    # a changed input is noticed and only that scene is tiled again
    os.utime(scenes[1].image, ns=(1, 1))
    summary = build_datadir(scenes, SPEC, out, tile=32, source="x")
    assert summary.reused_scenes == 1
    after = _chip_files(out)
    assert {k for k in after if after[k] != before[k]} == {k for k in after if "/s1_" in k}


def test_interrupted_rerun_unfinishes_the_datadir(tmp_path, monkeypatch):
    record = write_scene(tmp_path / "raw", "s", height=32, width=32, seed=1).record
    out = tmp_path / "d"
    build_datadir([record], SPEC, out, tile=32)
    os.utime(record.image, ns=(1, 1))  # the scene must be tiled again

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tiling, "_write_chip", crash)
    with pytest.raises(KeyboardInterrupt):
        build_datadir([record], SPEC, out, tile=32)
    with pytest.raises(CtfaError, match="unfinished"):  # never a stale, trusted dataset.yaml
        DataDir.open(out)


def test_foreign_folder_is_refused_unless_overwrite(tmp_path):
    record = write_scene(tmp_path / "raw", "s", height=32, width=32, seed=1).record
    out = tmp_path / "d"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(CtfaError, match="not a ctfa DATA_DIR.*--overwrite"):
        build_datadir([record], SPEC, out, tile=32)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # untouched
    build_datadir([record], SPEC, out, tile=32, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"  # overwrite replaces only DATA_DIR entries
    DataDir.open(out)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CtfaError, match="is a file"):
        build_datadir([record], SPEC, tmp_path / "file", tile=32)


def test_other_settings_are_refused_and_overwrite_rebuilds(tmp_path):
    record = write_scene(tmp_path / "raw", "s", height=64, width=64, seed=1).record
    out = tmp_path / "d"
    build_datadir([record], SPEC, out, tile=32)
    with pytest.raises(CtfaError, match="other settings.*tile 32 → 64"):
        build_datadir([record], SPEC, out, tile=64)
    summary = build_datadir([record], SPEC, out, tile=64, overwrite=True)
    assert summary.chips == {"train": 1} and summary.reused_scenes == 0
    assert set(_chip_files(out)) == {"chips/train/images/s_r0_c0.tif",
                                     "chips/train/masks/s_r0_c0.tif"}


def test_changed_split_leaves_no_stale_chips(tmp_path):
    record = write_scene(tmp_path / "raw", "s", height=32, width=32, seed=1).record
    out = tmp_path / "d"
    build_datadir([record], SPEC, out, tile=32)
    build_datadir([dataclasses.replace(record, split="val")], SPEC, out, tile=32)
    assert set(_chip_files(out)) == {"chips/val/images/s_r0_c0.tif",
                                     "chips/val/masks/s_r0_c0.tif"}
    assert DataDir.open(out).splits == ["val"]


def test_interrupted_prepare_leaves_nothing_trusted(tmp_path, monkeypatch):
    scene = write_scene(tmp_path / "raw", "s", height=64, width=64, seed=1)
    out = tmp_path / "d"
    real_write = tiling._write_chip
    calls = {"n": 0}

    def crash_on_fifth(path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-run
        real_write(path, *args, **kwargs)

    monkeypatch.setattr(tiling, "_write_chip", crash_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        build_datadir([scene.record], SPEC, out, tile=32)
    monkeypatch.setattr(tiling, "_write_chip", real_write)
    with pytest.raises(CtfaError, match="unfinished DATA_DIR"):
        DataDir.open(out)
    assert not (out / ".ctfa-prepare" / "scenes" / "s.json").exists()
    # what a hard kill could leave: a chip cut short under its final name and a temporary file
    half = out / "chips" / "train" / "images" / "s_r0_c0.tif"
    half.write_bytes(half.read_bytes()[:100])
    (half.parent / ".tmp-999-s_r0_c32.tif").write_bytes(b"partial")
    summary = build_datadir([scene.record], SPEC, out, tile=32)
    assert summary.reused_scenes == 0  # the unfinished scene is tiled again
    data = DataDir.open(out)
    image, _ = data.read_chip(data.chips.iloc[0])
    np.testing.assert_array_equal(image, scene.image[:, :32, :32])
    assert not any(p.name.startswith(".tmp-") for p in (out / "chips").rglob("*"))


def test_parallel_workers_give_the_same_datadir(tmp_path):
    scenes = [write_scene(tmp_path / "raw", f"s{i}", height=48, width=48, seed=i).record
              for i in range(2)]
    build_datadir(scenes, SPEC, tmp_path / "serial", tile=32)
    build_datadir(scenes, SPEC, tmp_path / "parallel", tile=32, workers=2)
    serial, parallel = DataDir.open(tmp_path / "serial"), DataDir.open(tmp_path / "parallel")
    assert serial.chips.drop(columns="geometry").equals(parallel.chips.drop(columns="geometry"))
    assert serial.meta["statistics"] == parallel.meta["statistics"]
    for (_, a), (_, b) in zip(serial.chips.iterrows(), parallel.chips.iterrows(), strict=True):
        np.testing.assert_array_equal(serial.read_chip(a)[0], parallel.read_chip(b)[0])


def test_summary_table_and_dict(tmp_path):
    record = write_scene(tmp_path / "raw", "s", height=64, width=64, seed=1).record
    summary = build_datadir([record], SPEC, tmp_path / "d", tile=32)
    table = summary.table()
    assert [c.header for c in table.columns] == ["class", "pixels %", "train"]
    assert table.row_count == len(SPEC.classes)
    data = summary.to_dict()
    assert data["chips"] == {"train": 4} and data["out"] == str(tmp_path / "d")
    assert sum(data["class_frequency"].values()) == pytest.approx(1.0, abs=1e-5)
