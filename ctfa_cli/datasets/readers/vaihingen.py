"""ISPRS Vaihingen, read from the release exactly as ISPRS distributes it."""

from __future__ import annotations

import logging
from pathlib import Path

from ctfa_cli.config import DatasetSpec
from ctfa_cli.datasets.readers.layout import index_files, require_dir, require_source
from ctfa_cli.datasets.readers.potsdam import isprs_color_map
from ctfa_cli.datasets.registry import get_spec
from ctfa_cli.datasets.scenes import SceneRecord
from ctfa_cli.errors import CtfaError

log = logging.getLogger("ctfa.datasets.readers.vaihingen")

LAYOUT = "the ISPRS Vaihingen release layout (see docs/datasets.md)"

# ISPRS 2D semantic labelling benchmark split: 16 training and 17 test areas of the 33.
TRAIN_AREAS = (1, 3, 5, 7, 11, 13, 15, 17, 21, 23, 26, 28, 30, 32, 34, 37)
TEST_AREAS = (2, 4, 6, 8, 10, 12, 14, 16, 20, 22, 24, 27, 29, 31, 33, 35, 38)

# Label folders, the complete ground truth first: `gts_for_participants` of the original
# release holds the 16 training areas only.
FULL_LABEL_FOLDERS = ("ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE",
                      "gts_for_participants")
ERODED_LABEL_FOLDERS = ("ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE",
                        "gts_eroded_for_participants")


def read_vaihingen(
    source: Path, *, no_boundary: bool = False
) -> tuple[DatasetSpec, list[SceneRecord]]:
    """Read the ISPRS Vaihingen release into scene records (one per area, sizes vary).

    Download: https://www.isprs.org/education/benchmarks/UrbanSemLab/2d-sem-label-vaihingen.aspx
    (``ISPRS_semantic_labeling_Vaihingen.zip`` and the complete ground truth,
    ``ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE.zip`` and/or
    ``…_ground_truth_eroded_COMPLETE.zip``, all unzipped into SOURCE)::

        SOURCE/
        ├── top/top_mosaic_09cm_area1.tif                       IRRG true orthophotos
        ├── ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE/top_mosaic_09cm_area1.tif
        │   (or gts_for_participants/top_mosaic_09cm_area1.tif: training areas only)
        └── ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE/
            top_mosaic_09cm_area1_noBoundary.tif                (only with no_boundary)
            (or gts_eroded_for_participants/…)

    Colours are the Potsdam ones (see :func:`~ctfa_cli.datasets.readers.potsdam.read_potsdam`);
    with ``no_boundary`` the eroded labels are used and black boundary pixels are ignored.
    Split (ISPRS): train areas 1, 3, 5, 7, 11, 13, 15, 17, 21, 23, 26, 28, 30, 32, 34, 37;
    test areas 2, 4, 6, 8, 10, 12, 14, 16, 20, 22, 24, 27, 29, 31, 33, 35, 38.

    Args:
        source: the unpacked release.
        no_boundary: use the eroded ground truth.

    Returns:
        The Vaihingen spec (bands IR, R, G) and one record per area, scene ids
        ``vaihingen_area<N>``.

    Raises:
        CtfaError: ``top`` or a label folder is missing, or an area of the split lacks its
            image or label.
    """
    source = require_source(source, LAYOUT)
    images = index_files(require_dir(source, ("top",), LAYOUT),
                         r"top_mosaic_09cm_area(\d+)\.tif", lambda m: int(m[1]))
    label_dir = require_dir(source, ERODED_LABEL_FOLDERS if no_boundary else FULL_LABEL_FOLDERS,
                            LAYOUT)
    labels = index_files(label_dir, r"top_mosaic_09cm_area(\d+)(_noBoundary)?\.tif",
                         lambda m: int(m[1]))
    spec = get_spec("vaihingen")
    color_map = isprs_color_map(spec, no_boundary)
    scenes = []
    for split, areas in (("train", TRAIN_AREAS), ("test", TEST_AREAS)):
        for area in areas:
            if area not in images:
                raise CtfaError(f"{source / 'top'}/top_mosaic_09cm_area{area}.tif not found "
                                f"(area {area} of the {split} split); expected {LAYOUT}")
            if area not in labels:
                hint = ("; gts_for_participants holds the training areas only: unzip the "
                        "COMPLETE ground truth into SOURCE" if label_dir.name.endswith(
                            "for_participants") else "")
                raise CtfaError(f"no label for area {area} ({split} split) in {label_dir}"
                                f"{hint}")
            scenes.append(SceneRecord(
                scene_id=f"vaihingen_area{area}", image=images[area], split=split,
                label=labels[area], label_kind="color", color_map=color_map,
            ))
    return spec, scenes
