"""Tiny inputs of the evaluation and pseudo-label tests: a synthetic DATA_DIR and a bundle.

Both are made once per test session under pytest's base temporary folder and shared by
``tests/evaluation`` and ``tests/cli`` (evaluate, pseudolabel). Nothing is trained: the bundle
holds a randomly initialised ``vit_tiny_patch16_224`` network, which is enough to exercise every
code path; the metric values themselves are checked against a hand-computed confusion matrix.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ctfa_cli.config import TrainConfig, resolve_train_config

# The cpu preset with a narrow projection head (the evaluation never uses it).
TINY = {
    "backbone": "vit_tiny_patch16_224",
    "pretrained": False,
    "proj_hidden_dim": 64,
    "proj_bottleneck_dim": 16,
    "proj_out_dim": 32,
    "par_iters": 3,
}


def tiny_config() -> TrainConfig:
    """The ``cpu`` preset made tiny with :data:`TINY`."""
    return resolve_train_config("synthetic", "cpu", None, dict(TINY))


def tiny_datadir(tmp_path_factory) -> Path:
    """3 synthetic scenes of 128 px tiled by 64 px: 4 chips of 64 × 64 px per split."""
    from ctfa_cli.datasets.synthetic import prepare_synthetic

    root = tmp_path_factory.getbasetemp() / "ctfa-evaluation-data"
    if not (root / "dataset.yaml").is_file():
        prepare_synthetic(root, scenes=3, size=128, tile=64, stride=64, seed=0)
    return root


def tiny_bundle(tmp_path_factory, datadir: Path, name: str = "synthetic") -> Path:
    """A model bundle for ``datadir``'s spec (renamed ``name`` and, for another name than
    ``synthetic``, with 4 classes so that it does not fit), in ``RUN/checkpoints/last.pt``."""
    from ctfa_cli.datasets.datadir import DataDir
    from ctfa_cli.model.bundle import save_bundle
    from ctfa_cli.model.network import CTFANetwork

    run_dir = tmp_path_factory.getbasetemp() / f"ctfa-evaluation-run-{name}"
    path = run_dir / "checkpoints" / "last.pt"
    if not path.is_file():
        spec = DataDir.open(datadir).spec
        if name != "synthetic":
            spec = spec.model_copy(update={"name": name, "classes": spec.classes[:4],
                                           "palette": spec.palette[:4]})
        cfg = tiny_config()
        torch.manual_seed(0)
        model = CTFANetwork.from_config(spec, cfg, pretrained=False)
        save_bundle(path, model, spec, cfg)
    return path
