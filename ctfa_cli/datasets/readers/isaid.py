"""iSAID (semantic masks over DOTA-v1.0 images), read from the distributed layout."""

from __future__ import annotations

import logging
from pathlib import Path

from ctfa_cli.config import DatasetSpec
from ctfa_cli.datasets.readers.layout import (
    band_count,
    index_files,
    require_dir,
    require_source,
    with_palette,
)
from ctfa_cli.datasets.registry import get_spec
from ctfa_cli.datasets.scenes import SceneRecord
from ctfa_cli.errors import CtfaError

log = logging.getLogger("ctfa.datasets.readers.isaid")

LAYOUT = ("the iSAID layout: train/ and val/ with DOTA images and Semantic_masks "
          "(see docs/datasets.md)")

# iSAID publishes no test masks: the paper evaluates on iSAID val, so val becomes our test.
SPLIT_FOLDERS = {"train": "train", "test": "val"}
MASK_SUFFIX = "_instance_color_RGB"


def read_isaid(
    source: Path, *, palette: Path | None = None
) -> tuple[DatasetSpec, list[SceneRecord]]:
    """Read iSAID train and val into scene records (one per DOTA image, sizes vary).

    Download: images are DOTA-v1.0 (https://captain-whu.github.io/DOTA/dataset.html), the
    semantic masks are iSAID's (https://captain-whu.github.io/iSAID/dataset.html). Unzip both
    so that each split folder holds the images and the ``*_instance_color_RGB.png`` masks::

        SOURCE/
        ├── train/
        │   ├── images/P0000.png …                                   (DOTA part1–3)
        │   └── Semantic_masks/images/P0000_instance_color_RGB.png …
        └── val/
            ├── images/P0003.png …
            └── Semantic_masks/images/P0003_instance_color_RGB.png …

    The files are found anywhere below ``train/`` and ``val/``, so the devkit layout (masks
    beside the images in ``images/``) and archives unzipped one level deeper work as well;
    ``*_instance_id_RGB.png`` instance masks are not needed. iSAID ``test`` has no masks and is
    not read. Split, as the CTFA paper: iSAID train is ``train``, iSAID val is ``test``.

    Masks are decoded with the spec palette, the 16 colours of the iSAID devkit
    (``preprocess/cityscapesScripts/cityscapesscripts/helpers/labels.py``, RGB order; the masks
    were rendered with that table). Other code bases circulate variants with pairs of classes
    swapped; ``palette`` (a YAML file with ``palette: [[r, g, b], …]``, one colour per class in
    class order) replaces the map. Single-band (grey) DOTA images are read three times so that
    every chip has R, G, B; an alpha band is dropped. Images are not georeferenced: chips get
    pixel coordinates and no CRS.

    Args:
        source: folder holding ``train/`` and ``val/``.
        palette: optional YAML palette overriding the devkit colours.

    Returns:
        The iSAID spec and one record per image, scene ids ``isaid_<Pxxxx>``.

    Raises:
        CtfaError: a split folder is missing or empty, or an image lacks its mask (or the
            reverse).
        CtfaUsageError: an invalid palette file.
    """
    source = require_source(source, LAYOUT)
    spec = get_spec("isaid")
    if palette is not None:
        spec = with_palette(spec, palette)
    scenes = []
    grey = 0
    for split, folder_name in SPLIT_FOLDERS.items():
        folder = require_dir(source, (folder_name,), LAYOUT)
        images = index_files(folder, r"(P\d+)\.png", lambda m: m[1])
        masks = index_files(folder, rf"(P\d+){MASK_SUFFIX}\.png", lambda m: m[1])
        if not images:
            raise CtfaError(f"no DOTA image (P0000.png …) under {folder}; expected {LAYOUT}")
        orphans = sorted(set(masks) - set(images))
        if orphans:
            raise CtfaError(f"{masks[orphans[0]]} has no image {orphans[0]}.png under {folder}; "
                            "unzip the DOTA images of this split")
        for image_id, image in sorted(images.items()):
            if image_id not in masks:
                raise CtfaError(f"no mask {image_id}{MASK_SUFFIX}.png for {image} under "
                                f"{folder}; unzip the iSAID Semantic_masks of this split")
            count = band_count(image)
            grey += count < 3
            scenes.append(SceneRecord(
                scene_id=f"isaid_{image_id}", image=image, split=split, label=masks[image_id],
                label_kind="color", bands=_rgb_bands(count),
            ))
    if grey:
        log.info("%d grey-level images are read as R = G = B", grey)
    return spec, scenes


def _rgb_bands(count: int) -> tuple[int, ...] | None:
    """Band indices that give R, G, B from a DOTA PNG of ``count`` bands (grey, +alpha)."""
    if count < 3:
        return (1, 1, 1)
    return None if count == 3 else (1, 2, 3)
