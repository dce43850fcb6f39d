"""Seeded tiny scenes (GeoTIFF or PNG, index or colour masks) for the tiler and DATA_DIR tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from ctfa_cli.datasets.registry import ISPRS_PALETTE
from ctfa_cli.datasets.scenes import SceneRecord

UTM33 = "EPSG:32633"


@dataclass
class TinyScene:
    record: SceneRecord
    image: np.ndarray  # what the tiler should read: uint8 [bands, H, W]
    mask: np.ndarray | None  # class indices uint8 [H, W]
    transform: rasterio.Affine | None


def class_map(rng: np.random.Generator, height: int, width: int, classes: int = 6) -> np.ndarray:
    """Class 0 everywhere, then rectangles of the other classes: chips see different subsets."""
    mask = np.zeros((height, width), np.uint8)
    for k in rng.integers(1, classes, size=2 * classes):
        h, w = rng.integers(4, max(5, height // 3)), rng.integers(4, max(5, width // 3))
        r, c = rng.integers(0, height - h), rng.integers(0, width - w)
        mask[r:r + h, c:c + w] = k
    return mask


def write_scene(folder: Path, scene_id: str, *, height: int, width: int, seed: int,
                split: str = "train", crs: str | None = UTM33, origin=(366000.0, 5808000.0),
                pixel_size: float = 0.5, label: str | None = "index", bands: int = 3,
                dtype: str = "uint8", driver: str = "GTiff") -> TinyScene:
    """Write ``<scene_id>.tif`` (or ``.png``) and its mask; return what the tiler must produce.

    ``label``: ``index`` (class values), ``color`` (ISPRS palette RGB) or None (no mask).
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".png" if driver == "PNG" else ".tif"
    transform = from_origin(*origin, pixel_size, pixel_size) if crs is not None else None
    geo = {"crs": crs, "transform": transform} if crs is not None else {}
    if dtype == "uint8":
        pixels = rng.integers(0, 256, (bands, height, width)).astype(np.uint8)
    else:
        pixels = rng.integers(0, 4096, (bands, height, width)).astype(dtype)
    image_path = folder / f"{scene_id}{suffix}"
    with rasterio.open(image_path, "w", driver=driver, height=height, width=width, count=bands,
                       dtype=dtype, **geo) as dst:
        dst.write(pixels)
    mask = class_map(rng, height, width) if label is not None else None
    label_path = None
    if label == "index":
        label_path = folder / f"{scene_id}_label{suffix}"
        with rasterio.open(label_path, "w", driver=driver, height=height, width=width, count=1,
                           dtype="uint8", **geo) as dst:
            dst.write(mask[None])
    elif label == "color":
        label_path = folder / f"{scene_id}_label{suffix}"
        rgb = np.moveaxis(np.array(ISPRS_PALETTE, np.uint8)[mask], -1, 0)
        with rasterio.open(label_path, "w", driver=driver, height=height, width=width, count=3,
                           dtype="uint8", **geo) as dst:
            dst.write(rgb)
    record = SceneRecord(scene_id=scene_id, image=image_path, split=split, label=label_path,
                         label_kind="color" if label == "color" else "index")
    return TinyScene(record, pixels if dtype == "uint8" else None, mask, transform)
