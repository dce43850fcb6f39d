"""The DATA_DIR contract: opening, splits, labels, multi-hot targets, chips, scenes, claiming."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from ctfa_cli.datasets import datadir
from ctfa_cli.datasets.datadir import DataDir, claim_output, is_datadir
from ctfa_cli.datasets.registry import get_spec
from ctfa_cli.datasets.tiling import build_datadir
from ctfa_cli.errors import CtfaError
from tests.datasets.tiny_scenes import write_scene


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A DATA_DIR with train/test chips; the test scene is stored under ``scenes/``."""
    root = tmp_path_factory.mktemp("datadir")
    out = root / "d"
    train = write_scene(root / "raw", "a", height=64, width=64, seed=1)
    test = write_scene(out / "scenes", "b", height=32, width=64, seed=2, split="test")
    # overwrite: `d` already holds the stored scene; an overwrite never deletes inputs
    build_datadir([train.record, test.record], get_spec("synthetic"), out, tile=32,
                  overwrite=True)
    assert test.record.image.exists()
    return out, train, test


def test_open_and_read_chips(prepared):
    out, train, _ = prepared
    data = DataDir.open(out)
    assert data.spec.name == "synthetic" and data.spec.tile_size == 32
    assert data.meta["format"] == datadir.FORMAT and "spec" not in data.meta
    assert data.splits == ["train", "test"]
    rows = data.split("train")
    assert list(rows.index) == list(range(4)) and set(rows["split"]) == {"train"}
    row = rows.iloc[3]
    assert row["chip_id"] == "a_r32_c32"
    image, mask = data.read_chip(row)
    assert image.dtype == np.uint8 and image.shape == (3, 32, 32)
    np.testing.assert_array_equal(image, train.image[:, 32:, 32:])
    np.testing.assert_array_equal(mask, train.mask[32:, 32:])
    assert data.image_path(row) == out / "chips/train/images/a_r32_c32.tif"
    assert data.mask_path(row) == out / "chips/train/masks/a_r32_c32.tif"


def test_split_error_lists_the_splits_present(prepared):
    data = DataDir.open(prepared[0])
    with pytest.raises(CtfaError, match="no chips in split 'val'; splits present: train, test"):
        data.split("val")


def test_labels_and_multi_hot(prepared):
    data = DataDir.open(prepared[0])
    row = {"labels": "1,4"}
    assert data.labels(row) == [1, 4]
    assert data.labels({"labels": ""}) == []
    # with a background class, class k is slot k-1
    np.testing.assert_array_equal(data.multi_hot(row), [1, 0, 0, 1, 0])
    assert data.multi_hot(row).dtype == np.float32
    # without one (DeepGlobe), class k is slot k
    spec = get_spec("deepglobe")
    plain = DataDir(root=data.root, spec=spec, meta={}, chips=data.chips)
    np.testing.assert_array_equal(plain.multi_hot({"labels": "0,6"}), [1, 0, 0, 0, 0, 0, 1])


def test_scene_paths_only_lists_stored_scenes(prepared):
    out, _, test = prepared
    data = DataDir.open(out)
    assert data.scene_paths() == [(test.record.image, test.record.label)]
    assert data.scene_paths("test") == data.scene_paths()
    with pytest.raises(CtfaError, match="no whole scenes stored in split 'train'"):
        data.scene_paths("train")


def test_open_errors_name_the_file_and_the_fix(tmp_path, prepared):
    with pytest.raises(CtfaError, match="no such DATA_DIR; run `ctfa prepare"):
        DataDir.open(tmp_path / "missing")
    with pytest.raises(CtfaError, match="not a DATA_DIR \\(no dataset.yaml\\)"):
        DataDir.open(tmp_path)
    (tmp_path / ".ctfa-prepare").mkdir()
    with pytest.raises(CtfaError, match="unfinished DATA_DIR"):
        DataDir.open(tmp_path)
    (tmp_path / "dataset.yaml").write_text("format: something-else\n")
    with pytest.raises(CtfaError, match="dataset.yaml: not a ctfa-datadir/1"):
        DataDir.open(tmp_path)
    (tmp_path / "dataset.yaml").write_text("format: [unclosed\n")
    with pytest.raises(CtfaError, match="dataset.yaml: unreadable"):
        DataDir.open(tmp_path)
    meta = yaml.safe_load((prepared[0] / "dataset.yaml").read_text())
    meta["spec"]["palette"] = meta["spec"]["palette"][:2]
    (tmp_path / "dataset.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(CtfaError, match="invalid spec"):
        DataDir.open(tmp_path)
    meta = yaml.safe_load((prepared[0] / "dataset.yaml").read_text())
    (tmp_path / "dataset.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(CtfaError, match="chips.gpkg: missing chip index"):
        DataDir.open(tmp_path)
    (tmp_path / "chips.gpkg").write_bytes(b"garbage")
    with pytest.raises(CtfaError, match="chips.gpkg: unreadable chip index"):
        DataDir.open(tmp_path)


def test_missing_chip_file_is_a_clear_error(tmp_path, prepared):
    data = DataDir.open(prepared[0])
    row = data.chips.iloc[0].copy()
    row["image"] = "chips/train/images/gone.tif"
    with pytest.raises(CtfaError, match="gone.tif: missing or unreadable chip"):
        data.read_chip(row)


def test_claim_output(tmp_path):
    settings = {"dataset": "synthetic", "source": "s", "tile": 32, "stride": 32}
    out = tmp_path / "new" / "d"
    claim_output(out, settings, overwrite=False)
    assert is_datadir(out)
    assert json.loads((out / ".ctfa-prepare" / "settings.json").read_text()) == settings
    claim_output(out, settings, overwrite=False)  # same settings: continue
    with pytest.raises(CtfaError, match="other settings \\(stride 32 → 16\\)"):
        claim_output(out, {**settings, "stride": 16}, overwrite=False)
    # overwrite removes DATA_DIR entries, except those that hold this run's inputs
    (out / "scenes").mkdir()
    kept = out / "scenes" / "input.tif"
    kept.write_bytes(b"x")
    (out / "chips").mkdir()
    claim_output(out, {**settings, "stride": 16}, overwrite=True, keep=[kept])
    assert kept.exists() and not (out / "chips").exists()
    claim_output(out, settings, overwrite=True)
    assert not (out / "scenes").exists()


def test_remove_stale_files(tmp_path):
    keep, stale = tmp_path / "chips/train/images/a.tif", tmp_path / "chips/val/images/b.tif"
    for path in (keep, stale):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
    assert datadir.remove_stale_files(tmp_path, {"chips/train/images/a.tif"}) == 1
    assert keep.exists() and not (tmp_path / "chips" / "val").exists()


def test_chip_names_and_label_strings():
    assert datadir.chip_id("top_potsdam_2_10", 512, 0) == "top_potsdam_2_10_r512_c0"
    assert datadir.chip_relpaths("val", "x") == ("chips/val/images/x.tif",
                                                 "chips/val/masks/x.tif")
    assert datadir.format_labels([4, 1, 4]) == "1,4"
    assert datadir.parse_labels(" 1, 4") == [1, 4] and datadir.parse_labels(None) == []
