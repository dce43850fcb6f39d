"""DeepGlobe Land Cover, read from the challenge's training folder."""

from __future__ import annotations

import logging
from pathlib import Path

from ctfa_cli.config import DatasetSpec
from ctfa_cli.datasets.readers.layout import (
    index_files,
    require_dir,
    require_source,
    seeded_split,
)
from ctfa_cli.datasets.registry import get_spec
from ctfa_cli.datasets.scenes import SceneRecord
from ctfa_cli.errors import CtfaError

log = logging.getLogger("ctfa.datasets.readers.deepglobe")

LAYOUT = "the DeepGlobe Land Cover layout: train/ with <id>_sat.jpg and <id>_mask.png"
TRAIN_FOLDERS = ("train", "land-train")
# The masks are not pure colours (resampling noise): each channel is thresholded at 128.
COLOR_THRESHOLD = 128


def read_deepglobe(
    source: Path, *, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0
) -> tuple[DatasetSpec, list[SceneRecord]]:
    """Read the 803 labelled DeepGlobe Land Cover images into scene records.

    Download: the DeepGlobe 2018 Land Cover challenge (http://deepglobe.org/), e.g. the
    Kaggle copy "deepglobe-land-cover-classification-dataset"::

        SOURCE/
        ├── train/            (or land-train/ of the challenge archive)
        │   ├── 100694_sat.jpg      2448×2448 RGB
        │   ├── 100694_mask.png     colour mask
        │   └── …
        ├── valid/ test/      images without masks: not read
        └── class_dict.csv, metadata.csv

    Colours: urban (0, 255, 255), agriculture (255, 255, 0), rangeland (255, 0, 255), forest
    (0, 255, 0), water (0, 0, 255), barren (255, 255, 255), unknown (0, 0, 0); each mask
    channel is thresholded at 128 first, as the masks are not pure. There is no background
    class. Only the training folder has masks, so the split is drawn from its images, by image
    and never by chip, with a seeded permutation of the sorted ids (see
    :func:`~ctfa_cli.datasets.readers.layout.seeded_split`): by default 10 % test, 10 % val,
    80 % train (80/10/10 of 803 images: 643/80/80). Scene ids ``deepglobe_<id>`` keep every
    chip name unique.

    Args:
        source: the unpacked dataset.
        val_fraction: fraction of images in ``val``.
        test_fraction: fraction of images in ``test``.
        seed: seed of the split.

    Returns:
        The DeepGlobe spec and one record per labelled image.

    Raises:
        CtfaError: no training folder, no image in it, or an image without its mask (or the
            reverse).
        CtfaUsageError: fractions out of range.
    """
    source = require_source(source, LAYOUT)
    folder = require_dir(source, TRAIN_FOLDERS, LAYOUT)
    images = index_files(folder, r"(.+)_sat\.jpg", lambda m: m[1])
    masks = index_files(folder, r"(.+)_mask\.png", lambda m: m[1])
    if not images:
        raise CtfaError(f"no <id>_sat.jpg image under {folder}; expected {LAYOUT}")
    missing = sorted(set(images) ^ set(masks))
    if missing:
        name = missing[0]
        have, lack = (images[name], f"{name}_mask.png") if name in images else (
            masks[name], f"{name}_sat.jpg")
        raise CtfaError(f"{have} has no {lack} beside it in {folder}; every labelled image "
                        "needs both files")
    splits = seeded_split(list(images), val_fraction, test_fraction, seed)
    scenes = [
        SceneRecord(scene_id=f"deepglobe_{image_id}", image=images[image_id],
                    split=splits[image_id], label=masks[image_id], label_kind="color",
                    color_threshold=COLOR_THRESHOLD)
        for image_id in sorted(images)
    ]
    log.info("%d labelled images: %s", len(scenes),
             ", ".join(f"{s} {list(splits.values()).count(s)}" for s in ("train", "val", "test")))
    return get_spec("deepglobe"), scenes
