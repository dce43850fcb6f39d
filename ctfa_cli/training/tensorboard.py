"""TensorBoard logs of a training run, under ``RUN_DIR/tensorboard/`` (rank 0 only).

``metrics.jsonl`` stays the source of truth; TensorBoard receives a copy of every number in it
and, at every evaluation, a picture of a fixed set of validation chips:

* every training record (``kind: train``): each loss term, ``lr``, ``img_per_s``, ``skipped``
  and ``skipped_fraction`` as ``train/<key>``;
* every evaluation record (``kind: eval``): per target (``cam``, ``aux_cam``, ``seg``) the
  summary metrics (``miou``, ``mf1``, ``mf1_official``, ``oa``, ``kappa``) as
  ``<split>/<target>/<metric>`` and the per-class IoU and F1 as
  ``<split>/<target>/iou/<class>``, ``<split>/<target>/f1/<class>`` (spaces in class names
  become underscores);
* at every evaluation, the image ``<split>/chips``: one row per chip, image | CAM | aux CAM |
  refined pseudo label | segmentation | ground truth, labels in the dataset palette
  (:func:`ctfa_cli.evaluation.report.mosaic_image`), for :data:`GRID_CHIPS` chips spread evenly
  over the validation split — the same chips every time, so the CAMs can be seen sharpening.

TensorBoard is optional (``pip install 'ctfa[tensorboard]'``): without the package, or with
``tensorboard: false`` in the training config, :func:`open_writer` says once why the logs are
off and returns None.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ctfa_cli.config import DatasetSpec, TrainConfig

log = logging.getLogger("ctfa.training.tensorboard")

TENSORBOARD_DIR = "tensorboard"
# Validation chips in the image grid (fewer when the split is smaller).
GRID_CHIPS = 4
# Summary metrics of an evaluation target, and the per-class lists written per class name.
SUMMARY_METRICS = ("miou", "mf1", "mf1_official", "oa", "kappa")
PER_CLASS_METRICS = ("iou", "f1")
# Keys of a training record that are not numbers to plot.
NOT_SCALARS = ("kind", "step", "split")


def train_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """``train/<key>`` → value of every number of a training record."""
    return {f"train/{key}": float(value) for key, value in record.items()
            if key not in NOT_SCALARS and _is_number(value)}


def eval_scalars(record: Mapping[str, Any], classes: list[str]) -> dict[str, float]:
    """``<split>/<target>/…`` → value of the summary and per-class metrics of an eval record."""
    split = record.get("split", "val")
    scalars: dict[str, float] = {}
    for target, metrics in record.items():
        if not isinstance(metrics, Mapping):
            continue
        for name in SUMMARY_METRICS:
            if _is_number(metrics.get(name)):
                scalars[f"{split}/{target}/{name}"] = float(metrics[name])
        for name in PER_CLASS_METRICS:
            values = metrics.get(name)
            if isinstance(values, list) and len(values) == len(classes):
                # TensorBoard turns spaces in tags into underscores; do it here, visibly.
                scalars.update({f"{split}/{target}/{name}/{cls.replace(' ', '_')}": float(v)
                                for cls, v in zip(classes, values, strict=True)
                                if _is_number(v)})
    return scalars


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class TensorBoardWriter:
    """Writes a run's records and chip grids as TensorBoard events.

    Args:
        folder: ``RUN_DIR/tensorboard``.
        spec: the dataset spec (class names for per-class tags, palette for the grid).
        cfg: the training config (CAM and refinement settings for the grid, crop size, amp).
        data: the DATA_DIR (its validation chips for the grid), or None for no grid.
        val_split: the validation split (None: no evaluation, no grid).
        start_step: the step this run starts from; on a resumed run, events of later steps
            written before the interruption are purged (they are about to be redone).
    """

    def __init__(self, folder: Path, spec: DatasetSpec, cfg: TrainConfig, data: Any = None,
                 val_split: str | None = None, *, start_step: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.folder = Path(folder)
        if start_step == 0 and self.folder.exists():
            # A run that starts at step 0 is new or overwritten: old curves would mix in.
            shutil.rmtree(self.folder)
        self.spec, self.cfg, self.val_split = spec, cfg, val_split
        self.grid_data = _grid_subset(data, val_split) if data is not None else None
        # Resuming at step s keeps the records of steps <= s (as metrics.jsonl does) and
        # purges the later ones, which are about to be redone.
        self.writer = SummaryWriter(str(self.folder),
                                    purge_step=start_step + 1 if start_step > 0 else None)

    def add_record(self, record: Mapping[str, Any]) -> None:
        """Write the numbers of one ``metrics.jsonl`` record at its step."""
        step = int(record["step"])
        if record.get("kind") == "eval":
            scalars = eval_scalars(record, list(self.spec.classes))
        else:
            scalars = train_scalars(record)
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def add_grid(self, model: Any, step: int, device: Any = "cpu") -> None:
        """Write the chip grid of ``model`` at ``step`` (nothing without validation chips).

        The model is run in eval mode without gradients and given back in its former mode
        (:func:`ctfa_cli.evaluation.evaluate.predict_chips` does both).
        """
        if self.grid_data is None:
            return
        from ctfa_cli.evaluation.evaluate import predict_chips
        from ctfa_cli.evaluation.report import mosaic_image

        chips = list(predict_chips(
            model, self.spec, self.cfg, self.grid_data, self.val_split,
            targets=("pseudo", "seg"), keep_cams=True, device=device,
            batch_size=GRID_CHIPS, input_size=self.cfg.crop_size, amp=self.cfg.amp))
        grid = mosaic_image(chips, self.spec)  # uint8 [H, W, 3]
        self.writer.add_image(f"{self.val_split}/chips", grid, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()


def _grid_subset(data: Any, split: str | None) -> Any:
    """``data`` restricted to :data:`GRID_CHIPS` chips of ``split`` with masks, evenly spread
    (None when there are none)."""
    if split is None:
        return None
    rows = data.chips[(data.chips["split"] == split) & data.chips["mask"].notna()]
    if rows.empty:
        return None
    picks = sorted({int(i) for i in np.linspace(0, len(rows) - 1, min(GRID_CHIPS, len(rows)))
                    .round()})
    return dataclasses.replace(data, chips=rows.iloc[picks])


def open_writer(run_dir: Path, spec: DatasetSpec, cfg: TrainConfig, data: Any = None,
                val_split: str | None = None, *, start_step: int = 0
                ) -> TensorBoardWriter | None:
    """A :class:`TensorBoardWriter` for ``RUN_DIR/tensorboard``, or None (said once) when the
    config turns TensorBoard off or the ``tensorboard`` package is missing."""
    if not getattr(cfg, "tensorboard", True):
        log.info("TensorBoard logs are off (tensorboard: false in the training config)")
        return None
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard needs the package)
    except ImportError:
        log.info("TensorBoard logs are off: the tensorboard package is not installed (pip "
                 "install 'ctfa[tensorboard]'); metrics.jsonl has every number")
        return None
    writer = TensorBoardWriter(Path(run_dir) / TENSORBOARD_DIR, spec, cfg, data, val_split,
                               start_step=start_step)
    log.info("TensorBoard logs in %s (tensorboard --logdir %s)", writer.folder, writer.folder)
    return writer

