"""Each raw-layout reader on a fake copy of its distributed layout."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import rasterio

from ctfa_cli.datasets.readers import (
    READERS,
    read_deepglobe,
    read_folder,
    read_isaid,
    read_potsdam,
    read_vaihingen,
)
from ctfa_cli.datasets.readers.layout import seeded_split
from ctfa_cli.datasets.readers.potsdam import TEST_TILES, TRAIN_TILES
from ctfa_cli.datasets.readers.vaihingen import TEST_AREAS, TRAIN_AREAS
from ctfa_cli.datasets.registry import ISAID_PALETTE, ISPRS_PALETTE
from ctfa_cli.errors import CtfaError, CtfaUsageError
from tests.datasets.fake_layouts import (
    make_deepglobe,
    make_folder,
    make_isaid,
    make_potsdam,
    make_vaihingen,
)


def by_id(scenes):
    return {s.scene_id: s for s in scenes}


def read_bands(path, bands):
    with rasterio.open(path) as src:
        return src.read(list(bands) if bands else None)


def test_registry_has_a_reader_per_dataset():
    assert set(READERS) == {"potsdam", "vaihingen", "isaid", "deepglobe", "folder"}


# --- Potsdam -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def potsdam(tmp_path_factory):
    return make_potsdam(tmp_path_factory.mktemp("potsdam"), size=24)


def test_potsdam_standard_split_irrg(potsdam):
    spec, scenes = read_potsdam(potsdam.root)
    assert spec.bands == ["ir", "r", "g"] and len(spec.mean) == 3
    assert [s.scene_id for s in scenes if s.split == "train"] == [
        f"potsdam_{r}_{c}" for r, c in TRAIN_TILES]
    assert [s.scene_id for s in scenes if s.split == "test"] == [
        f"potsdam_{r}_{c}" for r, c in TEST_TILES]
    scene = by_id(scenes)["potsdam_6_7"]
    assert scene.image == potsdam.root / "3_Ortho_IRRG" / "top_potsdam_6_7_IRRG.tif"
    assert scene.label == potsdam.root / "5_Labels_all" / "top_potsdam_6_7_label.tif"
    assert scene.label_kind == "color" and scene.color_map is None and scene.extra_bands == ()
    # The IRRG file is IR, R, G of the RGBIR source.
    np.testing.assert_array_equal(read_bands(scene.image, scene.bands),
                                  potsdam.images["potsdam_6_7"][[3, 0, 1]])


def test_potsdam_paper_split_leaves_two_tiles_out(potsdam):
    _, scenes = read_potsdam(potsdam.root, split="paper")
    train = {s.scene_id for s in scenes if s.split == "train"}
    assert len(train) == 22 and len(scenes) == 36
    assert not {"potsdam_4_12", "potsdam_7_10"} & {s.scene_id for s in scenes}


@pytest.mark.parametrize("preset, folder, source_bands", [
    ("rgb", "2_Ortho_RGB", [0, 1, 2]), ("rgbir", "4_Ortho_RGBIR", [0, 1, 2, 3])])
def test_potsdam_band_presets(potsdam, preset, folder, source_bands):
    spec, scenes = read_potsdam(potsdam.root, bands=preset)
    assert spec.in_chans == len(source_bands) == len(spec.mean) == len(spec.std)
    scene = by_id(scenes)["potsdam_2_10"]
    assert scene.image.parent.name == folder
    np.testing.assert_array_equal(read_bands(scene.image, scene.bands),
                                  potsdam.images["potsdam_2_10"][source_bands])


def test_potsdam_dsm_and_no_boundary(potsdam):
    spec, scenes = read_potsdam(potsdam.root, dsm=True, no_boundary=True)
    assert spec.bands == ["ir", "r", "g", "ndsm"] and len(spec.std) == 4
    assert spec.unmeasured_bands == ["ndsm"]  # prepare measures it on the training chips
    scene = by_id(scenes)["potsdam_2_10"]
    # DSM file names are zero-padded even where the ortho names are not.
    assert scene.extra_bands == (
        potsdam.root / "1_DSM_normalisation" / "dsm_potsdam_02_10_normalized_lastools.jpg",)
    assert scene.label.name == "top_potsdam_2_10_label_noBoundary.tif"
    assert dict(scene.color_map)[(0, 0, 0)] == spec.ignore_index
    assert [c for c, _ in scene.color_map[:6]] == ISPRS_PALETTE


def test_potsdam_zero_padded_nested_and_rgbir_fallback(tmp_path):
    tiles = TRAIN_TILES + TEST_TILES
    layout = make_potsdam(tmp_path, size=16, zero_pad=True, nested=True, tiles=tiles,
                          folders=("4_Ortho_RGBIR", "5_Labels_all"))
    spec, scenes = read_potsdam(tmp_path)  # irrg, but only the RGBIR folder was unpacked
    scene = by_id(scenes)["potsdam_3_11"]
    assert scene.image.name == "top_potsdam_03_11_RGBIR.tif" and scene.bands == (4, 1, 2)
    assert scene.label.name == "top_potsdam_03_11_label.tif"
    np.testing.assert_array_equal(read_bands(scene.image, scene.bands),
                                  layout.images["potsdam_3_11"][[3, 0, 1]])
    assert spec.bands == ["ir", "r", "g"]


def test_potsdam_layout_errors(tmp_path, potsdam):
    make_potsdam(tmp_path / "a", size=16, tiles=((2, 10),), folders=("3_Ortho_IRRG",))
    with pytest.raises(CtfaError, match="no `5_Labels_all` folder under .*ISPRS Potsdam"):
        read_potsdam(tmp_path / "a")
    make_potsdam(tmp_path / "b", size=16, tiles=TRAIN_TILES[1:] + TEST_TILES,
                 folders=("3_Ortho_IRRG", "5_Labels_all"))
    with pytest.raises(CtfaError, match=r"3_Ortho_IRRG/top_potsdam_2_10_IRRG\.tif not found "
                                        r"\(tile 2_10 of the train split\)"):
        read_potsdam(tmp_path / "b")
    with pytest.raises(CtfaError, match="no `1_DSM_normalisation` folder"):
        read_potsdam(tmp_path / "b", split="paper", dsm=True)
    with pytest.raises(CtfaUsageError, match="--bands 'rgbn'"):
        read_potsdam(potsdam.root, bands="rgbn")
    with pytest.raises(CtfaError, match="no such folder"):
        read_potsdam(tmp_path / "missing")


# --- Vaihingen ---------------------------------------------------------------------------------


def test_vaihingen_complete_ground_truth(tmp_path):
    layout = make_vaihingen(tmp_path, participants=True)
    spec, scenes = read_vaihingen(tmp_path)
    assert spec.bands == ["ir", "r", "g"]
    assert sorted(int(s.scene_id.removeprefix("vaihingen_area")) for s in scenes
                  if s.split == "train") == sorted(TRAIN_AREAS)
    assert sorted(int(s.scene_id.removeprefix("vaihingen_area")) for s in scenes
                  if s.split == "test") == sorted(TEST_AREAS)
    scene = by_id(scenes)["vaihingen_area2"]
    # The complete ground truth is preferred over gts_for_participants (training areas only).
    assert scene.label.parent.name.endswith("ground_truth_COMPLETE")
    np.testing.assert_array_equal(read_bands(scene.image, None), layout.images[scene.scene_id])

    _, eroded = read_vaihingen(tmp_path, no_boundary=True)
    scene = by_id(eroded)["vaihingen_area2"]
    assert scene.label.name == "top_mosaic_09cm_area2_noBoundary.tif"
    assert dict(scene.color_map)[(0, 0, 0)] == 255


def test_vaihingen_participants_labels_lack_test_areas(tmp_path):
    make_vaihingen(tmp_path, complete=False, participants=True, eroded=False)
    with pytest.raises(CtfaError, match="no label for area 2 .*COMPLETE ground truth"):
        read_vaihingen(tmp_path)
    with pytest.raises(CtfaError, match="eroded_COMPLETE` or `gts_eroded_for_participants` "
                                        "folder under"):
        read_vaihingen(tmp_path, no_boundary=True)
    shutil.rmtree(tmp_path / "top")
    with pytest.raises(CtfaError, match="no `top` folder under .*ISPRS Vaihingen"):
        read_vaihingen(tmp_path)


# --- iSAID -------------------------------------------------------------------------------------


@pytest.mark.parametrize("devkit", [False, True])
def test_isaid_layouts(tmp_path, devkit):
    layout = make_isaid(tmp_path, devkit=devkit)
    spec, scenes = read_isaid(tmp_path)
    assert spec.palette == ISAID_PALETTE and len(set(spec.palette)) == 16
    assert {s.scene_id: s.split for s in scenes} == {
        "isaid_P0000": "train", "isaid_P0002": "train", "isaid_P0005": "train",
        "isaid_P0003": "test", "isaid_P0004": "test"}  # iSAID val is the test split
    for scene in scenes:
        assert scene.label.name == f"{scene.scene_id[6:]}_instance_color_RGB.png"
        assert scene.label_kind == "color"
        rgb = read_bands(scene.image, scene.bands)
        assert rgb.shape[0] == 3
        np.testing.assert_array_equal(rgb, np.broadcast_to(layout.images[scene.scene_id],
                                                           rgb.shape))
    assert by_id(scenes)["isaid_P0002"].bands == (1, 1, 1)  # the grey image


def test_isaid_palette_override_and_errors(tmp_path):
    make_isaid(tmp_path)
    swapped = list(ISAID_PALETTE)
    swapped[3], swapped[6] = swapped[6], swapped[3]
    (tmp_path / "palette.yaml").write_text(f"palette: {[list(c) for c in swapped]}\n")
    spec, _ = read_isaid(tmp_path, palette=tmp_path / "palette.yaml")
    assert spec.palette == swapped
    (tmp_path / "short.yaml").write_text("palette: [[0, 0, 0]]\n")
    with pytest.raises(CtfaUsageError, match="short.yaml: .*1 colours for 16 classes"):
        read_isaid(tmp_path, palette=tmp_path / "short.yaml")
    (tmp_path / "val" / "Semantic_masks" / "images" / "P0004_instance_color_RGB.png").unlink()
    with pytest.raises(CtfaError, match="no mask P0004_instance_color_RGB.png for .*P0004.png"):
        read_isaid(tmp_path)
    shutil.rmtree(tmp_path / "val")
    with pytest.raises(CtfaError, match="no `val` folder under .*iSAID layout"):
        read_isaid(tmp_path)


# --- DeepGlobe ---------------------------------------------------------------------------------


def test_deepglobe_seeded_split_by_image(tmp_path):
    layout = make_deepglobe(tmp_path, n=10)
    spec, scenes = read_deepglobe(tmp_path)
    assert not spec.has_background
    assert {s.scene_id for s in scenes} == set(layout.masks)  # valid/ (no masks) is not read
    assert [sum(s.split == k for s in scenes) for k in ("train", "val", "test")] == [8, 1, 1]
    assert all(s.color_threshold == 128 and s.label.name.endswith("_mask.png") for s in scenes)
    again = read_deepglobe(tmp_path)[1]
    assert [s.split for s in again] == [s.split for s in scenes]
    splits = {seed: [s.split for s in read_deepglobe(tmp_path, seed=seed)[1]]
              for seed in range(4)}
    assert len({tuple(v) for v in splits.values()}) > 1  # the seed changes the assignment


def test_deepglobe_errors(tmp_path):
    make_deepglobe(tmp_path, n=3)
    mask = next((tmp_path / "train").glob("*_mask.png"))
    mask.unlink()
    with pytest.raises(CtfaError, match=f"_sat.jpg has no {mask.name} beside it"):
        read_deepglobe(tmp_path)
    with pytest.raises(CtfaError, match="no `train` or `land-train` folder"):
        read_deepglobe(tmp_path / "train")


def test_seeded_split_counts_and_fractions():
    splits = seeded_split([f"s{i}" for i in range(803)], 0.1, 0.1, seed=0)
    assert [list(splits.values()).count(k) for k in ("train", "val", "test")] == [643, 80, 80]
    with pytest.raises(CtfaUsageError):
        seeded_split(["a"], 0.5, 0.5, seed=0)


# --- folder ------------------------------------------------------------------------------------


def test_folder_index_and_colour_masks(tmp_path):
    make_folder(tmp_path / "i", n=3, masks="index", masked=(0, 2))
    spec, scenes = read_folder(tmp_path / "i")
    assert spec.name == "fields" and spec.classes[1] == "building"
    assert [(s.scene_id, s.label_kind, s.label is not None) for s in scenes] == [
        ("scene_0", "index", True), ("scene_1", "index", False), ("scene_2", "index", True)]
    make_folder(tmp_path / "c", n=2, masks="color")
    _, scenes = read_folder(tmp_path / "c")
    assert {s.label_kind for s in scenes} == {"color"}


def test_folder_splits_csv_and_seeded(tmp_path):
    make_folder(tmp_path, n=10, masks="none")
    (tmp_path / "images" / "scene_0.tif.aux.xml").write_text("<PAMDataset/>")  # a sidecar
    seeded = read_folder(tmp_path, val_fraction=0.2, test_fraction=0.3, seed=1)[1]
    assert [sum(s.split == k for s in seeded) for k in ("train", "val", "test")] == [5, 2, 3]
    rows = "".join(f"scene_{k},{'test' if k < 2 else 'train'}\n" for k in range(10))
    (tmp_path / "splits.csv").write_text("scene_id,split\n" + rows)
    _, scenes = read_folder(tmp_path)
    assert {s.scene_id for s in scenes if s.split == "test"} == {"scene_0", "scene_1"}
    (tmp_path / "splits.csv").write_text("scene_id,split\nscene_0,train\n")
    with pytest.raises(CtfaError, match="splits.csv: no row for scene 'scene_1'"):
        read_folder(tmp_path)


def test_folder_bands_and_errors(tmp_path):
    layout = make_folder(tmp_path, n=2, masks="index")
    _, scenes = read_folder(tmp_path, bands="3,2,1")
    np.testing.assert_array_equal(read_bands(scenes[0].image, scenes[0].bands),
                                  layout.images["scene_0"][::-1])
    with pytest.raises(CtfaError, match="scene_0.tif: 2 bands are read but classes.yaml lists 3"):
        read_folder(tmp_path, bands="1,2")
    with pytest.raises(CtfaUsageError, match="--bands 'a,b'"):
        read_folder(tmp_path, bands="a,b")
    shutil.copy(tmp_path / "masks" / "scene_0.tif", tmp_path / "masks" / "scene_9.tif")
    with pytest.raises(CtfaError, match="scene_9.tif has no image of the same name"):
        read_folder(tmp_path)
    (tmp_path / "classes.yaml").unlink()
    with pytest.raises(CtfaError, match="no classes.yaml under"):
        read_folder(tmp_path)
