"""Reports of an evaluation: rich tables, JSON-ready dicts and PNGs a person can look at.

* :func:`metrics_table` / :func:`pseudo_label_table`: rich tables for stdout.
* :func:`jsonable`: metrics with NaN (undefined values) turned into ``None`` (valid JSON).
* :func:`write_confusion_png`: the row-normalised confusion matrix with class names.
* :func:`write_overlay_png`: image | ground truth | prediction of one chip, in the palette.
* :func:`write_mosaic_png`: chips with their CAMs, pseudo labels, predictions and ground truth,
  one row per chip (reused by the demo).

Images are assembled with numpy and labelled with Pillow's built-in font; PNGs are written
under a temporary name, then renamed. Label rasters use the dataset palette; pixels that are
ignored (ground truth) or undecided (CAM or pseudo labels) are drawn with grey diagonal
stripes so that they never look like a class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from rich.table import Table

from ctfa_cli.config import DatasetSpec
from ctfa_cli.io import atomic_path

if TYPE_CHECKING:
    from ctfa_cli.evaluation.evaluate import ChipPrediction

# Longest side of one image panel in the PNGs, in pixels (chips are scaled to it).
PANEL = 256
MOSAIC_PANEL = 160
CELL = 44  # confusion-matrix cell, pixels
TITLE = "confusion matrix: % of the pixels of each true class"
AXES = "rows: ground truth (index name) · columns: prediction (index; undec. = undecided)"
MARGIN = 8
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
STRIPES = ((150, 150, 150), (60, 60, 60))
# Colour ramp of CAM heat maps (dark blue → red → yellow), sampled linearly.
HEAT_RAMP = np.array([(0, 0, 64), (64, 0, 160), (200, 0, 80), (255, 120, 0), (255, 255, 80)],
                     dtype=np.float32)


# --- tables and JSON ---------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """Copy of ``value`` (dicts, lists, numbers) with NaN/inf floats replaced by ``None``."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def metrics_table(metrics: dict, class_names: Sequence[str], *, title: str) -> Table:
    """Per-class IoU, precision, recall and F1, then mIoU, mF1, OA and kappa.

    Args:
        metrics: a dict of :func:`ctfa_cli.evaluation.evaluate.evaluate_split` (one target).
        class_names: names in class-index order.
        title: the table's title.

    Returns:
        A rich table; classes absent from the ground truth are dimmed (they are not part of
        the means), undefined values are shown as ``—``.
    """
    table = Table(title=title, title_justify="left")
    table.add_column("class")
    for name in ("IoU", "precision", "recall", "F1", "pixels"):
        table.add_column(name, justify="right")
    for index, name in enumerate(class_names):
        actual = sum(metrics["confusion"][index]) + metrics["undecided"][index]
        table.add_row(name, *(_number(metrics[key][index])
                              for key in ("iou", "precision", "recall", "f1")),
                      f"{actual:,}", style=None if metrics["present"][index] else "dim")
    table.add_section()
    table.add_row("mean (classes present)", _number(metrics["miou"]), "", "",
                  _number(metrics["mf1"]), f"{metrics['pixels']:,}", style="bold")
    undecided = metrics["ignored_predictions"] / metrics["pixels"] if metrics["pixels"] else 0.0
    table.caption = (f"OA {_number(metrics['oa'])} · kappa {_number(metrics['kappa'])} · "
                     f"mF1 as the official code {_number(metrics['mf1_official'])} (classes "
                     f"never predicted right left out) · undecided predictions {undecided:.2%}")
    table.caption_justify = "left"
    return table


def pseudo_label_table(summary: dict, class_names: Sequence[str], *, title: str) -> Table:
    """The share of each class among the written pseudo-label pixels, and the ignored share.

    Args:
        summary: :meth:`ctfa_cli.evaluation.pseudolabel.PseudoLabelReport.to_json`.
        class_names: names in class-index order.
        title: the table's title.
    """
    table = Table(title=title, title_justify="left")
    table.add_column("class")
    table.add_column("share of pixels", justify="right")
    for name, share in zip(class_names, summary["class_share"], strict=True):
        table.add_row(name, f"{share:.2%}")
    table.add_section()
    table.add_row("ignored", f"{summary['ignored_share']:.2%}", style="bold")
    table.caption = f"{summary['chips']} chips · {summary['pixels']:,} pixels → {summary['out']}"
    table.caption_justify = "left"
    return table


def _number(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.4f}"


# --- pictures ------------------------------------------------------------------------------------


def display_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 ``[bands, H, W]`` → uint8 ``[H, W, 3]``: the first three bands as RGB (e.g. the
    IR-R-G false colour of Potsdam), or the first band as grey with fewer than three."""
    rgb = image[:3] if image.shape[0] >= 3 else np.repeat(image[:1], 3, axis=0)
    return np.ascontiguousarray(np.moveaxis(rgb, 0, -1))


def colorize(labels: np.ndarray, spec: DatasetSpec) -> np.ndarray:
    """Class indices ``[H, W]`` → uint8 ``[H, W, 3]`` in the palette; any value that is not a
    class (ignored, undecided) gets grey diagonal stripes."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: spec.num_classes] = np.asarray(spec.palette, dtype=np.uint8)
    rgb = lut[labels]
    other = labels >= spec.num_classes
    if other.any():
        rgb[other] = _stripes(labels.shape)[other]
    return rgb


def heatmap(values: np.ndarray, under: np.ndarray | None = None) -> np.ndarray:
    """Values ``[H, W]`` in ``[0, 1]`` → uint8 ``[H, W, 3]`` on :data:`HEAT_RAMP`, blended
    half and half over the greyscale of ``under`` (uint8 ``[H, W, 3]``) when given."""
    position = np.clip(values, 0, 1) * (len(HEAT_RAMP) - 1)
    low = np.floor(position).astype(int).clip(max=len(HEAT_RAMP) - 2)
    frac = (position - low)[..., None]
    colour = HEAT_RAMP[low] * (1 - frac) + HEAT_RAMP[low + 1] * frac
    if under is not None:
        colour = 0.5 * colour + 0.5 * under.mean(axis=-1, keepdims=True)
    return colour.round().astype(np.uint8)


def confusion_image(confusion: Sequence[Sequence[int]], undecided: Sequence[int],
                    class_names: Sequence[str]) -> np.ndarray:
    """Render a row-normalised confusion matrix.

    Each cell shows the percentage of the true class's pixels (row) predicted as the column's
    class; an extra ``undecided`` column appears when a prediction left pixels undecided. Rows
    are labelled ``index name``, columns by index; rows of classes absent from the ground truth
    are grey.

    Args:
        confusion: ``[C][C]`` pixel counts, rows ground truth, columns prediction.
        undecided: ``[C]`` pixels of each true class left undecided.
        class_names: ``C`` names.

    Returns:
        uint8 ``[H, W, 3]``.
    """
    counts = np.asarray(confusion, dtype=np.float64)
    undecided_counts = np.asarray(undecided, dtype=np.float64)
    if undecided_counts.sum() > 0:
        counts = np.concatenate([counts, undecided_counts[:, None]], axis=1)
    c, columns = len(class_names), counts.shape[1]
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    font, small = _font(14), _font(12)
    labels = [f"{i} {name}" for i, name in enumerate(class_names)]
    left = MARGIN * 2 + max(_text_width(font, t) for t in labels)
    top = MARGIN * 3 + 2 * 18
    width = max(left + columns * CELL + MARGIN,
                MARGIN * 2 + _text_width(font, TITLE), MARGIN * 2 + _text_width(small, AXES))
    height = top + c * CELL + MARGIN * 3 + 18
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((MARGIN, MARGIN), TITLE, fill=TEXT, font=font)
    heads = [str(i) for i in range(c)] + (["undec."] if columns > c else [])
    for j, head in enumerate(heads):
        draw.text((left + j * CELL + CELL / 2, top - MARGIN), head, fill=TEXT, font=small,
                  anchor="ms")
    for i in range(c):
        y = top + i * CELL
        draw.text((left - MARGIN, y + CELL / 2), labels[i], fill=TEXT, font=font, anchor="rm")
        for j in range(columns):
            x = left + j * CELL
            if totals[i, 0] == 0:
                draw.rectangle((x, y, x + CELL - 1, y + CELL - 1), fill=(235, 235, 235))
                continue
            share = shares[i, j]
            shade = tuple(int(round(255 - share * (255 - v))) for v in (8, 48, 107))
            draw.rectangle((x, y, x + CELL - 1, y + CELL - 1), fill=shade)
            if counts[i, j] > 0:  # empty cells stay blank so that the errors stand out
                draw.text((x + CELL / 2, y + CELL / 2), f"{100 * share:.1f}", font=small,
                          fill=(255, 255, 255) if share > 0.5 else TEXT, anchor="mm")
    draw.rectangle((left, top, left + columns * CELL - 1, top + c * CELL - 1), outline=TEXT)
    draw.text((MARGIN, top + c * CELL + MARGIN), AXES, fill=TEXT, font=small)
    return np.asarray(canvas)


def overlay_image(image: np.ndarray, mask: np.ndarray | None, prediction: np.ndarray,
                  spec: DatasetSpec, *, prediction_title: str = "prediction",
                  panel: int = PANEL) -> np.ndarray:
    """image | ground truth | prediction of one chip side by side, titled, with a legend.

    Args:
        image: uint8 ``[bands, H, W]``.
        mask: uint8 ``[H, W]`` ground truth, or None (the panel is left out).
        prediction: uint8 ``[H, W]`` class indices.
        spec: palette and class names.
        prediction_title: title of the prediction panel.
        panel: longest side of each panel in pixels (whole scenes want more than chips).

    Returns:
        uint8 ``[H', W', 3]``.
    """
    panels = [(display_rgb(image), "image", False)]
    if mask is not None:
        panels.append((colorize(mask, spec), "ground truth", True))
    panels.append((colorize(prediction, spec), prediction_title, True))
    return _compose([panels], panel=panel, spec=spec)


def mosaic_image(chips: Sequence[ChipPrediction], spec: DatasetSpec) -> np.ndarray:
    """One row per chip: image, each CAM (heat map of the strongest present class), each
    prediction, and the ground truth when the chip has one.

    Args:
        chips: predictions of :func:`ctfa_cli.evaluation.evaluate.predict_chips` (with
            ``keep_cams=True`` for CAM columns).
        spec: palette and class names.

    Returns:
        uint8 ``[H, W, 3]``.

    Raises:
        ValueError: no chip.
    """
    if not chips:
        raise ValueError("a mosaic needs at least one chip")
    titles = {"cam": "CAM", "aux_cam": "aux CAM", "seg": "segmentation",
              "pseudo": "pseudo label"}
    rows = []
    for chip in chips:
        rgb = display_rgb(chip.image)
        panels = [(rgb, chip.chip_id, False)]
        panels += [(heatmap(cam.max(axis=0), rgb), titles.get(name, name), False)
                   for name, cam in chip.cams.items()]
        panels += [(colorize(pred, spec), titles.get(name, name), True)
                   for name, pred in chip.predictions.items()]
        if chip.mask is not None:
            panels.append((colorize(chip.mask, spec), "ground truth", True))
        rows.append(panels)
    return _compose(rows, panel=MOSAIC_PANEL, spec=spec)


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Write uint8 ``[H, W, 3]`` as a PNG through a temporary name."""
    with atomic_path(Path(path)) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")


def write_confusion_png(path: Path, metrics: dict, class_names: Sequence[str]) -> None:
    """:func:`confusion_image` of one target's metrics, written to ``path``."""
    write_png(path, confusion_image(metrics["confusion"], metrics["undecided"], class_names))


def write_overlay_png(path: Path, image: np.ndarray, mask: np.ndarray | None,
                      prediction: np.ndarray, spec: DatasetSpec, *,
                      prediction_title: str = "prediction", panel: int = PANEL) -> None:
    """:func:`overlay_image`, written to ``path``."""
    write_png(path, overlay_image(image, mask, prediction, spec,
                                  prediction_title=prediction_title, panel=panel))


def write_mosaic_png(path: Path, chips: Sequence[ChipPrediction], spec: DatasetSpec) -> None:
    """:func:`mosaic_image`, written to ``path``."""
    write_png(path, mosaic_image(chips, spec))


# --- drawing helpers -----------------------------------------------------------------------------


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at ``size`` (its fixed bitmap font when built without FreeType)."""
    return ImageFont.load_default(size=size)


def _text_width(font, text: str) -> int:
    left, _, right, _ = font.getbbox(text)
    return int(math.ceil(right - left))


def _stripes(shape: tuple[int, int]) -> np.ndarray:
    rows, cols = np.indices(shape)
    dark = ((rows + cols) // 4) % 2 == 1
    return np.where(dark[..., None], STRIPES[1], STRIPES[0]).astype(np.uint8)


def _fit(rgb: np.ndarray, panel: int, labels: bool) -> Image.Image:
    """Scale a panel so that its longest side is ``panel`` px (nearest for label maps)."""
    h, w = rgb.shape[:2]
    scale = panel / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resample = Image.Resampling.NEAREST if labels or scale >= 1 else Image.Resampling.BOX
    return Image.fromarray(rgb).resize(size, resample)


def _compose(rows: list[list[tuple[np.ndarray, str, bool]]], *, panel: int,
             spec: DatasetSpec) -> np.ndarray:
    """Grid of titled panels ``(rgb, title, is_label_map)``, then the palette legend."""
    font = _font(13)
    title_h = 20
    fitted = [[(_fit(rgb, panel, labels), title) for rgb, title, labels in row] for row in rows]
    row_heights = [max(img.height for img, _ in row) + title_h + MARGIN for row in fitted]
    grid_width = max(sum(img.width + MARGIN for img, _ in row) for row in fitted) + MARGIN
    legend = _legend(spec, max(grid_width, 320), font)
    width = max(grid_width, legend.width)
    canvas = Image.new("RGB", (width, MARGIN + sum(row_heights) + legend.height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    y = MARGIN
    for row, height in zip(fitted, row_heights, strict=True):
        x = MARGIN
        for img, title in row:
            draw.text((x, y), _clip(font, title, img.width), fill=TEXT, font=font)
            canvas.paste(img, (x, y + title_h))
            # an outline, so that white classes and bright images keep their edges
            draw.rectangle((x - 1, y + title_h - 1, x + img.width, y + title_h + img.height),
                           outline=(120, 120, 120))
            x += img.width + MARGIN
        y += height
    canvas.paste(legend, (0, y))
    return np.asarray(canvas)


def _legend(spec: DatasetSpec, width: int, font) -> Image.Image:
    """Swatches of the palette with class names, wrapped to ``width``, plus the stripes."""
    swatch = 14
    items = [(np.full((swatch, swatch, 3), colour, dtype=np.uint8), name)
             for colour, name in zip(spec.palette, spec.classes, strict=True)]
    items.append((_stripes((swatch, swatch)), "ignored / undecided"))
    placed, x, y = [], MARGIN, 0
    for tile, name in items:
        item_width = swatch + 4 + _text_width(font, name) + 2 * MARGIN
        if x > MARGIN and x + item_width > width:
            x, y = MARGIN, y + swatch + MARGIN
        placed.append((x, y, tile, name))
        x += item_width
    legend = Image.new("RGB", (width, y + swatch + 2 * MARGIN), BACKGROUND)
    draw = ImageDraw.Draw(legend)
    for x, y, tile, name in placed:
        legend.paste(Image.fromarray(tile), (x, y))
        draw.rectangle((x, y, x + swatch - 1, y + swatch - 1), outline=(120, 120, 120))
        draw.text((x + swatch + 4, y + swatch / 2), name, fill=TEXT, font=font, anchor="lm")
    return legend


def _clip(font, text: str, width: int) -> str:
    """``text`` shortened with an ellipsis to fit ``width`` pixels."""
    if _text_width(font, text) <= width:
        return text
    while text and _text_width(font, text + "…") > width:
        text = text[:-1]
    return text + "…"
