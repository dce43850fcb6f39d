"""`ctfa train`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ctfa_cli.options import DataDirOpt, OverwriteOpt

HELP = "Train the CTFA model from image-level labels (single stage)."


def train(
    data: DataDirOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="RUN_DIR: config, logs, metrics "
                                      "and checkpoints of the run.")],
    dataset: Annotated[str | None, typer.Option(
        "--dataset", help="Dataset whose official hyper-parameters the paper preset uses "
        "(default: the DATA_DIR's).")] = None,
    preset: Annotated[str | None, typer.Option(
        "--preset", help="paper (the official scripts) or cpu (small, minutes on a CPU); "
        "default paper.")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="YAML file of config fields (a RUN_DIR's config.yaml works too).")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override one config field: key=value (repeatable).")] = None,
    max_iters: Annotated[int | None, typer.Option(
        "--max-iters", min=1, help="Stop after N steps in total; the schedule keeps the "
        "config's max_iters, so a stopped run can be resumed.")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the run in RUN_DIR from checkpoints/last.pt.")] = False,
    overwrite: OverwriteOpt = False,
    device: Annotated[str | None, typer.Option(
        "--device", help="auto, cpu, cuda or cuda:N (default: the config's device).")] = None,
) -> None:
    """Train CTFA on DATA_DIR's train split; prints the run's summary as JSON on stdout.

    Works under ``torchrun --nproc-per-node K -m ctfa_cli train …`` (DDP).
    """
    from ctfa_cli.config import parse_set_options
    from ctfa_cli.training.loop import run_config
    from ctfa_cli.training.loop import train as run_training

    overrides = parse_set_options(set_ or [])
    # On --resume without config options the run's own config is used as it is.
    given = preset is not None or config is not None or overrides or dataset is not None
    cfg = (run_config(data, dataset=dataset, preset=preset or "paper", config_file=config,
                      overrides=overrides)
           if given or not resume else None)
    result = run_training(data, out, cfg, resume=resume, overwrite=overwrite,
                          max_iters=max_iters, device=device)
    if result.rank != 0:
        return  # under torchrun, one summary (rank 0's)
    typer.echo(json.dumps({
        "run_dir": str(result.run_dir),
        "step": result.step,
        "skipped": result.skipped,
        "best_seg_miou": result.best_miou,
        "last_checkpoint": str(result.last_checkpoint),
        "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
    }, indent=1))
