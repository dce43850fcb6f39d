"""`ctfa predict`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ctfa_cli.options import (
    AmpOpt,
    BandsOpt,
    BatchSizeOpt,
    CrfOpt,
    CrfSetOpt,
    DeviceOpt,
    JsonOpt,
    ModelOpt,
    OverwriteOpt,
    TileOpt,
    TtaOpt,
    chosen_model,
    crf_params,
    current_workspace,
)

HELP = "Map whole scenes into a georeferenced class COG (and polygons)."

ScenesArg = Annotated[
    list[str],
    typer.Argument(help="Scene rasters, folders of rasters, quoted globs, or - to read paths "
                        "from stdin (one per line).", show_default=False),
]
OutOpt = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Class COG file (one scene, .tif) or output folder "
                 "(<scene stem>.tif per scene) [default: <predictions folder>/<run>/, the "
                 "run of the model].", show_default=False),
]
VectorOpt = Annotated[
    str | None,
    typer.Option("--vector", help="Also write polygons per class: a .gpkg/.geojson/.fgb file "
                                  "(one scene) or a format (gpkg, geojson, fgb) for "
                                  "<stem>.<format> beside each class COG."),
]
ProbsOpt = Annotated[
    bool, typer.Option("--probs", help="Also write <stem>_probs.tif: per-class probabilities "
                                       "as uint8 0-255, one band per class.")
]
OverlapOpt = Annotated[
    int | None,
    typer.Option("--overlap", min=0, help="Overlap of neighbouring windows in pixels "
                                          "(default: a quarter of the tile)."),
]
SimplifyOpt = Annotated[
    float, typer.Option("--simplify", min=0, help="Polygon simplification tolerance in CRS "
                                                  "units (0: none); neighbouring polygons "
                                                  "keep their shared edges.")
]
MinAreaOpt = Annotated[
    float, typer.Option("--min-area", min=0, help="Drop polygons smaller than this, in CRS "
                                                  "units squared.")
]
StacOpt = Annotated[
    bool, typer.Option("--stac/--no-stac", help="Write <stem>.stac.json beside each class "
                                                "COG: a STAC Item (WGS84 footprint, native "
                                                "grid, assets, classes, model provenance).")
]


def predict(
    scenes: ScenesArg,
    model: ModelOpt = None,
    out: OutOpt = None,
    vector: VectorOpt = None,
    probs: ProbsOpt = False,
    tile: TileOpt = None,
    overlap: OverlapOpt = None,
    tta: TtaOpt = False,
    batch_size: BatchSizeOpt = None,
    device: DeviceOpt = "auto",
    amp: AmpOpt = "none",
    bands: BandsOpt = None,
    simplify: SimplifyOpt = 0.0,
    min_area: MinAreaOpt = 0.0,
    crf: CrfOpt = False,
    crf_set: CrfSetOpt = None,
    overwrite: OverwriteOpt = False,
    json_output: JsonOpt = False,
    stac: StacOpt = True,
) -> None:
    """Predict scenes of any size with a model bundle (or its ONNX export), streaming, into COGs
    and polygons.

    Under torchrun each rank predicts its share of the scenes. On stdout: one JSON line per
    finished scene with --json; else the path of each class COG, one per line, when stdout is
    a pipe or a file (`ctfa predict *.tif | xargs -n1 gdalinfo`); else a table at the end.
    """
    from ctfa_cli.inference.onnx_predict import model_predictor
    from ctfa_cli.inference.predict import (
        PredictOptions,
        collect_scenes,
        predict_scenes,
        resolve_device,
    )
    from ctfa_cli.inference.reader import parse_band_indices
    from ctfa_cli.workspace import prediction_folder

    options = PredictOptions(
        tile=tile, overlap=overlap, batch_size=batch_size or 8, bands=parse_band_indices(bands),
        probs=probs, vector=vector, simplify=simplify, min_area=min_area, overwrite=overwrite,
        stac=stac, crf=crf_params(crf, crf_set))
    scene_paths = collect_scenes(scenes, sys.stdin)
    checkpoint, run = chosen_model(model)
    if out is None:
        out = prediction_folder(current_workspace(), checkpoint, run)
    # A .onnx file (from `ctfa export`) runs with onnxruntime, anything else as a bundle.
    predictor = model_predictor(checkpoint, resolve_device(device), tta=tta, amp=amp)
    paths_only = not json_output and not sys.stdout.isatty()
    results = []
    for result in predict_scenes(scene_paths, predictor, out, options=options):
        if json_output:
            typer.echo(json.dumps(result.to_json()))
        elif paths_only:
            typer.echo(str(result.classes))
        results.append(result)
    if not json_output and not paths_only:
        _print_table(results)


def _print_table(results) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("scene", "classes", "size", "seconds", "Mpx/s", "polygons")
    for r in results:
        table.add_row(r.scene.name, str(r.classes), f"{r.width}×{r.height}", f"{r.seconds:.1f}",
                      f"{r.pixels_per_second / 1e6:.3f}",
                      "" if r.polygons is None else str(r.polygons))
    Console().print(table)
