"""Options shared by several verbs, defined once so that a flag means the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ModelOpt = Annotated[
    str | None, typer.Option(
        "--model", "-m", help="A checkpoint written by `ctfa train`, a run folder, a run name "
        "(potsdam/train2) or a dataset name (its newest run) [default: the newest finished run "
        "of the workspace].", show_default=False)
]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data", "-d", help="DATA_DIR written by `ctfa prepare` "
                              "[default: <data folder>/NAME with --dataset NAME (train); the "
                              "model's training DATA_DIR (evaluate, pseudolabel)].",
                              show_default=False)
]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace existing outputs instead of refusing.")
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print machine-readable JSON on stdout instead of a table.")
]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")
]
WorkersOpt = Annotated[
    int, typer.Option("--workers", min=0, help="Parallel worker processes (0: in-process).")
]
TileOpt = Annotated[
    int | None, typer.Option("--tile", min=16, help="Tile (window) size in pixels.")
]
StrideOpt = Annotated[
    int | None, typer.Option("--stride", min=1, help="Step between chips in pixels.")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]
SplitOpt = Annotated[str, typer.Option("--split", help="Split of DATA_DIR to use.")]
BatchSizeOpt = Annotated[
    int | None, typer.Option("--batch-size", min=1, help="Images per forward pass.")
]
AmpOpt = Annotated[
    str, typer.Option("--amp", help="none (float32) or bf16 (bfloat16 autocast: faster on GPUs "
                                    "and on CPUs with native bfloat16, e.g. AVX512-BF16; "
                                    "results differ slightly from float32).")
]
TtaOpt = Annotated[
    bool, typer.Option("--tta", help="Test-time augmentation: multi-scale and flip.")
]
DataOutOpt = Annotated[
    Path | None, typer.Option("--out", "-o", help="DATA_DIR to write (created; a finished one "
                              "is reused, anything else is refused unless --overwrite) "
                              "[default: <data folder>/<dataset>].", show_default=False)
]
CrfOpt = Annotated[
    bool, typer.Option("--crf", help="Post-process the segmentation with the fully connected "
                       "CRF of the official evaluation (10 mean-field iterations, Gaussian "
                       "weight 1 and σ 1 px, bilateral weight 4, σ 121 px and 5 grey levels).")
]
CrfSetOpt = Annotated[
    list[str] | None, typer.Option(
        "--crf-set", help="Override one CRF parameter: iterations, pos_w, pos_xy_std, bi_w, "
        "bi_xy_std or bi_rgb_std=value (repeatable; implies --crf).", show_default=False)
]
BandsOpt = Annotated[
    str | None,
    typer.Option("--bands", help="Bands: a preset name or 1-based indices such as 4,1,2."),
]


# The root ``--home`` flag of this invocation (set by the root callback before any verb runs).
_home_flag: Path | None = None


def set_home_flag(home: Path | None) -> None:
    """Record the root ``--home`` flag for :func:`current_workspace`."""
    global _home_flag
    _home_flag = home


def current_workspace():
    """The workspace of this invocation (:func:`ctfa_cli.workspace.resolve_workspace` with the
    root ``--home`` flag), resolved when a verb needs a default place, not before: a broken
    settings file never breaks ``--help`` or a verb given every path."""
    from ctfa_cli.workspace import resolve_workspace

    return resolve_workspace(_home_flag)


def chosen_model(model: str | None):
    """The checkpoint a ``--model`` value names, and its run (see
    :func:`ctfa_cli.workspace.resolve_model`); a model the user did not name exactly is
    announced on stderr, so that nobody maps a scene with a model they did not mean."""
    import logging

    from ctfa_cli.workspace import resolve_model

    given = model is not None and Path(model).expanduser().is_file()
    workspace = None if given else current_workspace()
    checkpoint, record = resolve_model(workspace, model)
    if record is not None and not given:
        logging.getLogger("ctfa").info("model: %s", record.describe())
    return checkpoint, record


def chosen_data(data: Path | None, record) -> Path:
    """``--data``, else the DATA_DIR the model's run was trained on."""
    from ctfa_cli.errors import CtfaUsageError

    if data is not None:
        return data
    if record is None or not record.summary.get("data_dir"):
        raise CtfaUsageError("pass --data DATA_DIR (the model is not from a run of the "
                             "workspace, so its DATA_DIR is not known)")
    return Path(record.summary["data_dir"])


def crf_params(crf: bool, items: list[str] | None):
    """The CRF that ``--crf``/``--crf-set`` ask for (:class:`kernels.dense_crf.CRFParams`),
    or None for no CRF.

    Raises:
        CtfaUsageError: an item that is not ``key=number`` of a CRF parameter.
    """
    import dataclasses

    from ctfa_cli.config import parse_set_options
    from ctfa_cli.errors import CtfaUsageError
    from kernels.dense_crf import OFFICIAL_CRF

    if not crf and not items:
        return None
    names = [f.name for f in dataclasses.fields(OFFICIAL_CRF)]
    changes = parse_set_options(items or [])
    for key, value in changes.items():
        if key not in names:
            raise CtfaUsageError(f"--crf-set {key}: not a CRF parameter; choose one of "
                                 f"{', '.join(names)}")
        wanted = int if key == "iterations" else float
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or (
                wanted is int and not isinstance(value, int)):
            raise CtfaUsageError(f"--crf-set {key}={value}: expected a non-negative "
                                 f"{'integer' if wanted is int else 'number'}")
        changes[key] = wanted(value)
    return dataclasses.replace(OFFICIAL_CRF, **changes)
