"""`ctfa pseudolabel`."""

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
    chosen_data,
    chosen_model,
)

HELP = "Write refined pseudo labels (GeoTIFF) for a split of DATA_DIR."


def pseudolabel(
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Output folder: a DATA_DIR whose masks are the pseudo labels "
        "(chips/<split>/masks/<chip_id>.tif, chips.gpkg, dataset.yaml, report.json).")],
    model: ModelOpt = None,
    data: DataDirOpt = None,
    split: SplitOpt = "train",
    json_: JsonOpt = False,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = "auto",
    batch_size: BatchSizeOpt = None,
    amp: AmpOpt = "none",
) -> None:
    """Write the refined pseudo label of every chip of a split, and report their quality."""
    from rich.console import Console

    from ctfa_cli.datasets.datadir import DataDir
    from ctfa_cli.evaluation.pseudolabel import write_pseudo_labels
    from ctfa_cli.evaluation.report import metrics_table, pseudo_label_table
    from ctfa_cli.inference.predict import resolve_device
    from ctfa_cli.model.bundle import load_bundle

    checkpoint, run = chosen_model(model)
    data_dir = DataDir.open(chosen_data(data, run))
    resolved = resolve_device(device)
    bundle = load_bundle(checkpoint, resolved)
    report = write_pseudo_labels(bundle.model, bundle.spec, bundle.cfg, data_dir, split, out,
                                 overwrite=overwrite, device=resolved,
                                 batch_size=batch_size or 8, model_path=checkpoint, amp=amp)
    summary = report.to_json()
    if json_:
        typer.echo(json.dumps(summary, indent=1))
        return
    console = Console()
    console.print(pseudo_label_table(summary, bundle.spec.classes,
                                     title=f"pseudo labels of {split} · {data_dir.root}"))
    if report.metrics is not None:
        console.print(metrics_table(report.metrics, bundle.spec.classes,
                                    title=f"pseudo labels against the masks of "
                                    f"{report.chips_with_masks} chips"))
