"""Report tables, JSON conversion and the PNG pictures (built from hand-made inputs)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from ctfa_cli.datasets.registry import get_spec
from ctfa_cli.evaluation.evaluate import ChipPrediction
from ctfa_cli.evaluation.metrics import ConfusionMatrix
from ctfa_cli.evaluation.report import (
    CELL,
    HEAT_RAMP,
    MOSAIC_PANEL,
    STRIPES,
    colorize,
    confusion_image,
    display_rgb,
    heatmap,
    jsonable,
    metrics_table,
    mosaic_image,
    overlay_image,
    write_confusion_png,
    write_png,
)

SPEC = get_spec("synthetic")  # 6 ISPRS classes, palette white, blue, cyan, green, yellow, red
FULL_CELL = (8, 48, 107)  # colour of a cell holding 100 % of its row


def _metrics(confusion, undecided=None) -> dict:
    cm = ConfusionMatrix(len(confusion))
    cm.matrix += np.asarray(confusion)
    if undecided is not None:
        cm.undecided += np.asarray(undecided)
    return {**cm.compute(), "confusion": cm.matrix.tolist(), "undecided": cm.undecided.tolist()}


def _render(table) -> str:
    console = Console(file=io.StringIO(), width=120)
    console.print(table)
    return console.file.getvalue()


def test_jsonable_turns_undefined_values_into_null():
    value = {"miou": 0.5, "iou": [float("nan"), 1.0], "k": (float("inf"), 2), "name": "x"}
    assert jsonable(value) == {"miou": 0.5, "iou": [None, 1.0], "k": [None, 2], "name": "x"}


def test_metrics_table_lists_classes_and_summary():
    confusion = np.diag([10, 0, 30, 0, 5, 0]).tolist()
    confusion[0][2] = 10  # 10 impervious pixels predicted as low vegetation
    metrics = _metrics(confusion, undecided=[0, 0, 0, 0, 5, 0])
    text = _render(metrics_table(metrics, SPEC.classes, title="seg on test"))
    assert "seg on test" in text
    for name in SPEC.classes:
        assert name in text
    assert f"{metrics['miou']:.4f}" in text and f"{metrics['kappa']:.4f}" in text
    assert "—" in text  # building: absent and never predicted, IoU undefined
    assert "undecided predictions 8.33%" in text  # 5 of 60 pixels


def test_colorize_uses_the_palette_and_stripes_the_rest():
    labels = np.array([[0, 1, 5], [255, 255, 255]], dtype=np.uint8)
    rgb = colorize(labels, SPEC)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    assert [tuple(c) for c in rgb[0]] == [SPEC.palette[0], SPEC.palette[1], SPEC.palette[5]]
    assert {tuple(c) for c in rgb[1]} <= set(STRIPES)


def test_display_and_heatmap():
    image = np.arange(4 * 2 * 2, dtype=np.uint8).reshape(4, 2, 2)
    assert np.array_equal(display_rgb(image)[..., 2], image[2])
    grey = display_rgb(image[:1])
    assert np.array_equal(grey[..., 0], grey[..., 2])
    heat = heatmap(np.array([[0.0, 1.0]]))
    assert tuple(heat[0, 0]) == tuple(HEAT_RAMP[0]) and tuple(heat[0, 1]) == tuple(HEAT_RAMP[-1])


def test_confusion_image_is_row_normalised():
    perfect = confusion_image(np.diag([5, 1, 7, 2, 3, 9]).tolist(), [0] * 6, SPEC.classes)
    assert perfect.dtype == np.uint8 and perfect.ndim == 3
    # six cells at 100 %; dark text on them is drawn in white, so count cell-coloured pixels
    assert (perfect == FULL_CELL).all(-1).sum() > 6 * (CELL // 2) ** 2
    spread = np.full((6, 6), 3).tolist()  # every row spread evenly: no cell at 100 %
    assert not (confusion_image(spread, [0] * 6, SPEC.classes) == FULL_CELL).all(-1).any()
    with_undecided = confusion_image(spread, [1] * 6, SPEC.classes)
    assert with_undecided.shape[1] >= perfect.shape[1]


def test_overlay_shows_image_truth_and_prediction():
    image = np.full((3, 32, 48), 90, dtype=np.uint8)
    mask = np.zeros((32, 48), dtype=np.uint8)
    pred = np.full((32, 48), 1, dtype=np.uint8)
    pred[:, :8] = 255
    both = overlay_image(image, mask, pred, SPEC)
    colours = {tuple(c) for c in both.reshape(-1, 3)}
    assert SPEC.palette[0] in colours and SPEC.palette[1] in colours
    assert set(STRIPES) <= colours
    assert overlay_image(image, None, pred, SPEC).shape[1] < both.shape[1]


def test_mosaic_has_one_row_per_chip():
    def chip(name: str) -> ChipPrediction:
        cam = np.zeros((SPEC.num_cam_classes, 16, 16), dtype=np.float32)
        cam[2, 4:8, 4:8] = 1.0
        return ChipPrediction(
            row={"chip_id": name}, image=np.zeros((3, 16, 16), dtype=np.uint8),
            mask=np.full((16, 16), 3, dtype=np.uint8), labels=np.eye(5, dtype=np.float32)[2],
            predictions={"pseudo": np.full((16, 16), 255, dtype=np.uint8)}, cams={"cam": cam})

    one, three = mosaic_image([chip("a")], SPEC), mosaic_image([chip(c) for c in "abc"], SPEC)
    row_height = three.shape[0] - mosaic_image([chip(c) for c in "ab"], SPEC).shape[0]
    assert row_height >= MOSAIC_PANEL
    assert three.shape == (one.shape[0] + 2 * row_height, one.shape[1], 3)
    assert SPEC.palette[3] in {tuple(c) for c in one.reshape(-1, 3)}  # ground truth: tree
    with pytest.raises(ValueError, match="at least one chip"):
        mosaic_image([], SPEC)


def test_pngs_are_written_atomically_and_read_back(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    write_png(tmp_path / "a.png", rgb)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), rgb)
    write_confusion_png(tmp_path / "sub" / "c.png", _metrics(np.eye(6, dtype=int) * 4),
                        SPEC.classes)
    assert Image.open(tmp_path / "sub" / "c.png").format == "PNG"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.png", "c.png", "sub"]
