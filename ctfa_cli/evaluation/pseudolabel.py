"""``ctfa pseudolabel``: refined pseudo labels of a split, written as a DATA_DIR of their own.

For every chip of the split, the pseudo label of training (multi-scale + flip CAMs of the
final classifier restricted to the chip's image-level labels → high/low background thresholds
→ PAR refinement at half resolution; see :mod:`ctfa_cli.evaluation.evaluate`) is written as a
single-band uint8 GeoTIFF in the chip's CRS and transform (none for non-georeferenced chips such
as iSAID's), the dataset palette as its colour table, ``ignore_index`` (255) for the pixels the
refinement leaves undecided, which is also its nodata value.

Output layout: OUT is itself a DATA_DIR whose masks are the pseudo labels, so it trains any
fully supervised segmenter (the classic multi-stage route) and opens with every ``ctfa`` verb::

    OUT/
      dataset.yaml                        DATA_DIR's spec; ``pseudo_labels`` says where they
                                          come from (model, DATA_DIR, split, thresholds)
      chips.gpkg                          the split's chips: footprints, image-level labels,
                                          ``image`` → DATA_DIR's chip image (path relative to
                                          OUT), ``mask`` → the pseudo label
      chips/<split>/masks/<chip_id>.tif   the pseudo labels (DATA_DIR's own mask layout)
      report.json                         ignored share, class shares, and the metrics of the
                                          pseudo labels against DATA_DIR's masks when it has them

A segmenter that pairs images and labels by file name takes
``DATA_DIR/chips/<split>/images`` and ``OUT/chips/<split>/masks`` (same names, ignore 255).
Images are referenced rather than copied: move OUT and DATA_DIR together (or rewrite the
``image`` column) to keep the link.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning

from ctfa_cli import __version__
from ctfa_cli.config import DatasetSpec, TrainConfig
from ctfa_cli.datasets.datadir import (
    CHIPS_DIR,
    CHIPS_GPKG,
    DATASET_YAML,
    DataDir,
    chip_relpaths,
    write_chips_index,
    write_dataset_yaml,
    write_json,
)
from ctfa_cli.evaluation.evaluate import check_model_fits, predict_chips
from ctfa_cli.evaluation.metrics import ConfusionMatrix
from ctfa_cli.evaluation.report import jsonable
from ctfa_cli.io import atomic_path, claim_folder
from ctfa_cli.precision import check_amp

log = logging.getLogger("ctfa.evaluation.pseudolabel")

REPORT_JSON = "report.json"
OUTPUTS = (DATASET_YAML, CHIPS_GPKG, CHIPS_DIR, REPORT_JSON)


@dataclass
class PseudoLabelReport:
    """What :func:`write_pseudo_labels` wrote and how good it is.

    Attributes:
        out: the output folder (a DATA_DIR).
        data: the source DATA_DIR.
        split: the split labelled.
        amp: the precision the network ran in (``none`` or ``bf16``).
        chips: chips written.
        pixels: pixels written.
        ignored_pixels: pixels left undecided (``ignore_index``).
        class_pixels: ``[C]`` pixels given each class.
        chips_with_masks: chips whose DATA_DIR mask the pseudo labels were scored against.
        metrics: :meth:`ConfusionMatrix.compute` of the pseudo labels against those masks
            (undecided pixels count as misses), plus ``confusion``; None without masks.
    """

    out: Path
    data: Path
    split: str
    amp: str
    chips: int
    pixels: int
    ignored_pixels: int
    class_pixels: list[int]
    chips_with_masks: int
    metrics: dict | None

    @property
    def ignored_share(self) -> float:
        """Share of the written pixels left undecided (0 when nothing was written)."""
        return self.ignored_pixels / self.pixels if self.pixels else 0.0

    def to_json(self) -> dict[str, Any]:
        """JSON-ready summary (NaN written as null)."""
        total = max(self.pixels, 1)
        return jsonable({
            "out": str(self.out), "data": str(self.data), "split": self.split,
            "amp": self.amp, "chips": self.chips, "pixels": self.pixels,
            "ignored_pixels": self.ignored_pixels, "ignored_share": self.ignored_share,
            "class_share": [n / total for n in self.class_pixels],
            "chips_with_masks": self.chips_with_masks, "metrics": self.metrics,
        })


def write_pseudo_labels(
    model: torch.nn.Module,
    spec: DatasetSpec,
    cfg: TrainConfig,
    data: DataDir,
    split: str,
    out: Path,
    *,
    overwrite: bool,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    progress: bool = True,
    model_path: Path | None = None,
    amp: str = "none",
) -> PseudoLabelReport:
    """Write the refined pseudo label of every chip of ``split`` into the DATA_DIR ``out``.

    See the module docstring for the layout. Every file is written under a temporary name and
    renamed; ``dataset.yaml`` comes last, so a folder without it is an unfinished run.

    Args:
        model: the CTFA network.
        spec: the spec it was trained on.
        cfg: its training config (CAM scales, thresholds, PAR settings).
        data: the source DATA_DIR.
        split: split to label (the train split in the multi-stage route).
        out: output folder; must be missing or empty unless ``overwrite``.
        overwrite: replace the outputs of an earlier run in ``out`` (only those).
        device: where the model runs.
        batch_size: chips per forward pass.
        progress: show a progress bar on stderr (terminal only).
        model_path: the checkpoint, recorded in ``dataset.yaml`` when given.
        amp: ``"bf16"`` runs the network under bfloat16 autocast (recorded in ``dataset.yaml``
            and the report); ``"none"``: float32.

    Returns:
        The :class:`PseudoLabelReport` (also written as ``report.json``).

    Raises:
        CtfaError: the split is empty, a chip is unreadable, the model does not fit DATA_DIR,
            or ``out`` is not empty (without ``overwrite``) or is DATA_DIR itself.
        CtfaUsageError: an unknown ``amp``.
    """
    check_amp(amp)
    out = Path(out)
    check_model_fits(spec, data, model_path)
    rows = data.split(split)
    claim_folder(out, overwrite, owned=OUTPUTS, inputs=(data.root,))
    matrix = ConfusionMatrix(spec.num_classes, spec.ignore_index)
    class_pixels = np.zeros(spec.num_classes, dtype=np.int64)
    ignored = pixels = scored = 0
    masks: dict[str, str] = {}
    log.info("writing pseudo labels of %s split %s (%d chips) to %s", data.root, split,
             len(rows), out)
    for chip in predict_chips(model, spec, cfg, data, split, targets=("pseudo",),
                              device=device, batch_size=batch_size, progress=progress, amp=amp):
        label = chip.predictions["pseudo"]
        relative = chip_relpaths(split, chip.chip_id)[1]
        _write_label(out / relative, label, data.image_path(chip.row), spec)
        masks[chip.chip_id] = relative
        counts = np.bincount(label.ravel(), minlength=256)
        class_pixels += counts[: spec.num_classes]
        ignored += int(counts[spec.ignore_index])
        pixels += label.size
        if chip.mask is not None:
            matrix.update(torch.from_numpy(label), torch.from_numpy(chip.mask))
            scored += 1
    metrics = None
    if scored:
        metrics = {**matrix.compute(), "confusion": matrix.matrix.tolist(),
                   "undecided": matrix.undecided.tolist()}
    report = PseudoLabelReport(out=out, data=data.root, split=split, amp=amp, chips=len(masks),
                               pixels=pixels, ignored_pixels=ignored,
                               class_pixels=class_pixels.tolist(), chips_with_masks=scored,
                               metrics=metrics)
    write_json(out / REPORT_JSON, report.to_json())
    write_chips_index(out, _index(data, rows, out, masks))
    write_dataset_yaml(out, _description(data, spec, cfg, split, len(masks), model_path, amp))
    log.info("%d pseudo labels written to %s; %.1f %% of the pixels ignored", len(masks), out,
             100 * report.ignored_share)
    return report


def _write_label(path: Path, label: np.ndarray, image_path: Path, spec: DatasetSpec) -> None:
    """One pseudo label as a GeoTIFF on the grid (CRS, transform) of its chip image."""
    with rasterio.open(image_path) as src:
        crs, transform = src.crs, src.transform
    profile = {"driver": "GTiff", "dtype": "uint8", "count": 1, "height": label.shape[0],
               "width": label.shape[1], "compress": "deflate", "nodata": spec.ignore_index}
    if crs is not None or not transform.is_identity:
        profile.update(crs=crs, transform=transform)
    colormap = {k: (*c, 255) for k, c in enumerate(spec.palette)}
    colormap[spec.ignore_index] = (0, 0, 0, 0)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # chips of non-georeferenced scenes (iSAID) have no geotransform, nor do their labels
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(label[None])
            dst.write_colormap(1, colormap)
            dst.set_band_description(1, "pseudo label")


def _index(data: DataDir, rows, out: Path, masks: dict[str, str]):
    """The split's rows of ``chips.gpkg`` re-pointed: images at DATA_DIR, masks at OUT."""
    index = rows.copy()
    index["image"] = [_relative(data.image_path(row), out) for _, row in index.iterrows()]
    index["mask"] = index["chip_id"].map(masks)
    return index


def _relative(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` (POSIX separators); absolute when there is no relative
    path (another drive on Windows)."""
    try:
        return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def _description(data: DataDir, spec: DatasetSpec, cfg: TrainConfig, split: str, chips: int,
                 model_path: Path | None, amp: str) -> dict[str, Any]:
    """``dataset.yaml`` body: DATA_DIR's spec and imagery facts, and where the labels come
    from. DATA_DIR's per-split statistics and whole scenes stay with DATA_DIR."""
    imagery = {k: data.meta[k] for k in ("tile_size", "stride", "crs", "statistics")
               if k in data.meta}
    return {
        "ctfa_version": __version__,
        "spec": data.spec.model_dump(mode="json"),
        "source": f"pseudo labels of {data.root.resolve()} (split {split})",
        **imagery,
        "chips": {split: chips},
        "pseudo_labels": {
            "model": str(Path(model_path).resolve()) if model_path is not None else None,
            "model_dataset": spec.name,
            "data_dir": str(data.root.resolve()),
            "split": split,
            "ignore_index": spec.ignore_index,
            "method": "multi-scale + flip CAMs of the final classifier, restricted to the "
                      "image-level labels; background thresholds; PAR refinement",
            "cam_scales": list(cfg.cam_scales),
            "high_thre": cfg.high_thre,
            "low_thre": cfg.low_thre,
            "par_dilations": list(cfg.par_dilations),
            "par_iters": cfg.par_iters,
            "amp": amp,
        },
    }
