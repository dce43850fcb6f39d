"""The record every raw-layout reader produces and the shared tiler consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class SceneRecord:
    """One raw scene and its labels, as found in a dataset's distributed layout.

    Attributes:
        scene_id: unique, file-system-safe id (chip names derive from it, so they never collide).
        image: raster GDAL can read (GeoTIFF, PNG, JPEG …).
        split: ``train``, ``val`` or ``test``; splits are by scene, never by chip.
        label: mask raster, or None when the scene has no mask (weak tags only).
        label_kind: ``index`` (pixel values are class indices) or ``color`` (RGB colours).
        color_map: for ``color`` masks, pairs of (colour, class index or ignore index); colours not
            listed are unknown, counted and mapped to ignore. None: the spec palette.
        bands: 1-based band indices of ``image`` to read, in model order. None: all bands.
        extra_bands: single-band rasters of the same grid appended as channels (e.g. a DSM).
        tags: scene-level image labels (class indices) used when there is no mask.
        color_threshold: for ``color`` masks that are not pure (JPEG-like noise, as DeepGlobe's),
            each channel becomes 255 where it is at least this value and 0 elsewhere before the
            colours are matched. None: colours must match exactly.
    """

    scene_id: str
    image: Path
    split: str
    label: Path | None = None
    label_kind: Literal["index", "color"] = "index"
    color_map: tuple[tuple[RGB, int], ...] | None = None
    bands: tuple[int, ...] | None = None
    extra_bands: tuple[Path, ...] = field(default_factory=tuple)
    tags: tuple[int, ...] | None = None
    color_threshold: int | None = None
