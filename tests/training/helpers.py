"""Shared pieces of the training tests: one tiny synthetic DATA_DIR and a tiny config."""

from __future__ import annotations

from pathlib import Path

from ctfa_cli.config import TrainConfig, resolve_train_config

# A configuration small enough for a few steps in seconds on 2 CPU cores: 64-px crops give a
# 4×4 token map, two 32-px local crops per image, a narrow projection head.
TINY = {
    "backbone": "vit_tiny_patch16_224",
    "pretrained": False,
    "crop_size": 64,
    "local_crop_size": 32,
    "num_local_crops": 2,
    "batch_size": 2,
    "num_workers": 0,
    "proj_hidden_dim": 128,
    "proj_bottleneck_dim": 32,
    "proj_out_dim": 64,
    "max_iters": 50,
    "warmup_iters": 2,
    "seg_gate_iters": 1,
    "eval_every": 1000,
    "log_every": 2,
}


def tiny_config(**overrides) -> TrainConfig:
    """The ``cpu`` preset made tiny with :data:`TINY` (and ``overrides``)."""
    return resolve_train_config("synthetic", "cpu", None, {**TINY, **overrides})


def tiny_set_options(**overrides) -> list[str]:
    """:data:`TINY` as ``--set key=value`` command-line options."""
    options = []
    for key, value in {**TINY, **overrides}.items():
        options += ["--set", f"{key}={str(value).lower() if isinstance(value, bool) else value}"]
    return options


def tiny_datadir(tmp_path_factory) -> Path:
    """A synthetic DATA_DIR (3 scenes of 256 px: 4 chips each in train, val and test), made
    once per test session and shared by every training test."""
    from ctfa_cli.datasets.synthetic import prepare_synthetic

    root = tmp_path_factory.getbasetemp() / "ctfa-training-data"
    if not (root / "dataset.yaml").is_file():
        prepare_synthetic(root, scenes=3, size=256, seed=0)
    return root
