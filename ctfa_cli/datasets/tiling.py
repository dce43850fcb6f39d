"""The shared tiler: scenes (image + mask or tags) → a DATA_DIR of chips with image-level labels.

Every dataset reader produces :class:`~ctfa_cli.datasets.scenes.SceneRecord` objects; this module
turns them into chips, ``chips.gpkg`` and ``dataset.yaml`` (see :mod:`ctfa_cli.datasets.datadir`).

Contract details:

* **Grid.** :func:`window_grid` covers every pixel: offsets ``0, stride, 2·stride …`` and a last
  window flush with the border. A scene smaller than the tile along an axis gives one window of
  the scene's own size there (chips are never padded).
* **Images.** Bands are read in ``SceneRecord.bands`` order, extra single-band rasters appended.
  uint8 bands are kept as they are; any other band is stretched linearly to uint8 between its
  per-scene 2nd and 98th percentiles (recorded in ``dataset.yaml``).
* **Masks.** Index masks keep their values; values that are neither a class nor the ignore index
  become ignore. Colour masks are decoded with ``SceneRecord.color_map`` or the spec palette
  (after thresholding each channel when ``color_threshold`` is set); unknown colours become
  ignore. Both are counted per file and reported.
* **Image-level labels.** Classes present in the chip mask, background (class 0 when
  ``spec.has_background``) and ignore excluded; without a mask, ``SceneRecord.tags``; without
  tags, the ``tagger``.
* **Safety.** Every file is written under a temporary name then renamed. A record per finished
  scene (``.ctfa-prepare/scenes/<id>.json``) lets a re-run reuse it; chips of a scene without a
  finished record are rewritten, so a half-written chip is never trusted.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import re
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
import rasterio.windows
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window

from ctfa_cli import __version__
from ctfa_cli.config import DatasetSpec
from ctfa_cli.datasets import datadir
from ctfa_cli.datasets.scenes import RGB, SceneRecord
from ctfa_cli.errors import CtfaError, CtfaUsageError
from ctfa_cli.io import atomic_path
from ctfa_cli.progress import progress_bar

if TYPE_CHECKING:
    import geopandas

log = logging.getLogger("ctfa.tiling")

# Bump when the chip content for the same inputs changes, so that old scene records are redone.
TILER_VERSION = 1
STRETCH_PERCENTILES = (2.0, 98.0)
SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")


def window_grid(height: int, width: int, tile: int, stride: int) -> list[Window]:
    """Windows that cover a ``height × width`` raster completely, in row-major order.

    Offsets along each axis are ``0, stride, 2·stride, …`` plus a last one flush with the border
    (``size - tile``) when the regular ones stop short, so no pixel is dropped. An axis shorter
    than ``tile`` gets a single window of its own length.

    Args:
        height: raster rows (> 0).
        width: raster columns (> 0).
        tile: window size in pixels (> 0).
        stride: step between windows in pixels, ``0 < stride <= tile``.

    Returns:
        ``rasterio.windows.Window(col_off, row_off, width, height)`` objects.

    Raises:
        ValueError: a non-positive size, or ``stride`` outside ``(0, tile]``.
    """
    if height <= 0 or width <= 0 or tile <= 0:
        raise ValueError(f"need positive sizes, got {height}x{width} with tile {tile}")
    if not 0 < stride <= tile:
        raise ValueError(f"stride must be in (0, tile={tile}], got {stride}")
    rows = _offsets(height, tile, stride)
    cols = _offsets(width, tile, stride)
    return [Window(c, r, min(tile, width), min(tile, height)) for r in rows for c in cols]


def _offsets(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    offsets = list(range(0, length - tile + 1, stride))
    if offsets[-1] + tile < length:
        offsets.append(length - tile)
    return offsets


def resolve_tiling(spec: DatasetSpec, tile: int | None, stride: int | None) -> tuple[int, int]:
    """Tile and stride to use: the options, else the spec's. A ``--tile`` without ``--stride``
    gives non-overlapping chips (stride = tile).

    Raises:
        CtfaUsageError: stride larger than the tile (pixels between chips would be dropped).
    """
    size = tile if tile is not None else spec.tile_size
    step = stride if stride is not None else (size if tile is not None else spec.stride)
    if size <= 0 or step <= 0:
        raise CtfaUsageError(f"--tile and --stride must be positive (got {size}, {step})")
    if step > size:
        raise CtfaUsageError(f"--stride {step} is larger than --tile {size}: the pixels between "
                             "chips would be dropped; use a stride no larger than the tile")
    return size, step


@dataclass
class PrepareSummary:
    """What ``prepare`` produced.

    Attributes:
        out: the DATA_DIR.
        scenes: scenes per split.
        chips: chips per split.
        class_frequency: class name → fraction of the labelled (non-ignore) chip pixels, all
            splits together (empty when no scene has a mask).
        label_chips: split → class name → chips carrying that image-level label.
        unknown_colours: mask file → pixels of unknown colours/values that became ignore.
        reused_scenes: scenes whose chips from an earlier run were kept.
        stretched_scenes: scenes with non-uint8 bands stretched to uint8.
    """

    out: Path
    scenes: dict[str, int]
    chips: dict[str, int]
    class_frequency: dict[str, float]
    label_chips: dict[str, dict[str, int]]
    unknown_colours: dict[str, int] = field(default_factory=dict)
    reused_scenes: int = 0
    stretched_scenes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (what ``--json`` prints)."""
        data = asdict(self)
        data["out"] = str(self.out)
        return data

    def table(self):
        """A ``rich.table.Table``: one row per class with its share of the labelled pixels and,
        per split, the number of chips labelled with it (``-`` for the background, never a
        label); the title gives chips and scenes per split."""
        from rich.table import Table

        splits = list(self.chips)
        counts = ", ".join(f"{s} {self.chips[s]} chips / {self.scenes.get(s, 0)} scenes"
                           for s in splits)
        table = Table(title=f"{self.out}: {counts}")
        table.add_column("class")
        table.add_column("pixels %", justify="right")
        for split in splits:
            table.add_column(split, justify="right")
        labelled = {n for per in self.label_chips.values() for n in per}
        names = list(self.class_frequency) or sorted(labelled)
        for name in names:
            share = self.class_frequency.get(name)
            table.add_row(name, "-" if share is None else f"{100 * share:.1f}",
                          *(str(self.label_chips[s].get(name, 0)) if name in labelled else "-"
                            for s in splits))
        caption = "per split: chips carrying each image-level label"
        if self.unknown_colours:
            pixels = sum(self.unknown_colours.values())
            caption += (f"; {pixels} pixels of unknown colours in {len(self.unknown_colours)} "
                        "mask files became ignore")
        table.caption = caption
        return table


# --- reading and decoding scenes ---------------------------------------------------------------


#: Share of a scene's label pixels in unknown colours above which ``prepare`` stops (1 %: a few
#: anti-aliased or stray pixels pass; a wrong palette, which leaves most pixels unknown, does not).
UNKNOWN_COLOUR_LIMIT = 0.01


@dataclass
class _Scene:
    image: np.ndarray  # uint8 [bands, H, W]
    mask: np.ndarray | None  # uint8 [H, W]
    crs: Any
    transform: rasterio.Affine
    unknown: dict[RGB | int, int]  # unknown colour or value → pixels
    stretch: list[tuple[float, float]] | None  # per band (lo, hi), None when all were uint8


def _open(path: Path):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as exc:
        raise CtfaError(f"{path}: missing or unreadable raster ({' '.join(str(exc).split())})") \
            from exc


def _read(src, indexes: list[int] | int) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return src.read(indexes)
    except RasterioIOError as exc:
        raise CtfaError(f"{src.name}: unreadable raster data ({' '.join(str(exc).split())})") \
            from exc


def stretch_to_uint8(band: np.ndarray, nodata: float | None = None
                     ) -> tuple[np.ndarray, tuple[float, float]]:
    """Linear stretch of one band to uint8 between its 2nd and 98th percentiles.

    Args:
        band: ``[H, W]`` any numeric dtype; NaN and ``nodata`` pixels are left out of the
            percentiles and become 0.

    Returns:
        ``(uint8 [H, W], (low, high))`` with ``low`` mapped to 0 and ``high`` to 255.
    """
    values = band.astype(np.float64)
    valid = np.isfinite(values)
    if nodata is not None:
        valid &= values != nodata
    if not valid.any():
        return np.zeros(band.shape, np.uint8), (0.0, 0.0)
    low, high = (float(v) for v in np.percentile(values[valid], STRETCH_PERCENTILES))
    scale = 255.0 / (high - low) if high > low else 0.0
    out = np.clip((values - low) * scale, 0, 255).round()
    out[~valid] = 0
    return out.astype(np.uint8), (low, high)


def decode_color_mask(rgb: np.ndarray, color_map: list[tuple[RGB, int]], ignore_index: int,
                      threshold: int | None = None) -> tuple[np.ndarray, dict[RGB, int]]:
    """Turn an RGB label image into class indices.

    Args:
        rgb: uint8 ``[3, H, W]``.
        color_map: ``(colour, class index or ignore index)`` pairs; colours must be distinct.
        ignore_index: value of pixels whose colour is not in ``color_map``.
        threshold: when set, each channel becomes 255 where ``>= threshold`` and 0 elsewhere
            before matching (masks with compression noise such as DeepGlobe's).

    Returns:
        ``(mask uint8 [H, W], unknown colours → pixel count)``.

    Raises:
        ValueError: the same colour is listed twice.
    """
    if threshold is not None:
        rgb = np.where(rgb >= threshold, 255, 0).astype(np.uint8)
    packed = (rgb[0].astype(np.uint32) << 16) | (rgb[1].astype(np.uint32) << 8) | rgb[2]
    keys = np.array([(r << 16) | (g << 8) | b for (r, g, b), _ in color_map], dtype=np.uint32)
    if len(np.unique(keys)) != len(keys):
        raise ValueError("colour map lists the same colour twice")
    values = np.array([v for _, v in color_map], dtype=np.uint8)
    order = np.argsort(keys)
    keys, values = keys[order], values[order]
    pos = np.minimum(np.searchsorted(keys, packed), len(keys) - 1)
    known = keys[pos] == packed
    mask = np.where(known, values[pos], ignore_index).astype(np.uint8)
    unknown: dict[RGB, int] = {}
    if not known.all():
        colours, counts = np.unique(packed[~known], return_counts=True)
        unknown = {(int(c >> 16), int((c >> 8) & 255), int(c & 255)): int(n)
                   for c, n in zip(colours, counts, strict=True)}
    return mask, unknown


def read_scene(record: SceneRecord, spec: DatasetSpec) -> _Scene:
    """Read a scene's bands (stretched to uint8 where needed) and its decoded mask.

    Raises:
        CtfaError: a file is missing or unreadable, a band index does not exist, the band count
            does not match ``spec.bands``, or a mask/extra band has another size than the image.
    """
    src = _open(record.image)
    with src:
        indexes = list(record.bands) if record.bands else list(range(1, src.count + 1))
        if max(indexes) > src.count or min(indexes) < 1:
            raise CtfaError(f"{record.image}: has {src.count} bands, cannot read bands "
                            f"{','.join(map(str, indexes))}; choose existing bands with --bands")
        bands = [(_read(src, i), src.dtypes[i - 1], src.nodata) for i in indexes]
        crs, transform, shape = src.crs, src.transform, (src.height, src.width)
    for path in record.extra_bands:
        extra = _open(path)
        with extra:
            if (extra.height, extra.width) != shape:
                raise CtfaError(f"{path}: {extra.height}x{extra.width} pixels but image "
                                f"{record.image} has {shape[0]}x{shape[1]}; extra bands must "
                                "share the image grid")
            bands.append((_read(extra, 1), extra.dtypes[0], extra.nodata))
    if len(bands) != spec.in_chans:
        raise CtfaError(f"{record.image}: {len(bands)} bands selected but the {spec.name} spec "
                        f"expects {spec.in_chans} ({','.join(spec.bands)}); choose bands with "
                        "--bands")
    stretch: list[tuple[float, float]] | None = None
    if any(dtype != "uint8" for _, dtype, _ in bands):
        stretch = []
        channels = []
        for data, dtype, nodata in bands:
            if dtype == "uint8":
                channels.append(data)
                stretch.append((0.0, 255.0))
            else:
                data, bounds = stretch_to_uint8(data, nodata)
                channels.append(data)
                stretch.append(bounds)
        image = np.stack(channels)
    else:
        image = np.stack([data for data, _, _ in bands])
    mask, unknown = (None, {}) if record.label is None else _read_mask(record, spec, shape)
    return _Scene(image, mask, crs, transform, unknown, stretch)


def _read_mask(record: SceneRecord, spec: DatasetSpec, shape: tuple[int, int]
               ) -> tuple[np.ndarray, dict]:
    src = _open(record.label)
    with src:
        if (src.height, src.width) != shape:
            raise CtfaError(f"{record.label}: label is {src.height}x{src.width} pixels but image "
                            f"{record.image} is {shape[0]}x{shape[1]}; pair each image with its "
                            "own mask")
        if record.label_kind == "index":
            if src.count != 1:
                raise CtfaError(f"{record.label}: {src.count} bands, expected a single-band "
                                "class-index mask")
            mask = _read(src, 1).astype(np.int64)
            valid = (mask < spec.num_classes) | (mask == spec.ignore_index)
            unknown: dict = {}
            if not valid.all():
                values, counts = np.unique(mask[~valid], return_counts=True)
                unknown = {int(v): int(n) for v, n in zip(values, counts, strict=True)}
            return np.where(valid, mask, spec.ignore_index).astype(np.uint8), unknown
        if src.count >= 3:
            rgb = _read(src, [1, 2, 3])
        elif src.count == 1 and _has_colormap(src):
            lut = np.zeros((256, 3), np.uint8)
            for value, rgba in src.colormap(1).items():
                lut[value] = rgba[:3]
            rgb = np.moveaxis(lut[_read(src, 1)], -1, 0)
        else:
            raise CtfaError(f"{record.label}: {src.count} band(s) without a colour table, "
                            "expected an RGB colour mask")
    color_map = list(record.color_map) if record.color_map is not None else [
        (tuple(c), k) for k, c in enumerate(spec.palette)]
    try:
        return decode_color_mask(rgb.astype(np.uint8), color_map, spec.ignore_index,
                                 record.color_threshold)
    except ValueError as exc:
        raise CtfaError(f"{record.label}: {exc}; fix the colour map") from exc


def _has_colormap(src) -> bool:
    try:
        src.colormap(1)
    except ValueError:
        return False
    return True


# --- tiling one scene (runs in a worker process) -----------------------------------------------


def _scene_fingerprint(record: SceneRecord, spec: DatasetSpec, tile: int, stride: int) -> dict:
    """Everything that decides a scene's chips; a finished scene is reused only on a match."""
    inputs = []
    for path in (record.image, record.label, *record.extra_bands):
        if path is None:
            continue
        try:
            stat = Path(path).stat()
        except OSError as exc:
            raise CtfaError(f"{path}: no such file (scene {record.scene_id})") from exc
        inputs.append([str(path), stat.st_size, stat.st_mtime_ns])
    record_json = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(record).items()}
    record_json["extra_bands"] = [str(p) for p in record.extra_bands]
    return json.loads(json.dumps({
        "tiler": TILER_VERSION, "record": record_json, "inputs": inputs, "tile": tile,
        "stride": stride,
        "spec": spec.model_dump(mode="json",
                                include={"classes", "palette", "ignore_index", "bands"}),
    }))


def _write_chip(path: Path, data: np.ndarray, *, crs, transform, descriptions=None,
                colormap=None, nodata=None) -> None:
    profile = {"driver": "GTiff", "dtype": "uint8", "count": data.shape[0],
               "height": data.shape[1], "width": data.shape[2], "compress": "deflate",
               "nodata": nodata}
    if crs is not None or not transform.is_identity:
        profile.update(crs=crs, transform=transform)
    with atomic_path(path) as tmp:
        with warnings.catch_warnings():
            # non-georeferenced scenes (e.g. iSAID PNGs) give chips without a geotransform
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(tmp, "w", **profile) as dst:
                dst.write(data)
                if descriptions:
                    for i, name in enumerate(descriptions, start=1):
                        dst.set_band_description(i, name)
                if colormap:
                    dst.write_colormap(1, colormap)


def _tile_scene(record: SceneRecord, spec: DatasetSpec, out: Path, tile: int, stride: int,
                fingerprint: dict) -> dict:
    """Read, tile and write one scene; return (and store) its record for the index."""
    with rasterio.Env():  # one GDAL environment for all the chips of the scene
        return _tile_scene_in_env(record, spec, out, tile, stride, fingerprint)


def _tile_scene_in_env(record: SceneRecord, spec: DatasetSpec, out: Path, tile: int,
                       stride: int, fingerprint: dict) -> dict:
    scene = read_scene(record, spec)
    _, height, width = scene.image.shape
    colormap = {k: (*c, 255) for k, c in enumerate(spec.palette)}
    foreground = spec.foreground_classes
    chips = []
    for window in window_grid(height, width, tile, stride):
        r, c, h, w = int(window.row_off), int(window.col_off), int(window.height), \
            int(window.width)
        name = datadir.chip_id(record.scene_id, r, c)
        image_rel, mask_rel = datadir.chip_relpaths(record.split, name)
        transform = rasterio.windows.transform(window, scene.transform)
        image = scene.image[:, r:r + h, c:c + w]
        _write_chip(out / image_rel, image, crs=scene.crs, transform=transform,
                    descriptions=spec.bands)
        flat = image.reshape(image.shape[0], -1).astype(np.float64)
        chip = {"chip_id": name, "row_off": r, "col_off": c, "height": h, "width": w,
                "band_sum": flat.sum(1).tolist(), "band_sqsum": (flat ** 2).sum(1).tolist(),
                "pixels": h * w, "mask": None, "class_pixels": None,
                "labels": list(record.tags) if record.tags is not None else None,
                "footprint": [list(transform @ xy) for xy in ((0, 0), (w, 0), (w, h), (0, h))]}
        if scene.mask is not None:
            mask = scene.mask[r:r + h, c:c + w]
            _write_chip(out / mask_rel, mask[None], crs=scene.crs, transform=transform,
                        colormap=colormap, nodata=spec.ignore_index)
            counts = np.bincount(mask.ravel(), minlength=256)
            chip.update(mask=mask_rel, class_pixels=counts[:spec.num_classes].tolist(),
                        labels=[k for k in foreground if counts[k] > 0])
        chips.append(chip)
    result = {
        "fingerprint": fingerprint, "scene_id": record.scene_id, "split": record.split,
        "crs": scene.crs.to_wkt() if scene.crs is not None else None,
        "stretch": scene.stretch, "chips": chips,
        "unknown": {"file": str(record.label), "pixels": sum(scene.unknown.values()),
                    "label_pixels": 0 if scene.mask is None else int(scene.mask.size),
                    "values": [[list(k) if isinstance(k, tuple) else k, n] for k, n in
                               sorted(scene.unknown.items(), key=lambda kv: -kv[1])[:5]]},
    }
    datadir.write_json(_scene_record_path(out, record.scene_id), result)
    return result


def _refuse_unknown_colours(results: list[dict], spec: DatasetSpec) -> None:
    """Stop at the first scene whose mask has more than :data:`UNKNOWN_COLOUR_LIMIT` of its
    pixels outside the palette (see ``build_datadir``'s ``ignore_unknown``)."""
    for result in results:
        unknown = result["unknown"]
        total = unknown.get("label_pixels") or 0  # records of older runs lack it: not checked
        if not total or unknown["pixels"] / total <= UNKNOWN_COLOUR_LIMIT:
            continue
        top = ", ".join(f"{tuple(v) if isinstance(v, list) else v} ({n / total:.0%})"
                        for v, n in unknown["values"][:3])
        palette = ", ".join(f"{name} {tuple(colour)}"
                            for name, colour in zip(spec.classes, spec.palette, strict=False))
        raise CtfaError(
            f"{unknown['file']}: {unknown['pixels'] / total:.0%} of the label pixels of scene "
            f"{result['scene_id']} are in no class (most frequent: {top}; the palette: "
            f"{palette}); a wrong palette or channel order? Fix the masks or the palette, or "
            "pass --ignore-unknown-colours to make them ignore (255)")


def _scene_record_path(out: Path, scene_id: str) -> Path:
    return Path(out) / datadir.STATE_DIR / "scenes" / f"{scene_id}.json"


def _reusable(out: Path, scene_id: str, fingerprint: dict) -> dict | None:
    path = _scene_record_path(out, scene_id)
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if result.get("fingerprint") != fingerprint:
        return None
    for chip in result["chips"]:
        image_rel, _ = datadir.chip_relpaths(result["split"], chip["chip_id"])
        if not (out / image_rel).is_file() or (chip["mask"] and not (out / chip["mask"]).is_file()):
            return None
    return result


# --- the whole DATA_DIR ------------------------------------------------------------------------


def build_datadir(scenes: list[SceneRecord], spec: DatasetSpec, out: Path, *,
                  tile: int | None = None, stride: int | None = None, workers: int = 0,
                  overwrite: bool = False, source: str = "",
                  tagger: Callable[[geopandas.GeoDataFrame], list[tuple[int, ...]]] | None = None,
                  ignore_unknown: bool = False) -> PrepareSummary:
    """Tile ``scenes`` into the DATA_DIR ``out`` (chips, ``chips.gpkg``, ``dataset.yaml``).

    Args:
        scenes: the scenes, each with its split; scene ids must be unique.
        spec: the dataset spec (classes, palette, bands …).
        out: the DATA_DIR folder.
        tile: chip size in pixels; None: ``spec.tile_size``.
        stride: step between chips; None: the tile when ``tile`` is given, else ``spec.stride``.
        workers: worker processes (one scene per task); 0 tiles in this process.
        overwrite: rebuild ``out`` instead of refusing a folder that holds something else or a
            DATA_DIR prepared with other settings.
        source: where the scenes came from (a path or a description), stored in dataset.yaml.
        tagger: for chips whose scene has neither mask nor tags: called once with the
            GeoDataFrame of those chips (chips.gpkg columns, footprints in the index CRS) and
            returns one tuple of class indices per row.
        ignore_unknown: accept masks with more than :data:`UNKNOWN_COLOUR_LIMIT` of their
            pixels in colours (or values) outside the palette, mapping them to ignore; without
            it such a scene stops ``prepare`` (a wrong palette or channel order looks like
            this), after tiling, so that a rerun with it reuses the tiles.

    Returns:
        The :class:`PrepareSummary`.

    Raises:
        CtfaError: a file is missing or unreadable, sizes or bands do not match, the output is
            refused (see :func:`~ctfa_cli.datasets.datadir.claim_output`), labels are out of
            range, or a mask has too many unknown colours (see ``ignore_unknown``).
        CtfaUsageError: no scenes, duplicate scene ids, or an invalid tile/stride.
    """
    out = Path(out)
    if not scenes:
        raise CtfaUsageError("no scenes to prepare; check the source folder")
    ids = [s.scene_id for s in scenes]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise CtfaUsageError(f"duplicate scene ids: {', '.join(duplicates)}")
    unsafe = [name for s in scenes for name in (s.scene_id, s.split)
              if not SAFE_NAME.fullmatch(name)]
    if unsafe:  # they become file and folder names
        raise CtfaUsageError(f"scene ids and splits may only use letters, digits, '.', '_' and "
                             f"'-': {', '.join(map(repr, unsafe[:3]))}")
    tile, stride = resolve_tiling(spec, tile, stride)
    fingerprints = {s.scene_id: _scene_fingerprint(s, spec, tile, stride) for s in scenes}
    inputs = [p for s in scenes for p in (s.image, s.label, *s.extra_bands) if p is not None]
    datadir.claim_output(out, {"dataset": spec.name, "source": source, "tile": tile,
                               "stride": stride}, overwrite=overwrite, keep=inputs)

    results: dict[str, dict] = {}
    todo = []
    for record in scenes:
        reused = _reusable(out, record.scene_id, fingerprints[record.scene_id])
        if reused is not None:
            results[record.scene_id] = reused
        else:
            todo.append(record)
    reused_count = len(results)
    if reused_count:
        log.info("%s: reusing the chips of %d finished scene(s)", out, reused_count)
    if todo:
        # until this run ends, the folder is an unfinished DATA_DIR that no later verb trusts
        (out / datadir.DATASET_YAML).unlink(missing_ok=True)
    with progress_bar("tiling scenes", len(scenes), completed=reused_count) as advance:
        args = [(r, spec, out, tile, stride, fingerprints[r.scene_id]) for r in todo]
        if workers > 0 and len(todo) > 1:
            # spawn: workers must not inherit the progress thread's locks from a fork
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                futures = [pool.submit(_tile_scene, *a) for a in args]
                try:
                    for future in as_completed(futures):
                        result = future.result()
                        results[result["scene_id"]] = result
                        advance()
                except BaseException:
                    pool.shutdown(cancel_futures=True)
                    raise
        else:
            for a in args:
                result = _tile_scene(*a)
                results[result["scene_id"]] = result
                advance()

    ordered = [results[s.scene_id] for s in scenes]
    for result in ordered:
        if result["unknown"]["pixels"]:
            log.warning("%s: %d pixels of unknown colours/values became ignore (most common: %s)",
                        result["unknown"]["file"], result["unknown"]["pixels"],
                        ", ".join(f"{v} ×{n}" for v, n in result["unknown"]["values"]))
    if not ignore_unknown:
        _refuse_unknown_colours(ordered, spec)
    chips = _chips_frame(ordered, spec)
    _apply_tagger(chips, spec, tagger)
    for k in spec.foreground_classes:  # one boolean per label, handy for filtering in QGIS
        chips[f"has_{spec.classes[k]}"] = [k in datadir.parse_labels(v) for v in chips["labels"]]
    used_spec = spec.model_copy(update={"tile_size": tile, "stride": stride})
    datadir.write_chips_index(out, chips)
    summary, meta = _describe(ordered, chips, used_spec, out, source, reused_count, scenes)
    expected = set(chips["image"]) | {m for m in chips["mask"] if m}
    removed = datadir.remove_stale_files(out, expected)
    if removed:
        log.info("%s: removed %d stale chip file(s) of an earlier run", out, removed)
    _remove_stale_records(out, set(ids))
    from ctfa_cli.stac import write_datadir_collection  # DATA_DIR/stac/: one Item per scene

    chips_per_scene = {str(k): int(v) for k, v in chips["scene_id"].value_counts().items()}
    write_datadir_collection(out, scenes, used_spec, chips_per_scene)
    datadir.write_dataset_yaml(out, meta)
    return summary


def _chips_frame(results: list[dict], spec: DatasetSpec) -> geopandas.GeoDataFrame:
    # geopandas is imported here, not at module level: worker processes never need it
    import geopandas
    import pandas
    from shapely.geometry import Polygon

    crs_values = [r["crs"] for r in results]
    georeferenced = [c is not None for c in crs_values]
    if any(georeferenced) and not all(georeferenced):
        plain = [r["scene_id"] for r in results if r["crs"] is None][:3]
        raise CtfaError(f"scenes mix georeferenced and non-georeferenced images (e.g. "
                        f"{', '.join(plain)} have no CRS); prepare them in separate DATA_DIRs")
    # One GeoPackage layer has one CRS: footprints of scenes in another CRS are reprojected to
    # the most common one (their chip rasters keep their own CRS).
    target = max(set(crs_values), key=crs_values.count) if all(georeferenced) else None
    frames = []
    for result in results:
        rows = []
        for chip in result["chips"]:
            image_rel, _ = datadir.chip_relpaths(result["split"], chip["chip_id"])
            labels = chip["labels"]
            rows.append({"chip_id": chip["chip_id"], "scene_id": result["scene_id"],
                         "split": result["split"], "row_off": chip["row_off"],
                         "col_off": chip["col_off"], "height": chip["height"],
                         "width": chip["width"],
                         "labels": None if labels is None else datadir.format_labels(labels),
                         "image": image_rel, "mask": chip["mask"],
                         "geometry": Polygon(chip["footprint"])})
        frame = geopandas.GeoDataFrame(rows, geometry="geometry", crs=result["crs"])
        frames.append(frame.to_crs(target) if target is not None and result["crs"] != target
                      else frame)
    return geopandas.GeoDataFrame(pandas.concat(frames, ignore_index=True), geometry="geometry",
                                  crs=target)


def _apply_tagger(chips: geopandas.GeoDataFrame, spec: DatasetSpec, tagger) -> None:
    untagged = chips["labels"].isna()
    if untagged.any() and tagger is not None:
        tags = tagger(chips[untagged].copy())
        if len(tags) != int(untagged.sum()):
            raise ValueError(f"tagger returned {len(tags)} label tuples for "
                             f"{int(untagged.sum())} chips")
        chips.loc[untagged, "labels"] = [datadir.format_labels(t) for t in tags]
    elif untagged.any():
        scenes = sorted(set(chips.loc[untagged, "scene_id"]))
        log.warning("%d chips of %d scene(s) (e.g. %s) have no mask and no tags: no image-level "
                    "label", int(untagged.sum()), len(scenes), scenes[0])
    chips["labels"] = chips["labels"].fillna("")
    background = {0} if spec.has_background else set()
    cleaned = []
    for chip_name, text in zip(chips["chip_id"], chips["labels"], strict=True):
        labels = set(datadir.parse_labels(text))
        bad = [k for k in labels if not 0 <= k < spec.num_classes]
        if bad:
            raise CtfaError(f"chip {chip_name}: image-level label(s) {bad} outside the "
                            f"{spec.num_classes} classes of {spec.name}; fix the tags")
        cleaned.append(datadir.format_labels(labels - background))
    chips["labels"] = cleaned


def _describe(results: list[dict], chips: geopandas.GeoDataFrame, spec: DatasetSpec, out: Path,
              source: str, reused: int, records: list[SceneRecord]
              ) -> tuple[PrepareSummary, dict[str, Any]]:
    """Statistics actually computed from the chips, for the summary and ``dataset.yaml``."""
    splits = list(dict.fromkeys(r["split"] for r in results))
    scenes_per_split = {s: sum(r["split"] == s for r in results) for s in splits}
    chips_per_split = {s: int((chips["split"] == s).sum()) for s in splits}

    # per-band mean/std of pixel/255 over the train chips (all chips when there is no train split)
    stats_split = "train" if "train" in splits else None
    total = np.zeros(spec.in_chans)
    squares = np.zeros(spec.in_chans)
    pixels = 0
    class_pixels = {s: np.zeros(spec.num_classes, np.int64) for s in splits}
    for result in results:
        for chip in result["chips"]:
            if chip["class_pixels"] is not None:
                class_pixels[result["split"]] += np.asarray(chip["class_pixels"])
            if stats_split in (None, result["split"]):
                total += chip["band_sum"]
                squares += chip["band_sqsum"]
                pixels += chip["pixels"]
    mean = total / pixels
    std = np.sqrt(np.maximum(squares / pixels - mean ** 2, 0.0))

    def shares(counts: np.ndarray) -> dict[str, float]:
        n = counts.sum()
        return {c: round(float(v / n), 6) for c, v in zip(spec.classes, counts, strict=True)} \
            if n else {}

    label_chips = {
        s: {spec.classes[k]: int(chips.loc[chips["split"] == s, f"has_{spec.classes[k]}"].sum())
            for k in spec.foreground_classes} for s in splits}
    unknown = {r["unknown"]["file"]: r["unknown"]["pixels"] for r in results
               if r["unknown"]["pixels"]}
    stretched = {r["scene_id"]: [list(b) for b in r["stretch"]] for r in results if r["stretch"]}

    summary = PrepareSummary(
        out=out, scenes=scenes_per_split, chips=chips_per_split,
        class_frequency=shares(sum(class_pixels.values())), label_chips=label_chips,
        unknown_colours=unknown, reused_scenes=reused, stretched_scenes=list(stretched))

    def rel(path: Path | None) -> str | None:
        if path is None:
            return None
        path = Path(path).resolve()
        root = out.resolve()
        return path.relative_to(root).as_posix() if root in path.parents else str(path)

    meta: dict[str, Any] = {
        "ctfa_version": __version__,
        "spec": spec.with_measured_statistics(mean / 255, std / 255).model_dump(mode="json"),
        "source": source,
        "tile_size": spec.tile_size,
        "stride": spec.stride,
        "crs": chips.crs.to_wkt() if chips.crs is not None else None,
        "statistics": {
            "mean": [round(float(v) / 255, 6) for v in mean],
            "std": [round(float(v) / 255, 6) for v in std],
            "computed_over": f"{stats_split or 'all'} chips, pixel/255, per band",
        },
        "chips": chips_per_split,
        "scenes_per_split": scenes_per_split,
        "class_pixel_frequency": {s: shares(class_pixels[s]) for s in splits},
        "chips_per_label": label_chips,
        "scenes": [{"id": r.scene_id, "split": r.split, "image": rel(r.image),
                    "label": rel(r.label)} for r in records],
    }
    if stretched:
        meta["uint8_stretch"] = {
            "method": "non-uint8 bands: linear per-scene stretch between the 2nd and 98th "
                      "percentiles of each band ([low, high] per band; uint8 bands as is)",
            "scenes": stretched}
    if unknown:
        meta["unknown_colour_pixels"] = unknown
    return summary, meta


def _remove_stale_records(out: Path, scene_ids: set[str]) -> None:
    folder = Path(out) / datadir.STATE_DIR / "scenes"
    for path in folder.glob("*.json"):
        if path.stem not in scene_ids:
            path.unlink()
