"""`ctfa evaluate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ctfa_cli.options import (
    AmpOpt,
    BatchSizeOpt,
    CrfOpt,
    CrfSetOpt,
    DataDirOpt,
    DeviceOpt,
    JsonOpt,
    ModelOpt,
    OverwriteOpt,
    SplitOpt,
    TtaOpt,
    chosen_data,
    chosen_model,
    crf_params,
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
    crf: CrfOpt = False,
    crf_set: CrfSetOpt = None,
    protocol: Annotated[str, typer.Option(
        "--protocol", help="ctfa (one pass, or --tta) or official: the official scripts' "
        "scales 1, 1.5, 1.25 with flips, logits maxed over scales (seg only; put the figures "
        "beside the paper's with --crf and the mF1 as the official code computes it).")
    ] = "ctfa",
) -> None:
    """Score a checkpoint on a split of DATA_DIR: a metrics table (or JSON) on stdout, a
    confusion-matrix PNG and overlay PNGs in the output folder; with --crf the CRF-processed
    segmentation beside the plain one."""
    from rich.console import Console

    from ctfa_cli.evaluation.evaluate import evaluate_checkpoint
    from ctfa_cli.evaluation.report import metrics_table

    checkpoint, run = chosen_model(model)
    result = evaluate_checkpoint(checkpoint, chosen_data(data, run), split=split, target=target,
                                 tta=tta, out=out, overwrite=overwrite, device=device,
                                 batch_size=batch_size or 8, amp=amp,
                                 crf=crf_params(crf, crf_set), protocol=protocol)
    if json_:
        typer.echo(json.dumps(result.to_json(), indent=1))
        return
    how = (f"{' (TTA)' if tta else ''}{' (official protocol)' if protocol == 'official' else ''}"
           f"{' (bf16)' if amp == 'bf16' else ''} on {result.split} · {result.data}")
    console = Console()
    console.print(metrics_table(result.metrics, result.spec.classes,
                                title=f"{result.target}{how}"))
    if result.crf_metrics is not None:
        console.print(metrics_table(result.crf_metrics, result.spec.classes,
                                    title=f"seg_crf{how}"))
    console.print(f"PNGs and metrics.json in {result.out}", highlight=False)
