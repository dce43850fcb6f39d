"""`ctfa train`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ctfa_cli.options import DataDirOpt, OverwriteOpt

HELP = "Train the CTFA model from image-level labels (single stage)."


def train(
    data: DataDirOpt = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="RUN_DIR: config, logs, metrics and checkpoints of the run "
        "[default: a new <runs folder>/<dataset>/train, train2 …].", show_default=False)
    ] = None,
    name: Annotated[str | None, typer.Option(
        "--name", help="Name of the run folder under <runs folder>/<dataset>/ instead of the "
        "next train<N>.", show_default=False)] = None,
    dataset: Annotated[str | None, typer.Option(
        "--dataset", help="The dataset: its DATA_DIR is <data folder>/NAME unless --data is "
        "given, and the paper preset uses its official hyper-parameters (default: the "
        "DATA_DIR's).", show_default=False)] = None,
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
        "--resume", help="Continue the run in RUN_DIR from checkpoints/last.pt (without "
        "--out: the newest run of the dataset).")] = False,
    overwrite: OverwriteOpt = False,
    device: Annotated[str | None, typer.Option(
        "--device", help="auto, cpu, cuda or cuda:N (default: the config's device).")] = None,
) -> None:
    """Train CTFA on DATA_DIR's train split; prints the run's summary as JSON on stdout, the
    run folder first (`ctfa train --dataset potsdam | jq -r .run_dir`).

    Works under ``torchrun --nproc-per-node K -m ctfa_cli train …`` (DDP).
    """
    from ctfa_cli.config import parse_set_options
    from ctfa_cli.errors import CtfaError
    from ctfa_cli.options import current_workspace
    from ctfa_cli.training.loop import run_config
    from ctfa_cli.training.loop import train as run_training
    from ctfa_cli.workspace import plan_run

    overrides = parse_set_options(set_ or [])
    data, out = plan_run(current_workspace, dataset=dataset, data=data, out=out, name=name,
                         resume=resume)
    # On --resume without config options the run's own config is used as it is (--dataset
    # alone only says which run).
    given = preset is not None or config is not None or overrides
    cfg = (run_config(data, dataset=dataset, preset=preset or "paper", config_file=config,
                      overrides=overrides)
           if given or not resume else None)
    result = run_training(data, out, cfg, resume=resume, overwrite=overwrite,
                          max_iters=max_iters, device=device)
    if result.rank != 0:
        return  # under torchrun, one summary (rank 0's)
    typer.echo(json.dumps(result.to_json(), indent=1))
    if result.step and not result.applied:
        raise CtfaError(f"{result.run_dir}: all {result.step} steps were skipped as non-finite "
                        f"(NaN/inf loss or gradient), so {result.last_checkpoint} holds the "
                        "initial weights; lower the lr or use --set amp=none, then train again "
                        "with --overwrite")
