"""`ctfa export`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ctfa_cli.options import JsonOpt, ModelOpt, OverwriteOpt, chosen_model

HELP = "Export a model bundle as ONNX with metadata (QGIS Deepness plugin, ctfa predict)."


def export(
    model: ModelOpt = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="The ONNX file [default: the checkpoint with .onnx, e.g. "
        "RUN_DIR/checkpoints/best.onnx].", show_default=False)] = None,
    cams: Annotated[bool, typer.Option(
        "--cams", help="Also export the raw CAMs of both classifiers (outputs cam and "
        "aux_cam, at token resolution).")] = False,
    resolution: Annotated[float | None, typer.Option(
        "--resolution", min=0, help="Centimetres per pixel of the training imagery, stated "
        "for QGIS [default: measured on the run's DATA_DIR when its CRS is in metres].",
        show_default=False)] = None,
    overwrite: OverwriteOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Export the segmentation branch of a model bundle to ONNX (dynamic batch and tile size,
    softmax probabilities) with the Deepness plugin's metadata and ctfa's own, checked against
    PyTorch on a random tile with onnxruntime. On stdout: the ONNX path, or JSON with --json."""
    from ctfa_cli.inference.onnx_export import export_onnx

    checkpoint, run = chosen_model(model)
    data_dir = run.summary.get("data_dir") if run is not None else None
    result = export_onnx(checkpoint, out or Path(checkpoint).with_suffix(".onnx"), cams=cams,
                         resolution_cm=resolution, data_dir=data_dir, overwrite=overwrite)
    typer.echo(json.dumps(result.to_json()) if json_output else str(result.onnx))
