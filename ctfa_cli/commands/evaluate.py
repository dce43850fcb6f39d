"""`ctfa evaluate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ctfa_cli.options import (
    AmpOpt,
    BatchSizeOpt,
    DataDirOpt,
    DeviceOpt,
    JsonOpt,
    ModelOpt,
    OverwriteOpt,
    SplitOpt,
    TtaOpt,
    chosen_data,
    chosen_model,
)

HELP = "Report mIoU, F1, OA and kappa on a split of DATA_DIR."


def evaluate(
    model: ModelOpt = None,
    data: DataDirOpt = None,
    split: SplitOpt = "test",
    target: Annotated[str, typer.Option(
        "--target", help="seg (segmentation branch), cam or aux_cam (CAMs of the final or "
        "auxiliary classifier, given the ground-truth image-level labels), or pseudo (refined "
        "pseudo labels, as in training). --tta applies to seg.")] = "seg",
    tta: TtaOpt = False,
    json_: JsonOpt = False,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Folder for metrics.json, confusion.png and overlays/ (default: "
        "RUN_DIR/eval_<split>_<target>[_tta] next to the checkpoint's checkpoints/ folder).")
    ] = None,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = "auto",
    batch_size: BatchSizeOpt = None,
    amp: AmpOpt = "none",
) -> None:
    """Score a checkpoint on a split of DATA_DIR: a metrics table (or JSON) on stdout, a
    confusion-matrix PNG and overlay PNGs in the output folder."""
    from rich.console import Console

    from ctfa_cli.evaluation.evaluate import evaluate_checkpoint
    from ctfa_cli.evaluation.report import metrics_table

    checkpoint, run = chosen_model(model)
    result = evaluate_checkpoint(checkpoint, chosen_data(data, run), split=split, target=target,
                                 tta=tta, out=out, overwrite=overwrite, device=device,
                                 batch_size=batch_size or 8, amp=amp)
    if json_:
        typer.echo(json.dumps(result.to_json(), indent=1))
        return
    title = (f"{result.target}{' (TTA)' if tta else ''}{' (bf16)' if amp == 'bf16' else ''} "
             f"on {result.split} · {result.data}")
    console = Console()
    console.print(metrics_table(result.metrics, result.spec.classes, title=title))
    console.print(f"PNGs and metrics.json in {result.out}", highlight=False)
