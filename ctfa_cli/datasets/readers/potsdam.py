"""ISPRS Potsdam, read from the release exactly as ISPRS distributes it."""

from __future__ import annotations

import logging
from pathlib import Path

from ctfa_cli.config import DatasetSpec
from ctfa_cli.datasets.readers.layout import index_files, require_dir, require_source
from ctfa_cli.datasets.registry import get_spec
from ctfa_cli.datasets.scenes import RGB, SceneRecord
from ctfa_cli.errors import CtfaError, CtfaUsageError

log = logging.getLogger("ctfa.datasets.readers.potsdam")

LAYOUT = "the ISPRS Potsdam release layout (see docs/datasets.md)"

Tile = tuple[int, int]

# ISPRS 2D semantic labelling benchmark split (Potsdam web page): 24 training, 14 test tiles.
TRAIN_TILES: tuple[Tile, ...] = (
    (2, 10), (2, 11), (2, 12), (3, 10), (3, 11), (3, 12), (4, 10), (4, 11), (4, 12),
    (5, 10), (5, 11), (5, 12), (6, 7), (6, 8), (6, 9), (6, 10), (6, 11), (6, 12),
    (7, 7), (7, 8), (7, 9), (7, 10), (7, 11), (7, 12),
)
TEST_TILES: tuple[Tile, ...] = (
    (2, 13), (2, 14), (3, 13), (3, 14), (4, 13), (4, 14), (4, 15), (5, 13), (5, 14), (5, 15),
    (6, 13), (6, 14), (6, 15), (7, 13),
)
# The CTFA paper trained on 22 of the 24 training tiles: 4_12 and 7_10 are left out entirely.
PAPER_EXCLUDED: tuple[Tile, ...] = ((4, 12), (7, 10))

SPLIT_TILES: dict[str, dict[str, tuple[Tile, ...]]] = {
    "standard": {"train": TRAIN_TILES, "test": TEST_TILES},
    "paper": {
        "train": tuple(t for t in TRAIN_TILES if t not in PAPER_EXCLUDED),
        "test": TEST_TILES,
    },
}

# Band presets: preferred folder and file suffix; the RGBIR file (bands R, G, B, IR) serves any
# preset through band indices when the preferred folder was not unpacked.
BAND_PRESETS: dict[str, tuple[list[str], str, str, tuple[int, ...]]] = {
    # preset: (band names, folder, file suffix, 1-based bands of the RGBIR file)
    "irrg": (["ir", "r", "g"], "3_Ortho_IRRG", "IRRG", (4, 1, 2)),
    "rgb": (["r", "g", "b"], "2_Ortho_RGB", "RGB", (1, 2, 3)),
    "rgbir": (["r", "g", "b", "ir"], "4_Ortho_RGBIR", "RGBIR", (1, 2, 3, 4)),
}
RGBIR_FOLDER = "4_Ortho_RGBIR"

LABEL_FOLDERS = {False: ("5_Labels_all", "label"), True: ("5_Labels_all_noBoundary",
                                                          "label_noBoundary")}
DSM_FOLDER = "1_DSM_normalisation"

# Normalisation: the first three bands keep the ImageNet statistics, which the official code
# applies to IRRG as if it were RGB (and a pretrained backbone expects); a fourth band (IR of
# RGBIR) and the nDSM have no such convention and get the statistics `prepare` measures on the
# training chips (None in the spec until then).


def isprs_color_map(spec: DatasetSpec, no_boundary: bool) -> tuple[tuple[RGB, int], ...] | None:
    """Colour map of ISPRS label rasters (Potsdam and Vaihingen share it).

    The full labels use the six class colours only (``None``: the spec palette). In the eroded
    ``noBoundary`` labels, black (0, 0, 0) marks object boundaries and maps to the ignore index.
    """
    if not no_boundary:
        return None
    pairs = [(tuple(colour), index) for index, colour in enumerate(spec.palette)]
    return (*pairs, ((0, 0, 0), spec.ignore_index))


def _tile_key(match) -> Tile:
    # Releases spell tile ids with and without zero padding (2_10 and 02_10): compare numbers.
    return int(match["row"]), int(match["col"])


def read_potsdam(
    source: Path,
    *,
    bands: str = "irrg",
    dsm: bool = False,
    no_boundary: bool = False,
    split: str = "standard",
) -> tuple[DatasetSpec, list[SceneRecord]]:
    """Read the ISPRS Potsdam release into scene records (one per 6000×6000 tile).

    Download: https://www.isprs.org/education/benchmarks/UrbanSemLab/2d-sem-label-potsdam.aspx
    (the ``Potsdam.zip`` release; unzip it and the archives it holds into SOURCE)::

        SOURCE/
        ├── 1_DSM_normalisation/dsm_potsdam_02_10_normalized_lastools.jpg   (only with dsm)
        ├── 2_Ortho_RGB/top_potsdam_2_10_RGB.tif          bands R, G, B
        ├── 3_Ortho_IRRG/top_potsdam_2_10_IRRG.tif        bands IR, R, G
        ├── 4_Ortho_RGBIR/top_potsdam_2_10_RGBIR.tif      bands R, G, B, IR
        ├── 5_Labels_all/top_potsdam_2_10_label.tif
        └── 5_Labels_all_noBoundary/top_potsdam_2_10_label_noBoundary.tif   (only with no_boundary)

    Files may sit directly in those folders or one level deeper (as some unzip tools leave
    them); tile ids may be zero-padded (``02_10``) or not (``2_10``), as the DSM files are.
    Only the folder of the chosen bands is needed; when it is missing, the RGBIR files give the
    same bands (IRRG = RGBIR bands 4, 1, 2).

    Labels are colour rasters: impervious surfaces (255, 255, 255), building (0, 0, 255),
    low vegetation (0, 255, 255), tree (0, 255, 0), car (255, 255, 0), clutter (255, 0, 0).
    With ``no_boundary`` the eroded labels are used and their black (0, 0, 0) boundary pixels
    are ignored (255). Splits: ``standard`` is the ISPRS split, train 24 tiles (2_10–2_12,
    3_10–3_12, 4_10–4_12, 5_10–5_12, 6_7–6_12, 7_7–7_12), test 14 (2_13, 2_14, 3_13, 3_14,
    4_13–4_15, 5_13–5_15, 6_13–6_15, 7_13); ``paper`` is the CTFA paper's, the same without the
    training tiles 4_12 and 7_10. Tiles in no split are skipped.

    Args:
        source: the unpacked release.
        bands: ``irrg`` (default, as the paper), ``rgb`` or ``rgbir``.
        dsm: append the normalised DSM (8-bit nDSM from ``1_DSM_normalisation``) as a channel
            named ``ndsm``.
        no_boundary: use ``5_Labels_all_noBoundary`` instead of ``5_Labels_all``.
        split: ``standard`` or ``paper``.

    Returns:
        The Potsdam spec (bands of the chosen preset; ImageNet statistics for the first three,
        ``None``, measured by ``prepare``, for IR of ``rgbir`` and the nDSM) and one record per
        tile of the split, scene ids ``potsdam_<row>_<col>``.

    Raises:
        CtfaUsageError: unknown band preset or split.
        CtfaError: a folder or a tile file of the split is missing.
    """
    if bands not in BAND_PRESETS:
        raise CtfaUsageError(f"--bands {bands!r}: choose one of {', '.join(BAND_PRESETS)}")
    if split not in SPLIT_TILES:
        raise CtfaUsageError(f"--split {split!r}: choose one of {', '.join(SPLIT_TILES)}")
    source = require_source(source, LAYOUT)
    band_names, folder, suffix, rgbir_bands = BAND_PRESETS[bands]

    if (source / folder).is_dir():
        images = _index(source / folder, rf"top_potsdam_(?P<row>\d+)_(?P<col>\d+)_{suffix}\.tif")
        image_bands = None
        image_name = f"{folder}/top_potsdam_{{}}_{{}}_{suffix}.tif"
    else:
        rgbir = require_dir(source, (folder, RGBIR_FOLDER), LAYOUT)
        images = _index(rgbir, r"top_potsdam_(?P<row>\d+)_(?P<col>\d+)_RGBIR\.tif")
        image_bands = rgbir_bands
        image_name = f"{RGBIR_FOLDER}/top_potsdam_{{}}_{{}}_RGBIR.tif"
        log.info("%s not found: reading %s bands from %s", folder, bands, rgbir)

    label_folder, label_suffix = LABEL_FOLDERS[no_boundary]
    labels = _index(require_dir(source, (label_folder,), LAYOUT),
                    rf"top_potsdam_(?P<row>\d+)_(?P<col>\d+)_{label_suffix}\.tif")
    dsms: dict = {}
    if dsm:
        dsms = _index(require_dir(source, (DSM_FOLDER,), LAYOUT),
                      r"dsm_potsdam_(?P<row>\d+)_(?P<col>\d+)_normalized_lastools\.jpg")

    spec = get_spec("potsdam")
    color_map = isprs_color_map(spec, no_boundary)
    scenes = []
    for split_name, tiles in SPLIT_TILES[split].items():
        for tile in tiles:
            image = _require(images, tile, source / image_name.format(*tile), split_name)
            label = _require(labels, tile, source / label_folder /
                             f"top_potsdam_{tile[0]}_{tile[1]}_{label_suffix}.tif", split_name)
            extra = ()
            if dsm:
                extra = (_require(dsms, tile, source / DSM_FOLDER /
                                  f"dsm_potsdam_{tile[0]:02d}_{tile[1]:02d}_normalized_lastools.jpg",
                                  split_name),)
            scenes.append(SceneRecord(
                scene_id=f"potsdam_{tile[0]}_{tile[1]}", image=image, split=split_name,
                label=label, label_kind="color", color_map=color_map, bands=image_bands,
                extra_bands=extra,
            ))
    skipped = sorted(set(images) - {t for tiles in SPLIT_TILES[split].values() for t in tiles})
    if skipped:
        log.info("tiles in no split of %r, skipped: %s", split,
                 ", ".join(f"{r}_{c}" for r, c in skipped))

    names = band_names + (["ndsm"] if dsm else [])
    measured = [None] * (len(names) - 3)
    mean, std = list(spec.mean) + measured, list(spec.std) + measured
    return DatasetSpec(**{**spec.model_dump(), "bands": names, "mean": mean, "std": std}), scenes


def _index(folder: Path, pattern: str) -> dict:
    return index_files(folder, pattern, _tile_key)


def _require(files: dict, tile: Tile, expected: Path, split: str) -> Path:
    if tile not in files:
        raise CtfaError(
            f"{expected} not found (tile {tile[0]}_{tile[1]} of the {split} split); "
            f"expected {LAYOUT}"
        )
    return files[tile]
