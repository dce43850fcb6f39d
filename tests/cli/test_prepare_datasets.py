"""`ctfa prepare potsdam|vaihingen|isaid|deepglobe|folder` end to end on fake layouts.

Chips, windows, index maps and image-level labels are checked exactly against the masks the
fake-layout generators wrote.
"""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import Point, box

from ctfa_cli.datasets.datadir import DataDir
from tests.datasets.fake_layouts import (
    FOLDER_CRS,
    make_deepglobe,
    make_folder,
    make_isaid,
    make_potsdam,
    make_vaihingen,
)

IGNORE = 255
# The ISPRS Potsdam split, typed from the benchmark's web page (not the reader's constants).
ISPRS_TRAIN = ({(r, c) for r in (2, 3, 4, 5) for c in (10, 11, 12)}
               | {(r, c) for r in (6, 7) for c in range(7, 13)})
ISPRS_TEST = {(2, 13), (2, 14), (3, 13), (3, 14), (4, 13), (4, 14), (4, 15), (5, 13), (5, 14),
              (5, 15), (6, 13), (6, 14), (6, 15), (7, 13)}


def offsets(length: int, tile: int) -> list[int]:
    """Expected chip offsets along one axis for stride = tile: regular, then flush with the end."""
    if length <= tile:
        return [0]
    regular = list(range(0, length - tile + 1, tile))
    return regular + ([length - tile] if regular[-1] + tile < length else [])


def expected_labels(mask: np.ndarray, background: bool) -> str:
    present = set(np.unique(mask).tolist()) - {IGNORE} - ({0} if background else set())
    return ",".join(str(k) for k in sorted(present))


def check_chips(data: DataDir, layout, tile: int, *, masks: dict, image_bands=None,
                exact_images: bool = True, every: int = 1) -> None:
    """Chips of the scenes of ``masks``: windows of all of them; image pixels, mask pixels and
    labels, exactly, of every ``every``-th scene (reading chips is what takes time)."""
    background = data.spec.has_background
    for k, (scene_id, mask) in enumerate(masks.items()):
        rows = data.chips[data.chips["scene_id"] == scene_id]
        height, width = mask.shape
        expected = sorted((r, c) for r in offsets(height, tile) for c in offsets(width, tile))
        assert sorted(zip(rows["row_off"], rows["col_off"], strict=True)) == expected, scene_id
        if k % every:
            continue
        for _, row in rows.iterrows():
            r, c, h, w = row["row_off"], row["col_off"], row["height"], row["width"]
            assert (h, w) == (min(tile, height), min(tile, width))
            image, chip_mask = data.read_chip(row)
            np.testing.assert_array_equal(chip_mask, mask[r:r + h, c:c + w])
            assert row["labels"] == expected_labels(chip_mask, background)
            if exact_images:
                source = layout.images[scene_id]
                source = source if image_bands is None else image_bands(scene_id, source)
                np.testing.assert_array_equal(image, source[:, r:r + h, c:c + w])


def prepare_json(run_cli, *args) -> dict:
    code, out, err = run_cli("prepare", *args, "--json")
    assert code == 0, err
    return json.loads(out)


# --- benchmarks --------------------------------------------------------------------------------


def test_potsdam_irrg_with_dsm(run_cli, tmp_path):
    layout = make_potsdam(tmp_path / "src", size=40,
                          folders=("1_DSM_normalisation", "3_Ortho_IRRG", "5_Labels_all"))
    summary = prepare_json(run_cli, "potsdam", tmp_path / "src", "--out", tmp_path / "d",
                           "--tile", 32, "--dsm")
    # 10 % of the 24 ISPRS training tiles (2) carved into val; the 14 test tiles untouched.
    assert summary["scenes"] == {"train": 22, "val": 2, "test": 14}
    assert summary["chips"] == {"train": 88, "val": 8, "test": 56}
    data = DataDir.open(tmp_path / "d")
    splits = data.chips.groupby("scene_id")["split"].first()
    val_tiles = {tuple(map(int, s.split("_")[1:])) for s in splits[splits == "val"].index}
    assert val_tiles < ISPRS_TRAIN
    assert {tuple(map(int, s.split("_")[1:])) for s in splits[splits == "test"].index} == \
        ISPRS_TEST
    assert data.spec.bands == ["ir", "r", "g", "ndsm"]
    assert data.chips.crs.to_epsg() == 32633

    def irrg_ndsm(scene_id, rgbir):
        return np.concatenate([rgbir[[3, 0, 1]], layout.extra[scene_id][None]])

    check_chips(data, layout, 32, masks=layout.masks, image_bands=irrg_ndsm, every=5)
    # Footprints are the chip windows in the scene CRS.
    row = data.chips[data.chips["chip_id"] == "potsdam_6_7_r8_c0"].iloc[0]
    x0, y0 = layout.transforms["potsdam_6_7"] @ (0, 8)
    expected = box(x0, y0 - 32 * 0.05, x0 + 32 * 0.05, y0)
    assert row.geometry.normalize().equals_exact(expected.normalize(), 1e-6)


def test_potsdam_paper_split_no_boundary(run_cli, tmp_path):
    layout = make_potsdam(tmp_path / "src", size=24,
                          folders=("4_Ortho_RGBIR", "5_Labels_all_noBoundary"))
    summary = prepare_json(run_cli, "potsdam", tmp_path / "src", "--out", tmp_path / "d",
                           "--paper-split", "--no-boundary", "--bands", "rgbir")
    assert summary["scenes"] == {"train": 22, "test": 14}  # the official scripts: no val
    data = DataDir.open(tmp_path / "d")
    assert "potsdam_4_12" not in set(data.chips["scene_id"])
    eroded = {k: v for k, v in layout.eroded.items() if k not in ("potsdam_4_12", "potsdam_7_10")}
    # One 24-px chip per tile (the dataset tile, 512, is larger than the fake tiles).
    check_chips(data, layout, 512, masks=eroded, every=4)
    assert (np.stack(list(eroded.values())) == IGNORE).any()  # boundaries are ignored


def test_carved_val_split_follows_fraction_and_seed(run_cli, tmp_path):
    make_potsdam(tmp_path / "src", size=24, folders=("3_Ortho_IRRG", "5_Labels_all"))

    def val_scenes(*options):
        out = tmp_path / "-".join(map(str, options))
        summary = prepare_json(run_cli, "potsdam", tmp_path / "src", "--out", out, *options)
        chips = DataDir.open(out).chips
        return summary["scenes"], set(chips.loc[chips["split"] == "val", "scene_id"])

    scenes, paper = val_scenes("--paper-split", "--val-fraction", 0.2)
    assert scenes == {"train": 18, "val": 4, "test": 14}  # round(22 · 0.2)
    assert not paper & {"potsdam_4_12", "potsdam_7_10"}
    _, seed0 = val_scenes("--val-fraction", 0.25)
    _, again = val_scenes("--val-fraction", 0.25, "--seed", 0, "--workers", 0)
    _, seed1 = val_scenes("--val-fraction", 0.25, "--seed", 1)
    assert len(seed0) == 6 and seed0 == again and seed1 != seed0
    assert val_scenes("--val-fraction", 0)[0] == {"train": 24, "test": 14}


def test_vaihingen_varying_sizes(run_cli, tmp_path):
    layout = make_vaihingen(tmp_path / "src", eroded=False)
    summary = prepare_json(run_cli, "vaihingen", tmp_path / "src", "--out", tmp_path / "d",
                           "--tile", 32)
    assert summary["scenes"] == {"train": 14, "val": 2, "test": 17}  # round(16 · 0.1) val
    data = DataDir.open(tmp_path / "d")
    check_chips(data, layout, 32, masks=layout.masks, every=5)


def test_isaid_with_a_bgr_palette_exits_1_unless_told_to_ignore(run_cli, tmp_path):
    from ctfa_cli.datasets.registry import get_spec

    make_isaid(tmp_path / "src")
    bgr = [list(reversed(colour)) for colour in get_spec("isaid").palette]  # a variant's order
    (tmp_path / "bgr.yaml").write_text(f"palette: {bgr}\n")
    args = ("prepare", "isaid", tmp_path / "src", "--out", tmp_path / "d", "--tile", 32,
            "--palette", tmp_path / "bgr.yaml")
    code, _, err = run_cli(*args)
    assert code == 1 and "Traceback" not in err
    (line,) = err.splitlines()[-1:]
    assert "of the label pixels of scene isaid_P" in line and "--ignore-unknown-colours" in line
    code, _, err = run_cli(*args, "--ignore-unknown-colours")
    assert code == 0, err


def test_isaid_pixel_coordinates(run_cli, tmp_path):
    layout = make_isaid(tmp_path / "src")
    summary = prepare_json(run_cli, "isaid", tmp_path / "src", "--out", tmp_path / "d",
                           "--tile", 32)
    # round(3 · 0.1) = 0 val images would select on the test split: one is carved.
    assert summary["scenes"] == {"train": 2, "val": 1, "test": 2}
    data = DataDir.open(tmp_path / "d")
    assert data.chips.crs is None
    row = data.chips[data.chips["chip_id"] == "isaid_P0000_r8_c24"].iloc[0]
    assert row.geometry.equals(box(24, 8, 56, 40))  # pixel coordinates: x = column, y = row

    def rgb(scene_id, image):
        return np.broadcast_to(image, (3, *image.shape[1:]))  # grey read as R = G = B

    check_chips(data, layout, 32, masks=layout.masks, image_bands=rgb)


def test_deepglobe_noisy_masks_no_background(run_cli, tmp_path):
    layout = make_deepglobe(tmp_path / "src", n=10, size=48)
    summary = prepare_json(run_cli, "deepglobe", tmp_path / "src", "--out", tmp_path / "d",
                           "--tile", 24, "--seed", 3)
    assert summary["scenes"] == {"train": 8, "val": 1, "test": 1}
    assert summary["unknown_colours"] == {}  # thresholding recovers every pixel
    data = DataDir.open(tmp_path / "d")
    assert not data.spec.has_background and data.chips["chip_id"].is_unique
    assert len(data.chips) == 40 and len(list((tmp_path / "d").rglob("*_r*_c*.tif"))) == 80
    # JPEG images are lossy: masks and labels are exact, images are checked by shape.
    check_chips(data, layout, 24, masks=layout.masks, exact_images=False)
    # Whole images go to one split, never chips of an image to several.
    assert data.chips.groupby("scene_id")["split"].nunique().max() == 1


def test_layout_and_usage_errors(run_cli, tmp_path):
    make_potsdam(tmp_path / "src", size=16, tiles=((2, 10),), folders=("3_Ortho_IRRG",))
    code, out, err = run_cli("prepare", "potsdam", tmp_path / "src", "--out", tmp_path / "d")
    assert code == 1 and out == ""
    assert "no `5_Labels_all` folder under" in err and "ISPRS Potsdam release layout" in err
    assert not (tmp_path / "d" / "dataset.yaml").exists()
    code, _, err = run_cli("prepare", "potsdam", tmp_path / "src", "--out", tmp_path / "d",
                           "--bands", "nir")
    assert code == 2 and "--bands 'nir'" in err
    code, _, err = run_cli("prepare", "isaid", tmp_path / "nowhere", "--out", tmp_path / "d")
    assert code == 1 and "no such folder" in err


# --- users' folders ----------------------------------------------------------------------------


def scene_box(layout, scene_id, col0, row0, col1, row1):
    """A box given in pixel coordinates of a scene, in the scene CRS."""
    x0, y0 = layout.transforms[scene_id] @ (col0, row0)
    x1, y1 = layout.transforms[scene_id] @ (col1, row1)
    return box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def test_folder_with_vector_tags_in_another_crs(run_cli, tmp_path):
    layout = make_folder(tmp_path / "src", n=2, size=64, masks="none")
    features = gpd.GeoDataFrame({"cls": ["building", "tree", "water", "building"]}, geometry=[
        scene_box(layout, "scene_0", 4, 4, 20, 28),    # chip r0_c0: 37.5 % building
        scene_box(layout, "scene_0", 40, 40, 42, 42),  # chip r32_c32: 0.4 % tree
        Point(layout.transforms["scene_1"] @ (40, 10)),  # chip r0_c32 of scene_1: water
        scene_box(layout, "scene_1", 30, 34, 34, 60),  # 2 px into r32_c0, 2 px into r32_c32
    ], crs=FOLDER_CRS).to_crs("EPSG:4326")
    features.to_file(tmp_path / "features.gpkg")
    summary = prepare_json(run_cli, "folder", tmp_path / "src", "--out", tmp_path / "d",
                           "--tags", tmp_path / "features.gpkg", "--class-column", "cls",
                           "--min-cover", 0.02, "--test-fraction", 0, "--val-fraction", 0)
    assert summary["chips"] == {"train": 8}
    data = DataDir.open(tmp_path / "d")
    labels = dict(zip(data.chips["chip_id"], data.chips["labels"], strict=True))
    # scene_1's building covers 2×26 px = 5.1 % of each 32×32 chip it straddles.
    assert labels == {
        "scene_0_r0_c0": "1", "scene_0_r0_c32": "", "scene_0_r32_c0": "",
        "scene_0_r32_c32": "", "scene_1_r0_c0": "", "scene_1_r0_c32": "3",
        "scene_1_r32_c0": "1", "scene_1_r32_c32": "1"}
    assert data.chips["mask"].isna().all()

    # Lowering the cover threshold brings in the 0.4 % tree.
    prepare_json(run_cli, "folder", tmp_path / "src", "--out", tmp_path / "d2", "--tags",
                 tmp_path / "features.gpkg", "--class-column", "cls", "--min-cover", 0.001)
    data = DataDir.open(tmp_path / "d2")
    assert data.chips.set_index("chip_id").loc["scene_0_r32_c32", "labels"] == "2"


def test_folder_masks_where_present_tags_elsewhere(run_cli, tmp_path):
    layout = make_folder(tmp_path / "src", n=3, size=40, masks="color", masked=(0,))
    (tmp_path / "tags.csv").write_text("scene_id,labels\nscene_1,\"tree,water\"\nscene_2,\n")
    (tmp_path / "src" / "splits.csv").write_text(
        "scene_id,split\nscene_0,test\nscene_1,train\nscene_2,train\n")
    summary = prepare_json(run_cli, "folder", tmp_path / "src", "--out", tmp_path / "d",
                           "--tags", tmp_path / "tags.csv", "--tile", 32)
    assert summary["scenes"] == {"test": 1, "train": 2}
    data = DataDir.open(tmp_path / "d")
    check_chips(data, layout, 32, masks=layout.masks)  # scene_0: colour mask decoded
    tagged = data.chips[data.chips["scene_id"] != "scene_0"]
    assert tagged.groupby("scene_id")["labels"].agg(set).to_dict() == {
        "scene_1": {"2,3"}, "scene_2": {""}}


def test_folder_without_masks_or_tags_is_an_error(run_cli, tmp_path):
    make_folder(tmp_path / "src", n=1, masks="none")
    code, _, err = run_cli("prepare", "folder", tmp_path / "src", "--out", tmp_path / "d")
    assert code == 1 and "scene_0.tif has no mask" in err and "--tags" in err
    code, _, err = run_cli("prepare", "folder", tmp_path / "src", "--out", tmp_path / "d",
                           "--min-cover", 0.1)
    assert code == 2 and "--class-column" in err


@pytest.mark.parametrize("dataset", ["potsdam", "vaihingen", "isaid", "deepglobe", "folder"])
def test_help(run_cli, dataset):
    code, out, _ = run_cli("prepare", dataset, "--help")
    assert code == 0 and "--out" in out
