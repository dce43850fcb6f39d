"""Raw-layout readers: one function per dataset turns its distributed layout into scene records.

Each reader is ``read_<name>(source, **options) -> (DatasetSpec, list[SceneRecord])``; the
shared tiler (:func:`ctfa_cli.datasets.tiling.build_datadir`) does the rest. The
``prepare_*`` functions below are the library behind ``ctfa prepare <dataset>``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctfa_cli.config import DatasetSpec
from ctfa_cli.datasets.readers.deepglobe import read_deepglobe
from ctfa_cli.datasets.readers.folder import read_folder
from ctfa_cli.datasets.readers.isaid import read_isaid
from ctfa_cli.datasets.readers.layout import carve_validation
from ctfa_cli.datasets.readers.potsdam import read_potsdam
from ctfa_cli.datasets.readers.vaihingen import read_vaihingen
from ctfa_cli.datasets.scenes import SceneRecord
from ctfa_cli.errors import CtfaError, CtfaUsageError

if TYPE_CHECKING:
    from ctfa_cli.datasets.tiling import PrepareSummary

Reader = Callable[..., tuple[DatasetSpec, list[SceneRecord]]]

READERS: dict[str, Reader] = {
    "potsdam": read_potsdam,
    "vaihingen": read_vaihingen,
    "isaid": read_isaid,
    "deepglobe": read_deepglobe,
    "folder": read_folder,
}


#: Benchmarks released with train and test splits only: ``prepare`` carves their val split from
#: the training scenes (DeepGlobe's reader splits its one labelled folder itself).
CARVED_VAL = ("potsdam", "vaihingen", "isaid")
#: The share of training scenes carved into val by default (ISPRS: 2 of 24 / 16 tiles).
DEFAULT_VAL_FRACTION = 0.1


@dataclass(frozen=True)
class Release:
    """Where a benchmark is downloaded and what of it goes into its raw folder.

    Attributes:
        contents: the archives or folders to unpack into the folder (one phrase).
        url: the page to download them from (docs/datasets.md gives the layouts).
    """

    contents: str
    url: str


RELEASES: dict[str, Release] = {
    "potsdam": Release(
        "unzip Potsdam.zip and the archives inside it (3_Ortho_IRRG.zip or 4_Ortho_RGBIR.zip, "
        "5_Labels_all.zip) into it",
        "https://www.isprs.org/education/benchmarks/UrbanSemLab/2d-sem-label-potsdam.aspx"),
    "vaihingen": Release(
        "unzip ISPRS_semantic_labeling_Vaihingen.zip (top/) and "
        "ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE.zip into it",
        "https://www.isprs.org/education/benchmarks/UrbanSemLab/2d-sem-label-vaihingen.aspx"),
    "isaid": Release(
        "put the DOTA-v1.0 train and val images (part1-3.zip) in train/images/ and "
        "val/images/, and iSAID's Semantic_masks/images.zip of each in "
        "train/Semantic_masks/ and val/Semantic_masks/ (images from "
        "https://captain-whu.github.io/DOTA/dataset.html)",
        "https://captain-whu.github.io/iSAID/dataset.html"),
    "deepglobe": Release(
        "unzip the Land Cover challenge archive so that train/ (the 803 *_sat.jpg with their "
        "*_mask.png) is in it (e.g. the Kaggle copy balraj98/"
        "deepglobe-land-cover-classification-dataset)",
        "http://deepglobe.org/challenge.html"),
}


def release_missing(dataset: str, folder: Path, origin: str = "") -> CtfaError:
    """The error for a benchmark whose raw release is not at its default ``folder``.

    Args:
        dataset: a key of :data:`RELEASES`.
        folder: ``<raw folder>/<dataset>``.
        origin: what set the raw folder (`` (raw folder set by …)``), or empty for the default.
    """
    release = RELEASES[dataset]
    state = "is empty" if folder.is_dir() else "does not exist"
    return CtfaError(f"no {dataset} release: {folder} {state}{origin}; {release.contents}, "
                     f"from {release.url}; or pass the unpacked release as SOURCE")


__all__ = ["CARVED_VAL", "DEFAULT_VAL_FRACTION", "READERS", "RELEASES", "Release",
           "prepare_benchmark", "prepare_folder", "read_deepglobe", "read_folder", "read_isaid",
           "read_potsdam", "read_vaihingen", "release_missing"]


def prepare_benchmark(
    dataset: str,
    source: Path,
    out: Path,
    *,
    tile: int | None = None,
    stride: int | None = None,
    workers: int = 0,
    overwrite: bool = False,
    ignore_unknown: bool = False,
    **options: Any,
) -> PrepareSummary:
    """Read a benchmark from its distributed layout and tile it into the DATA_DIR ``out``.

    Args:
        dataset: ``potsdam``, ``vaihingen``, ``isaid`` or ``deepglobe``.
        source: the unpacked dataset.
        out: the DATA_DIR to write.
        tile: chip size in pixels; None: the dataset's (``tile_size`` of its spec).
        stride: step between chips in pixels; None: the dataset's.
        workers: tiling worker processes (0: in-process).
        overwrite: replace an existing DATA_DIR.
        ignore_unknown: map mask colours outside the palette to ignore even where they are
            more than a few percent of a scene (see ``build_datadir``).
        **options: the reader's options (see ``read_<dataset>``); for the datasets of
            :data:`CARVED_VAL` also ``val_fraction`` and ``seed`` (see
            :func:`~ctfa_cli.datasets.readers.layout.carve_validation`; default 0: no val).

    Raises:
        CtfaUsageError: unknown dataset or invalid option value.
        CtfaError: the layout does not match, or tiling fails (see ``build_datadir``).
    """
    from ctfa_cli.datasets.tiling import build_datadir

    if dataset not in READERS or dataset == "folder":
        raise CtfaUsageError(f"unknown benchmark {dataset!r}; choose one of "
                             f"{', '.join(name for name in READERS if name != 'folder')}")
    if dataset in CARVED_VAL:
        val_fraction, seed = options.pop("val_fraction", 0.0), options.pop("seed", 0)
    spec, scenes = READERS[dataset](source, **options)
    if dataset in CARVED_VAL:
        scenes = carve_validation(scenes, val_fraction, seed)
    return build_datadir(scenes, spec, out, tile=tile, stride=stride, workers=workers,
                         overwrite=overwrite, source=str(source), ignore_unknown=ignore_unknown)


def prepare_folder(
    source: Path,
    out: Path,
    *,
    tags: Path | None = None,
    class_column: str | None = None,
    min_cover: float | None = None,
    min_area: float | None = None,
    tile: int | None = None,
    stride: int | None = None,
    workers: int = 0,
    overwrite: bool = False,
    ignore_unknown: bool = False,
    **options: Any,
) -> PrepareSummary:
    """Read the user's own scenes (see :func:`read_folder`) and tile them into ``out``.

    Image-level labels come from the masks where a scene has one, else from ``tags``: vector
    features joined with the chip footprints when ``class_column`` is given, else a tag table
    (see :mod:`ctfa_cli.datasets.vector_tags`).

    Args:
        source: the folder (``images/``, optional ``masks/``, ``classes.yaml`` …).
        out: the DATA_DIR to write.
        tags: vector file or tag table; needed when some scene has no mask.
        class_column: column of ``tags`` holding each feature's class (vector features).
        min_cover: fraction of a chip a class's polygons must cover (default 0.01).
        min_area: or the area (CRS units²) they must cover.
        tile, stride, workers, overwrite, ignore_unknown: as :func:`prepare_benchmark`.
        **options: :func:`read_folder` options.

    Raises:
        CtfaError: the layout does not match, tags are unreadable or missing for scenes
            without masks, or tiling fails.
        CtfaUsageError: invalid options (``--min-cover`` without ``--class-column`` …).
    """
    from ctfa_cli.datasets.tiling import build_datadir
    from ctfa_cli.datasets.vector_tags import DEFAULT_MIN_COVER, load_tagger

    if class_column is None and (min_cover is not None or min_area is not None):
        raise CtfaUsageError("--min-cover and --min-area apply to vector tags: "
                             "pass --class-column too")
    if class_column is not None and tags is None:
        raise CtfaUsageError("--class-column names a column of the --tags file: pass --tags")
    spec, scenes = read_folder(source, **options)
    tagger = None
    if tags is not None:
        tagger = load_tagger(tags, spec, class_column=class_column,
                             min_cover=DEFAULT_MIN_COVER if min_cover is None else min_cover,
                             min_area=min_area)
    unlabelled = [scene for scene in scenes if scene.label is None]
    if unlabelled and tagger is None:
        raise CtfaError(f"{unlabelled[0].image} has no mask in {Path(source) / 'masks'} and no "
                        "--tags were given; pass --tags FILE (vector features with "
                        "--class-column, or a table of scene_id/chip_id and labels)")
    return build_datadir(scenes, spec, out, tile=tile, stride=stride, workers=workers,
                         overwrite=overwrite, source=str(source), tagger=tagger,
                         ignore_unknown=ignore_unknown)
