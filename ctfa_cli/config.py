"""Pydantic models: the single source of truth for datasets, training and prediction settings.

* :class:`DatasetSpec` describes a dataset (classes, palette, background policy, bands,
  normalisation, tiling). It lives in ``DATA_DIR/dataset.yaml`` and inside every checkpoint.
* :class:`TrainConfig` holds every hyper-parameter of a CTFA run. Presets (``paper`` per dataset,
  ``cpu``) fill it; ``--config FILE.yaml`` and ``--set key=value`` override it; the resolved
  config is written to ``RUN_DIR/config.yaml``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ctfa_cli.errors import CtfaUsageError

RGB = tuple[int, int, int]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class StrictModel(BaseModel):
    """Base model: unknown keys are errors, so a typo in a config never passes silently."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatasetSpec(StrictModel):
    """What a dataset is: classes, colours, background policy, bands and normalisation.

    Attributes:
        name: registry name (``potsdam``, ``isaid`` …) or a user-chosen name for ``folder``.
        classes: class names in index order; index ``i`` is stored as value ``i`` in masks.
        palette: one RGB colour per class, used both to decode colour masks of the raw
            benchmark and as the colour table of every raster ``ctfa`` writes.
        ignore_index: label value that is never scored or trained on.
        has_background: class 0 is the CAM background (Potsdam, iSAID): classifiers give
            ``C-1`` logits and CAM channel ``k`` means class ``k+1``. False for DeepGlobe, where
            every class is a foreground class (``C`` logits, no shift).
        bands: band names in the order the model sees them (e.g. ``["ir", "r", "g"]``).
        mean: per-band mean of ``pixel/255`` used for normalisation; ``None`` for a band whose
            statistics are not known in advance (an IR or height band): ``prepare`` fills it
            with the mean measured on the training chips, so a DATA_DIR's spec is complete.
        std: per-band standard deviation of ``pixel/255``, likewise (``None``: measured).
        tile_size: chip size in pixels used by ``prepare``.
        stride: chip stride in pixels used by ``prepare``.
    """

    name: str
    classes: list[str] = Field(min_length=1)
    palette: list[RGB]
    ignore_index: int = 255
    has_background: bool = True
    bands: list[str] = Field(default_factory=lambda: ["r", "g", "b"])
    mean: list[float | None] = Field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float | None] = Field(default_factory=lambda: list(IMAGENET_STD))
    tile_size: int = Field(512, gt=0)
    stride: int = Field(512, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> DatasetSpec:
        if len(self.palette) != len(self.classes):
            raise ValueError(
                f"palette has {len(self.palette)} colours for {len(self.classes)} classes"
            )
        if not (len(self.bands) == len(self.mean) == len(self.std)):
            raise ValueError("bands, mean and std must have the same length")
        if any(s is not None and s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        if not 0 <= self.ignore_index <= 255 or self.ignore_index < len(self.classes):
            raise ValueError("ignore_index must be in [num_classes, 255]")
        return self

    @property
    def unmeasured_bands(self) -> list[str]:
        """Bands whose mean or std is still ``None`` (to be measured by ``prepare``)."""
        return [band for band, m, s in zip(self.bands, self.mean, self.std, strict=True)
                if m is None or s is None]

    def with_measured_statistics(self, mean: Sequence[float], std: Sequence[float]
                                 ) -> DatasetSpec:
        """This spec with every ``None`` mean or std replaced by the measured value.

        Args:
            mean: per-band mean of ``pixel/255`` measured on the training chips.
            std: per-band standard deviation of ``pixel/255``, likewise; one grey level
                (1/255) at least, so that a constant band normalises to 0 instead of dividing
                by zero.
        """
        floor = 1 / 255
        return self.model_copy(update={
            "mean": [float(m) if own is None else own
                     for own, m in zip(self.mean, mean, strict=True)],
            "std": [max(float(v), floor) if own is None else own
                    for own, v in zip(self.std, std, strict=True)],
        })

    @property
    def num_classes(self) -> int:
        """Number of segmentation classes ``C`` (background included when there is one)."""
        return len(self.classes)

    @property
    def num_cam_classes(self) -> int:
        """Number of classifier logits / CAM channels: ``C-1`` with a background, else ``C``."""
        return self.num_classes - 1 if self.has_background else self.num_classes

    @property
    def in_chans(self) -> int:
        """Number of input bands."""
        return len(self.bands)

    @property
    def foreground_classes(self) -> list[int]:
        """Class indices that appear as image-level labels (all but the background)."""
        start = 1 if self.has_background else 0
        return list(range(start, self.num_classes))


class TrainConfig(StrictModel):
    """Every hyper-parameter of one CTFA training run (defaults: the official Potsdam script).

    Units: iterations are optimiser steps; ``crop_size`` and ``local_crop_size`` are pixels of
    the rescaled training image; thresholds compare against CAMs normalised to [0, 1].
    """

    # --- network -------------------------------------------------------------------------
    backbone: str = "deit_base_patch16_224"
    pretrained: bool = True
    weights: Path | None = None
    aux_layer: int = -3
    freeze_pos_embed: bool = True
    proj_hidden_dim: int = 2048
    proj_bottleneck_dim: int = 256
    proj_out_dim: int = 1024
    ema_momentum: float = Field(0.9, ge=0, le=1)
    # --- data and augmentation -----------------------------------------------------------
    crop_size: int = Field(320, gt=0)
    rescale_range: tuple[float, float] = (0.5, 2.0)
    batch_size: int = Field(8, gt=0)
    num_workers: int = Field(4, ge=0)
    # --- optimiser and schedule ----------------------------------------------------------
    max_iters: int = Field(20000, gt=0)
    warmup_iters: int = Field(1500, ge=0)
    warmup_ratio: float = 1e-6
    lr: float = Field(4e-5, gt=0)
    head_lr_mult: float = Field(8.0, gt=0)
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    power: float = 0.9
    grad_clip: float = 1.0
    # --- CAMs, ROI and pseudo labels -----------------------------------------------------
    cam_scales: list[float] = Field(default_factory=lambda: [1.0, 0.5, 1.5])
    bkg_thre: float = 0.6
    high_thre: float = 0.7
    low_thre: float = 0.25
    par_dilations: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 12, 24])
    par_iters: int = 10
    # --- local crops and contrastive token learning --------------------------------------
    num_local_crops: int = Field(8, ge=0)
    local_crop_size: int = Field(96, gt=0)
    local_neg_ratio: float = 0.2
    ctc_temp: float = Field(0.5, gt=0)
    # --- loss weights and the warm-up gate -----------------------------------------------
    w_ptc: float = 0.3
    w_ctc: float = 0.5
    w_seg: float = 0.1
    w_reg: float = 0.05
    w_joint: float = 0.3
    seg_gate_iters: int = Field(2000, ge=0)
    # --- dense-CRF energy regulariser -----------------------------------------------------
    energy_filter: Literal["lattice", "exact"] = "lattice"
    crf_weight: float = 1e-7
    crf_sigma_rgb: float = 15.0
    crf_sigma_xy: float = 100.0
    crf_scale: float = 0.5
    # --- bookkeeping ----------------------------------------------------------------------
    eval_every: int = Field(2000, gt=0)
    log_every: int = Field(20, gt=0)
    seed: int = 0
    device: str = "auto"
    # bf16: the step's forward under bfloat16 autocast, on CUDA and on CPU alike (faster on
    # CPUs with native bfloat16, slower on others; see ctfa_cli.precision).
    amp: Literal["none", "bf16"] = "none"
    # tf32: on CUDA, float32 matrix products and convolutions may use TF32 (Ampere and later),
    # as they did in the official runs (PyTorch 1.8 allowed TF32 by default); false: strict
    # float32. No effect on CPU (see ctfa_cli.precision.tf32_flags).
    tf32: bool = True
    # tensorboard: rank 0 also writes RUN_DIR/tensorboard/ (every metrics.jsonl number and a
    # grid of validation chips per evaluation) when the tensorboard package is installed.
    tensorboard: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if not 0 <= self.low_thre <= self.high_thre <= 1:
            raise ValueError("thresholds must satisfy 0 <= low_thre <= high_thre <= 1")
        if self.rescale_range[0] > self.rescale_range[1]:
            raise ValueError("rescale_range must be (min, max)")
        return self


# Official per-dataset hyper-parameters (CTFA training scripts). Keys are TrainConfig fields.
PAPER_OVERRIDES: dict[str, dict[str, Any]] = {
    "isaid": {"lr": 6e-5, "bkg_thre": 0.5, "w_seg": 0.1, "w_joint": 0.3, "seg_gate_iters": 4000},
    "potsdam": {"lr": 4e-5, "bkg_thre": 0.6, "w_seg": 0.1, "w_joint": 0.3, "seg_gate_iters": 2000},
    # Vaihingen has no official script; it follows Potsdam (same sensor family and classes).
    "vaihingen": {"lr": 4e-5, "bkg_thre": 0.6, "w_seg": 0.1, "w_joint": 0.3,
                  "seg_gate_iters": 2000},
    "deepglobe": {"lr": 2e-5, "bkg_thre": 0.5, "w_seg": 0.2, "w_joint": 0.2,
                  "seg_gate_iters": 4000, "head_lr_mult": 10.0},
}

# A small configuration that learns something real on 2 CPU cores in minutes. A ViT trained
# from scratch needs a larger step than a pretrained one; on the default synthetic data (300
# steps, docs/performance.md; single runs) lr 5e-4 learned more than 2e-4, and 1e-3 skipped 7
# non-finite steps while its foreground branch diverged (joint loss ~9).
CPU_PRESET: dict[str, Any] = {
    "backbone": "vit_tiny_patch16_224",
    "pretrained": False,
    "crop_size": 160,
    "batch_size": 4,
    "num_workers": 2,
    "max_iters": 300,
    "warmup_iters": 50,
    "lr": 5e-4,
    "seg_gate_iters": 100,
    "local_crop_size": 48,
    "eval_every": 100,
    "log_every": 10,
}

PRESETS = ("paper", "cpu")

# Format tag of RUN_DIR/config.yaml (written by the training loop, readable with --config).
RUN_CONFIG_FORMAT = "ctfa-run/1"


def preset_config(preset: str, dataset: str) -> dict[str, Any]:
    """Return the field overrides of ``preset`` for ``dataset`` (before user overrides).

    Raises:
        CtfaUsageError: unknown preset.
    """
    if preset == "paper":
        return dict(PAPER_OVERRIDES.get(dataset, PAPER_OVERRIDES["potsdam"]))
    if preset == "cpu":
        return dict(CPU_PRESET)
    raise CtfaUsageError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")


def parse_set_options(items: list[str]) -> dict[str, Any]:
    """Parse ``--set key=value`` items; values are read as YAML (``0.5``, ``[1, 2]``, ``true``).

    Raises:
        CtfaUsageError: an item without ``=``.
    """
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CtfaUsageError(f"--set {item!r}: expected key=value, e.g. --set lr=1e-4")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping.

    Raises:
        CtfaUsageError: the file is missing, not YAML, or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise CtfaUsageError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise CtfaUsageError(f"{path}: not valid YAML ({exc.__class__.__name__})") from exc
    if not isinstance(data, dict):
        raise CtfaUsageError(f"{path}: expected a mapping of config fields")
    return data


def validation_message(exc: ValidationError) -> str:
    """Condense a pydantic error into one line: ``field: message; field: message``."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "config"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def resolve_train_config(
    dataset: str,
    preset: str = "paper",
    config_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """Build the training config: preset, then the YAML file, then ``--set`` overrides.

    Raises:
        CtfaUsageError: unknown preset, unreadable file, unknown field or invalid value.
    """
    fields = preset_config(preset, dataset)
    if config_file is not None:
        loaded = load_yaml(config_file)
        # A RUN_DIR/config.yaml written by `ctfa train` keeps the fields under ``train``.
        fields.update(loaded["train"] if loaded.get("format") == RUN_CONFIG_FORMAT else loaded)
    fields.update(overrides or {})
    try:
        return TrainConfig(**fields)
    except ValidationError as exc:
        raise CtfaUsageError(f"invalid training config: {validation_message(exc)}") from exc


def dump_yaml(model: BaseModel) -> str:
    """Serialise a model to YAML (paths as strings, tuples as lists)."""
    return yaml.safe_dump(model.model_dump(mode="json"), sort_keys=False)
