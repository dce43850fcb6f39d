"""Configs: dataset specs, presets, overrides and their error messages."""

import pytest

from ctfa_cli.config import (
    DatasetSpec,
    TrainConfig,
    dump_yaml,
    parse_set_options,
    resolve_train_config,
)
from ctfa_cli.datasets.registry import BUILTIN_SPECS, get_spec, spec_from_yaml
from ctfa_cli.errors import CtfaUsageError


def test_official_class_orders():
    assert get_spec("potsdam").classes == [
        "impervious_surfaces", "building", "low_vegetation", "tree", "car", "clutter"]
    isaid = get_spec("isaid")
    assert isaid.num_classes == 16 and isaid.classes[0] == "background"
    assert isaid.classes[1] == "ship" and isaid.classes[-1] == "harbor"
    deepglobe = get_spec("deepglobe")
    assert deepglobe.classes == ["urban", "agriculture", "rangeland", "forest", "water",
                                 "barren", "unknown"]


@pytest.mark.parametrize("name", sorted(BUILTIN_SPECS))
def test_background_policy_sets_cam_classes(name):
    spec = get_spec(name)
    if spec.has_background:
        assert spec.num_cam_classes == spec.num_classes - 1
        assert spec.foreground_classes == list(range(1, spec.num_classes))
    else:
        assert spec.num_cam_classes == spec.num_classes
        assert spec.foreground_classes == list(range(spec.num_classes))
    assert len(set(spec.palette)) == spec.num_classes


def test_spec_rejects_inconsistent_fields():
    with pytest.raises(ValueError, match="palette"):
        DatasetSpec(name="x", classes=["a", "b"], palette=[(0, 0, 0)])
    with pytest.raises(ValueError, match="bands"):
        DatasetSpec(name="x", classes=["a"], palette=[(0, 0, 0)], bands=["r", "g"])


def test_folder_spec_from_yaml(tmp_path):
    path = tmp_path / "classes.yaml"
    path.write_text("classes: [background, field]\npalette: [[0, 0, 0], [0, 200, 0]]\n")
    spec = spec_from_yaml(path)
    assert spec.name == "folder" and spec.num_cam_classes == 1
    path.write_text("classes: [a]\npalette: [[0, 0, 0]]\ncolour: red\n")
    with pytest.raises(CtfaUsageError, match="colour"):
        spec_from_yaml(path)


def test_paper_presets_follow_the_official_scripts():
    assert resolve_train_config("isaid").lr == 6e-5
    potsdam = resolve_train_config("potsdam")
    assert (potsdam.lr, potsdam.bkg_thre, potsdam.seg_gate_iters) == (4e-5, 0.6, 2000)
    deepglobe = resolve_train_config("deepglobe")
    assert (deepglobe.w_seg, deepglobe.w_joint, deepglobe.head_lr_mult) == (0.2, 0.2, 10.0)
    assert (potsdam.crop_size, potsdam.batch_size, potsdam.max_iters) == (320, 8, 20000)


def test_overrides_order_preset_file_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1.0e-3\nbatch_size: 2\n")
    cfg = resolve_train_config("potsdam", "cpu", path, parse_set_options(["batch_size=3"]))
    assert cfg.backbone == "vit_tiny_patch16_224"  # from the preset
    assert cfg.lr == 1e-3  # from the file
    assert cfg.batch_size == 3  # from --set, last word


def test_config_typo_is_a_one_line_usage_error():
    with pytest.raises(CtfaUsageError) as err:
        resolve_train_config("potsdam", overrides={"lrr": 1})
    assert "lrr" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CtfaUsageError, match="batch_size"):
        resolve_train_config("potsdam", overrides={"batch_size": "many"})
    with pytest.raises(CtfaUsageError, match="key=value"):
        parse_set_options(["lr"])
    with pytest.raises(CtfaUsageError, match="preset"):
        resolve_train_config("potsdam", "gpu")


def test_yaml_round_trip():
    cfg = resolve_train_config("deepglobe", "paper")
    import yaml

    assert TrainConfig(**yaml.safe_load(dump_yaml(cfg))) == cfg


def test_measured_statistics_fill_only_the_unknown_bands():
    spec = get_spec("synthetic").model_copy(update={
        "bands": ["r", "g", "b", "ir", "ndsm"], "mean": [0.1, 0.2, 0.3, None, None],
        "std": [0.4, 0.5, 0.6, None, None]})
    assert spec.unmeasured_bands == ["ir", "ndsm"]
    filled = spec.with_measured_statistics([0.9] * 5, [0.25, 0.25, 0.25, 0.2, 0.0])
    assert filled.mean == [0.1, 0.2, 0.3, 0.9, 0.9]
    # A constant band gets one grey level of spread, not a division by zero.
    assert filled.std == [0.4, 0.5, 0.6, 0.2, 1 / 255]
    assert filled.unmeasured_bands == []
