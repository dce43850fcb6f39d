"""`ctfa prepare <dataset>`: tile raw scenes into a DATA_DIR of chips with image-level labels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ctfa_cli.options import (
    BandsOpt,
    DataOutOpt,
    JsonOpt,
    OverwriteOpt,
    SeedOpt,
    StrideOpt,
    TileOpt,
    WorkersOpt,
)

app = typer.Typer(
    help="Tile a benchmark, your own scenes or synthetic scenes into a DATA_DIR of chips.",
    no_args_is_help=True,
)


def report(summary, as_json: bool) -> None:
    """Print a :class:`~ctfa_cli.datasets.tiling.PrepareSummary` on stdout: a table, or JSON."""
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=1))
    else:
        from rich.console import Console

        Console().print(summary.table())


def default_out(out: Path | None, name: str) -> Path:
    """``--out``, else ``<data folder>/<name>`` of the workspace."""
    from ctfa_cli.options import current_workspace

    return out if out is not None else current_workspace().data / name


@app.command("synthetic")
def synthetic(
    out: DataOutOpt = None,
    scenes: Annotated[int, typer.Option("--scenes", min=1, help="Number of scenes.")] = 8,
    size: Annotated[int, typer.Option("--size", min=32, help="Scene size in pixels.")] = 640,
    seed: SeedOpt = 0,
    tile: TileOpt = None,
    stride: StrideOpt = None,
    workers: WorkersOpt = 0,
    overwrite: OverwriteOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Generate synthetic georeferenced aerial scenes (the embedded default data set)."""
    from ctfa_cli.datasets.synthetic import prepare_synthetic

    summary = prepare_synthetic(default_out(out, "synthetic"), scenes=scenes, size=size,
                                seed=seed, tile=tile, stride=stride, workers=workers,
                                overwrite=overwrite)
    report(summary, json_output)


# --- benchmarks from their distributed layouts, and users' folders (docs/datasets.md) ----------

SourceArg = Annotated[
    Path | None, typer.Argument(
        help="The unpacked dataset, as distributed (see docs/datasets.md) [default: "
        "<raw folder>/<dataset> of the workspace, ~/ctfa/raw/<dataset> unless moved].",
        show_default=False)
]
FolderSourceArg = Annotated[
    Path, typer.Argument(help="Your scenes: images/, optional masks/, classes.yaml.",
                         show_default=False)
]
NoBoundaryOpt = Annotated[
    bool, typer.Option("--no-boundary", help="Use the eroded ISPRS labels; their black "
                       "boundary pixels are ignored.")
]
IgnoreUnknownOpt = Annotated[
    bool, typer.Option("--ignore-unknown-colours", help="Make mask colours outside the palette "
                       "ignore (255) even where they are more than 1 % of a scene's labels "
                       "(prepare stops there otherwise: a wrong palette looks like this).")
]
CarvedValOpt = Annotated[
    float | None, typer.Option("--val-fraction", min=0, max=1, help="Fraction of the training "
                               "scenes moved to a val split (seeded, by scene), so that best.pt "
                               "is not chosen on the test split [default: 0.1; 0 with "
                               "--paper-split, as the official scripts].", show_default=False)
]
ValFractionOpt = Annotated[
    float, typer.Option("--val-fraction", min=0, max=1, help="Fraction of scenes in val "
                        "(seeded split by scene).")
]
TestFractionOpt = Annotated[
    float, typer.Option("--test-fraction", min=0, max=1, help="Fraction of scenes in test "
                        "(seeded split by scene).")
]


def _benchmark(dataset: str, source: Path | None, out: Path | None, tile: int | None,
               stride: int | None, workers: int, overwrite: bool, ignore_unknown: bool,
               json_output: bool, **options) -> None:
    from ctfa_cli.datasets.readers import prepare_benchmark, release_missing
    from ctfa_cli.options import current_workspace

    if source is None:
        raw = current_workspace().roots["raw"]
        source = raw.path / dataset
        if not source.is_dir() or not any(source.iterdir()):
            raise release_missing(dataset, source, raw.origin)
    summary = prepare_benchmark(dataset, source, default_out(out, dataset), tile=tile,
                                stride=stride, workers=workers, overwrite=overwrite,
                                ignore_unknown=ignore_unknown, **options)
    report(summary, json_output)


def _val_fraction(given: float | None, *, official: bool = False) -> float:
    from ctfa_cli.datasets.readers import DEFAULT_VAL_FRACTION

    return given if given is not None else 0.0 if official else DEFAULT_VAL_FRACTION


@app.command("potsdam")
def potsdam(
    source: SourceArg = None,
    out: DataOutOpt = None,
    bands: Annotated[str, typer.Option("--bands", help="irrg (as the paper), rgb or rgbir.")
                     ] = "irrg",
    dsm: Annotated[bool, typer.Option("--dsm", help="Append the normalised DSM as a band.")
                   ] = False,
    no_boundary: NoBoundaryOpt = False,
    paper_split: Annotated[bool, typer.Option(
        "--paper-split", help="The CTFA paper's split: training tiles 4_12 and 7_10 left out "
        "(and no val split unless --val-fraction is given).")] = False,
    val_fraction: CarvedValOpt = None,
    seed: SeedOpt = 0,
    tile: TileOpt = None,
    stride: StrideOpt = None,
    workers: WorkersOpt = 0,
    overwrite: OverwriteOpt = False,
    ignore_unknown: IgnoreUnknownOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """ISPRS Potsdam from the ISPRS release folders (2_Ortho_RGB, 3_Ortho_IRRG, 5_Labels_all …)."""
    _benchmark("potsdam", source, out, tile, stride, workers, overwrite, ignore_unknown,
               json_output,
               bands=bands, dsm=dsm, no_boundary=no_boundary,
               split="paper" if paper_split else "standard",
               val_fraction=_val_fraction(val_fraction, official=paper_split), seed=seed)


@app.command("vaihingen")
def vaihingen(
    source: SourceArg = None,
    out: DataOutOpt = None,
    no_boundary: NoBoundaryOpt = False,
    val_fraction: CarvedValOpt = None,
    seed: SeedOpt = 0,
    tile: TileOpt = None,
    stride: StrideOpt = None,
    workers: WorkersOpt = 0,
    overwrite: OverwriteOpt = False,
    ignore_unknown: IgnoreUnknownOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """ISPRS Vaihingen from the release (top/ and the complete ground truth)."""
    _benchmark("vaihingen", source, out, tile, stride, workers, overwrite, ignore_unknown,
               json_output,
               no_boundary=no_boundary, val_fraction=_val_fraction(val_fraction), seed=seed)


@app.command("isaid")
def isaid(
    source: SourceArg = None,
    out: DataOutOpt = None,
    palette: Annotated[Path | None, typer.Option(
        "--palette", help="YAML with `palette: [[r, g, b], …]` replacing the devkit colours.")
    ] = None,
    val_fraction: CarvedValOpt = None,
    seed: SeedOpt = 0,
    tile: TileOpt = None,
    stride: StrideOpt = None,
    workers: WorkersOpt = 0,
    overwrite: OverwriteOpt = False,
    ignore_unknown: IgnoreUnknownOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """iSAID: DOTA images with iSAID semantic masks, train/ and val/ (val becomes test)."""
    _benchmark("isaid", source, out, tile, stride, workers, overwrite, ignore_unknown,
               json_output,
               palette=palette, val_fraction=_val_fraction(val_fraction), seed=seed)


@app.command("deepglobe")
def deepglobe(
    source: SourceArg = None,
    out: DataOutOpt = None,
    val_fraction: ValFractionOpt = 0.1,
    test_fraction: TestFractionOpt = 0.1,
    seed: SeedOpt = 0,
    tile: TileOpt = None,
    stride: StrideOpt = None,
    workers: WorkersOpt = 0,
    overwrite: OverwriteOpt = False,
    ignore_unknown: IgnoreUnknownOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """DeepGlobe Land Cover: the 803 labelled images of train/, split by image with a seed."""
    _benchmark("deepglobe", source, out, tile, stride, workers, overwrite, ignore_unknown,
               json_output,
               val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)


@app.command("folder")
def folder(
    source: FolderSourceArg,
    out: DataOutOpt = None,
    tags: Annotated[Path | None, typer.Option(
        "--tags", help="Vector features (with --class-column) or a table of scene_id/chip_id "
        "and labels giving image-level labels to scenes without masks.")] = None,
    class_column: Annotated[str | None, typer.Option(
        "--class-column", help="Column of the --tags features holding a class name or index.")
    ] = None,
    min_cover: Annotated[float | None, typer.Option(
        "--min-cover", min=0, max=1, help="Fraction of a chip a class's polygons must cover "
        "[default: 0.01].")] = None,
    min_area: Annotated[float | None, typer.Option(
        "--min-area", min=0, help="Or the area they must cover, in CRS units² (m²).")] = None,
    bands: BandsOpt = None,
    val_fraction: ValFractionOpt = 0.1,
    test_fraction: TestFractionOpt = 0.1,
    seed: SeedOpt = 0,
    tile: TileOpt = None,
    stride: StrideOpt = None,
    workers: WorkersOpt = 0,
    overwrite: OverwriteOpt = False,
    ignore_unknown: IgnoreUnknownOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Your own scenes: images/, optional masks/, classes.yaml, optional splits.csv."""
    from ctfa_cli.datasets.readers import prepare_folder

    summary = prepare_folder(source, default_out(out, source.absolute().name), tags=tags,
                             class_column=class_column,
                             min_cover=min_cover, min_area=min_area, tile=tile, stride=stride,
                             workers=workers, overwrite=overwrite, bands=bands,
                             ignore_unknown=ignore_unknown,
                             val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    report(summary, json_output)
