"""Users' own scenes: a folder of rasters, optional masks, and a ``classes.yaml``."""

from __future__ import annotations

import logging
from pathlib import Path

import geopandas as gpd
import pyogrio

from ctfa_cli.config import DatasetSpec
from ctfa_cli.datasets.readers.layout import SPLITS, band_count, require_source, seeded_split
from ctfa_cli.datasets.registry import spec_from_yaml
from ctfa_cli.datasets.scenes import SceneRecord
from ctfa_cli.errors import CtfaError, CtfaUsageError

log = logging.getLogger("ctfa.datasets.readers.folder")

LAYOUT = "images/, optional masks/, classes.yaml and optional splits.csv (see docs/datasets.md)"

# Files GDAL writes or reads beside rasters; they are not scenes.
SIDECAR_SUFFIXES = {".xml", ".ovr", ".msk", ".tfw", ".tifw", ".jgw", ".pgw", ".j2w", ".wld",
                    ".prj", ".txt", ".md"}


def read_folder(
    source: Path,
    *,
    bands: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> tuple[DatasetSpec, list[SceneRecord]]:
    """Read a folder of the user's own scenes into scene records.

    Layout::

        SOURCE/
        ├── classes.yaml      classes, palette, optional has_background, bands, mean, std,
        │                     tile_size, stride, name (fields of the dataset spec; a null
        │                     mean or std is measured on the training chips)
        ├── images/           scenes: any raster GDAL reads (GeoTIFF, JP2, PNG …), any size
        │   ├── scene_a.tif
        │   └── …
        ├── masks/            optional, same file stem as the image: scene_a.tif (or .png …);
        │                     one band = class indices, three bands = colours of the palette
        └── splits.csv        optional: columns scene_id (the image stem), split
                              (train | val | test)

    Masks may exist for some scenes only (e.g. a few hand-labelled scenes to evaluate on);
    scenes without one take their image-level labels from ``--tags`` (see
    :mod:`ctfa_cli.datasets.vector_tags`). Without ``splits.csv``, whole scenes are split with
    a seeded permutation: ``round(n · test_fraction)`` test, ``round(n · val_fraction)`` val,
    the rest train (so a folder of a few scenes may have no val or test scene).

    Args:
        source: the folder.
        bands: 1-based band indices to read, comma-separated (``4,1,2``); None: all bands,
            which must then be as many as ``classes.yaml`` lists (3 by default: r, g, b).
        val_fraction: fraction of scenes in ``val`` without ``splits.csv``.
        test_fraction: fraction of scenes in ``test`` without ``splits.csv``.
        seed: seed of that split.

    Returns:
        The spec from ``classes.yaml`` and one record per image, scene ids = image stems.

    Raises:
        CtfaError: ``classes.yaml`` or ``images/`` is missing or empty, a raster is unreadable
            or has the wrong number of bands, a mask has no image, or ``splits.csv`` is
            incomplete.
        CtfaUsageError: invalid ``classes.yaml``, ``bands`` or fractions.
    """
    source = require_source(source, LAYOUT)
    if not (source / "classes.yaml").is_file():
        raise CtfaError(f"no classes.yaml under {source}; expected {LAYOUT}")
    spec = spec_from_yaml(source / "classes.yaml")
    if not (source / "images").is_dir():
        raise CtfaError(f"no `images` folder under {source}; expected {LAYOUT}")
    images = _rasters(source / "images")
    if not images:
        raise CtfaError(f"{source / 'images'} holds no raster; expected {LAYOUT}")
    masks = _rasters(source / "masks") if (source / "masks").is_dir() else {}
    orphans = sorted(set(masks) - set(images))
    if orphans:
        raise CtfaError(f"{masks[orphans[0]]} has no image of the same name in "
                        f"{source / 'images'}; masks are matched to images by file stem")

    band_indices = _parse_bands(bands)
    for path in images.values():
        _check_bands(path, band_indices, spec)

    splits = (_read_splits(source / "splits.csv", list(images))
              if (source / "splits.csv").is_file()
              else seeded_split(list(images), val_fraction, test_fraction, seed))
    scenes = []
    for scene_id, image in sorted(images.items()):
        mask = masks.get(scene_id)
        scenes.append(SceneRecord(
            scene_id=scene_id, image=image, split=splits[scene_id], label=mask,
            label_kind="color" if mask is not None and band_count(mask) >= 3 else "index",
            bands=band_indices,
        ))
    log.info("%d scenes, %d with masks", len(scenes), len(masks))
    return spec, scenes


def _rasters(folder: Path) -> dict[str, Path]:
    """Raster files under ``folder`` by stem (hidden files and GDAL sidecars left out)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name.startswith(".") or path.suffix.lower() in (
                SIDECAR_SUFFIXES):
            continue
        if path.stem in found:
            raise CtfaError(f"{path} and {found[path.stem]} have the same name; scene ids are "
                            "file stems and must be unique")
        found[path.stem] = path
    return found


def _parse_bands(bands: str | None) -> tuple[int, ...] | None:
    if bands is None:
        return None
    try:
        indices = tuple(int(b) for b in bands.split(","))
    except ValueError:
        indices = ()
    if not indices or min(indices) < 1:
        raise CtfaUsageError(f"--bands {bands!r}: expected 1-based band indices such as 4,1,2")
    return indices


def _check_bands(image: Path, indices: tuple[int, ...] | None, spec: DatasetSpec) -> None:
    count = band_count(image)
    wanted = len(indices) if indices else count
    if indices and max(indices) > count:
        raise CtfaError(f"{image} has {count} bands; --bands asks for band {max(indices)}")
    if wanted != spec.in_chans:
        raise CtfaError(
            f"{image}: {wanted} bands are read but classes.yaml lists {spec.in_chans} "
            f"({', '.join(spec.bands)}); pass --bands or list the bands with their mean and std "
            "(null: measured) in classes.yaml"
        )


def _read_splits(path: Path, scene_ids: list[str]) -> dict[str, str]:
    try:
        table = gpd.read_file(path, ignore_geometry=True)
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as exc:
        raise CtfaError(f"{path}: cannot read it as CSV ({exc})") from exc
    if not {"scene_id", "split"} <= set(table.columns):
        raise CtfaError(f"{path}: expected the columns scene_id and split")
    splits = dict(zip(table["scene_id"].astype(str), table["split"].astype(str), strict=True))
    bad = sorted({s for s in splits.values() if s not in SPLITS})
    if bad:
        raise CtfaError(f"{path}: unknown split {bad[0]!r}; use train, val or test")
    missing = sorted(set(scene_ids) - set(splits))
    if missing:
        raise CtfaError(f"{path}: no row for scene {missing[0]!r} "
                        f"({len(missing)} scenes missing); give every image a split")
    return splits
