"""The DATA_DIR contract between ``ctfa prepare`` and every later verb: read side and write side.

Layout::

    DATA_DIR/
      dataset.yaml                         format, spec, source, tiling, CRS, computed statistics
      chips.gpkg                           one row per chip, footprint polygon in the scene CRS
      chips/<split>/images/<chip_id>.tif   uint8 [bands, H, W], scene CRS, the chip's own transform
      chips/<split>/masks/<chip_id>.tif    uint8 class indices, ignore index, palette as colours
      scenes/                              whole scenes (``ctfa prepare synthetic`` only)
      .ctfa-prepare/                       prepare state: settings and one record per tiled scene,
                                           so that a re-run reuses finished scenes

``dataset.yaml`` is written last: a folder without it is an unfinished ``prepare``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
import yaml
from pydantic import ValidationError

from ctfa_cli.config import DatasetSpec, validation_message
from ctfa_cli.errors import CtfaError
from ctfa_cli.io import atomic_path, remove_entries

FORMAT = "ctfa-datadir/1"
DATASET_YAML = "dataset.yaml"
CHIPS_GPKG = "chips.gpkg"
CHIPS_DIR = "chips"
SCENES_DIR = "scenes"
STATE_DIR = ".ctfa-prepare"
SETTINGS_JSON = "settings.json"

CHIP_COLUMNS = ("chip_id", "scene_id", "split", "row_off", "col_off", "height", "width",
                "labels", "image", "mask")

if TYPE_CHECKING:
    import geopandas

PREPARE_HINT = "run `ctfa prepare <dataset> … --out {root}` first"


def chip_id(scene_id: str, row_off: int, col_off: int) -> str:
    """Chip name ``<scene_id>_r<row_off>_c<col_off>``; unique across scenes by construction."""
    return f"{scene_id}_r{row_off}_c{col_off}"


def chip_relpaths(split: str, chip: str) -> tuple[str, str]:
    """Image and mask paths of a chip, relative to DATA_DIR (POSIX separators)."""
    return (f"{CHIPS_DIR}/{split}/images/{chip}.tif", f"{CHIPS_DIR}/{split}/masks/{chip}.tif")


def parse_labels(text: str | None) -> list[int]:
    """``"1,4"`` → ``[1, 4]``; ``""`` or None → ``[]``."""
    return [int(v) for v in text.split(",") if v.strip()] if text else []


def format_labels(labels: Iterable[int]) -> str:
    """``[4, 1]`` → ``"1,4"`` (sorted, unique)."""
    return ",".join(str(v) for v in sorted(set(labels)))


@dataclass
class DataDir:
    """A prepared DATA_DIR opened for reading.

    Attributes:
        root: the DATA_DIR folder.
        spec: the dataset spec the chips were made with (``tile_size``/``stride`` as used).
        meta: the rest of ``dataset.yaml`` (source, crs, statistics, chips per split, scenes …).
        chips: one row per chip: chip_id, scene_id, split, row_off, col_off, height, width,
            labels (``"1,4"``), image and mask (paths relative to ``root``; mask None when the
            scene had no mask), ``has_<class>`` booleans and the footprint geometry (scene CRS,
            or pixel coordinates without CRS for non-georeferenced scenes).
    """

    root: Path
    spec: DatasetSpec
    meta: dict
    chips: geopandas.GeoDataFrame

    @classmethod
    def open(cls, root: Path) -> DataDir:
        """Open ``root`` and check that it is a complete DATA_DIR.

        Raises:
            CtfaError: the folder, ``dataset.yaml`` or ``chips.gpkg`` is missing or corrupt; the
                message names the file and says which ``ctfa prepare`` to run.
        """
        root = Path(root)
        hint = PREPARE_HINT.format(root=root)
        if not root.is_dir():
            raise CtfaError(f"{root}: no such DATA_DIR; {hint}")
        yaml_path = root / DATASET_YAML
        if not yaml_path.is_file():
            if (root / STATE_DIR).is_dir():
                raise CtfaError(f"{root}: unfinished DATA_DIR (an earlier `ctfa prepare` stopped "
                                "before the end); run the same `ctfa prepare` command again")
            raise CtfaError(f"{root}: not a DATA_DIR (no {DATASET_YAML}); {hint}")
        meta = _read_dataset_yaml(yaml_path)
        try:
            spec = DatasetSpec(**meta.pop("spec"))
        except (ValidationError, TypeError) as exc:
            detail = validation_message(exc) if isinstance(exc, ValidationError) else exc
            raise CtfaError(f"{yaml_path}: invalid spec ({detail}); rebuild with "
                            "`ctfa prepare … --overwrite`") from exc
        if spec.unmeasured_bands:
            raise CtfaError(f"{yaml_path}: no mean/std for band(s) "
                            f"{', '.join(spec.unmeasured_bands)}; rebuild with "
                            "`ctfa prepare … --overwrite`")
        gpkg = root / CHIPS_GPKG
        if not gpkg.is_file():
            raise CtfaError(f"{gpkg}: missing chip index; rebuild with `ctfa prepare … "
                            "--overwrite`")
        import geopandas  # imported lazily: tiling workers use this module without it

        try:
            chips = geopandas.read_file(gpkg)
        except Exception as exc:  # pyogrio raises several DataSourceError/DataLayerError kinds
            raise CtfaError(f"{gpkg}: unreadable chip index ({_one_line(exc)}); rebuild with "
                            "`ctfa prepare … --overwrite`") from exc
        missing = [c for c in CHIP_COLUMNS if c not in chips.columns]
        if missing:
            raise CtfaError(f"{gpkg}: columns {', '.join(missing)} missing; rebuild with "
                            "`ctfa prepare … --overwrite`")
        chips["labels"] = chips["labels"].fillna("")
        chips["mask"] = chips["mask"].astype(object).where(chips["mask"].notna(), None)
        return cls(root=root, spec=spec, meta=meta, chips=chips)

    @property
    def splits(self) -> list[str]:
        """Names of the splits that hold chips, in first-seen order."""
        return list(dict.fromkeys(self.chips["split"]))

    def split(self, name: str) -> geopandas.GeoDataFrame:
        """Rows of the chips of split ``name`` (index reset).

        Raises:
            CtfaError: the split holds no chip; the message lists the splits present.
        """
        rows = self.chips[self.chips["split"] == name]
        if rows.empty:
            raise CtfaError(f"{self.root}: no chips in split {name!r}; splits present: "
                            f"{', '.join(self.splits) or 'none'}")
        return rows.reset_index(drop=True)

    def image_path(self, row) -> Path:
        """Absolute path of a chip's image GeoTIFF."""
        return self.root / row["image"]

    def mask_path(self, row) -> Path | None:
        """Absolute path of a chip's mask GeoTIFF, or None when its scene had no mask."""
        return self.root / row["mask"] if row["mask"] else None

    def labels(self, row) -> list[int]:
        """Image-level labels of a chip: class indices, background and ignore excluded."""
        return parse_labels(row["labels"])

    def multi_hot(self, row) -> np.ndarray:
        """Image-level labels as the classifier target: float32 ``[spec.num_cam_classes]``.

        With a background class (``spec.has_background``), class ``k`` sets slot ``k-1``;
        without one (DeepGlobe), class ``k`` sets slot ``k``.
        """
        target = np.zeros(self.spec.num_cam_classes, dtype=np.float32)
        shift = 1 if self.spec.has_background else 0
        for k in self.labels(row):
            if k >= shift:
                target[k - shift] = 1.0
        return target

    def read_chip(self, row) -> tuple[np.ndarray, np.ndarray | None]:
        """Read a chip.

        Returns:
            ``(image, mask)``: image uint8 ``[bands, H, W]`` in ``spec.bands`` order; mask uint8
            ``[H, W]`` of class indices with ``spec.ignore_index``, or None without a mask.

        Raises:
            CtfaError: a chip file is missing or unreadable.
        """
        image = _read_raster(self.image_path(row))
        mask_path = self.mask_path(row)
        mask = _read_raster(mask_path)[0] if mask_path is not None else None
        return image, mask

    def read_image(self, row) -> np.ndarray:
        """Read a chip's image only (training reads no mask): uint8 ``[bands, H, W]``.

        Raises:
            CtfaError: the chip file is missing or unreadable.
        """
        return _read_raster(self.image_path(row))

    def scene_paths(self, split: str | None = None) -> list[tuple[Path, Path | None]]:
        """Whole scenes stored inside DATA_DIR (``scenes/``, written by ``prepare synthetic``).

        Args:
            split: only scenes of this split; None: all of them.

        Returns:
            ``(image, label)`` absolute paths in scene order; label None for unlabelled scenes.

        Raises:
            CtfaError: DATA_DIR stores no whole scene (of that split).
        """
        found = []
        for scene in self.meta.get("scenes", []):
            if not scene["image"].startswith(f"{SCENES_DIR}/"):
                continue  # raw benchmark scenes stay where they were; only stored ones count
            if split is None or scene["split"] == split:
                label = self.root / scene["label"] if scene.get("label") else None
                found.append((self.root / scene["image"], label))
        if not found:
            where = f" in split {split!r}" if split else ""
            raise CtfaError(f"{self.root}: no whole scenes stored{where} (only `ctfa prepare "
                            "synthetic` stores them); pass scene files to `ctfa predict` instead")
        return found


def _read_dataset_yaml(path: Path) -> dict[str, Any]:
    fix = "rebuild with `ctfa prepare … --overwrite`"
    try:
        meta = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CtfaError(f"{path}: unreadable ({exc.__class__.__name__}); {fix}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "spec" not in meta:
        raise CtfaError(f"{path}: not a {FORMAT} description; {fix}")
    return meta


def _read_raster(path: Path) -> np.ndarray:
    try:
        with rasterio.open(path) as src:
            return src.read()
    except rasterio.errors.RasterioIOError as exc:
        raise CtfaError(f"{path}: missing or unreadable chip ({_one_line(exc)}); rebuild with "
                        "`ctfa prepare … --overwrite`") from exc


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


# --- write side --------------------------------------------------------------------------------


def is_datadir(path: Path) -> bool:
    """True when ``path`` holds a DATA_DIR, finished (``dataset.yaml``) or in progress."""
    path = Path(path)
    if (path / STATE_DIR).is_dir():
        return True
    try:
        meta = yaml.safe_load((path / DATASET_YAML).read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def claim_output(out: Path, settings: dict[str, Any], *, overwrite: bool,
                 keep: Iterable[Path] = ()) -> None:
    """Make ``out`` ready to receive a DATA_DIR built with ``settings``.

    * a missing or empty folder is created/used;
    * a DATA_DIR built with the same ``settings`` is continued (finished scenes are reused);
    * a DATA_DIR built with other settings, or a folder holding anything else, is refused
      unless ``overwrite``;
    * ``overwrite`` removes the DATA_DIR entries (``dataset.yaml``, ``chips.gpkg``, ``chips/``,
      the prepare state, and ``scenes/`` of a former DATA_DIR) but never other files, and never
      an entry that contains one of ``keep`` (the inputs of this run).

    Args:
        out: the DATA_DIR folder.
        settings: JSON-serialisable settings that decide the chip grid (dataset, source, tile,
            stride); stored in ``.ctfa-prepare/settings.json``.
        overwrite: rebuild instead of refusing.
        keep: paths that must survive an overwrite.

    Raises:
        CtfaError: ``out`` is a file, holds something else, or was prepared with other settings,
            and ``overwrite`` is False.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CtfaError(f"{out} is a file; --out must be a folder")
    ours = out.is_dir() and is_datadir(out)
    if out.is_dir() and any(out.iterdir()) and not ours and not overwrite:
        raise CtfaError(f"{out} holds files that are not a ctfa DATA_DIR; choose a new or empty "
                        "folder, or pass --overwrite")
    settings_path = out / STATE_DIR / SETTINGS_JSON
    if ours and not overwrite and settings_path.is_file():
        previous = json.loads(settings_path.read_text())
        changed = [f"{k} {previous.get(k)!r} → {v!r}" for k, v in settings.items()
                   if previous.get(k) != v]
        if changed:
            raise CtfaError(f"{out} was prepared with other settings ({'; '.join(changed)}); "
                            "pass --overwrite to rebuild it")
    if overwrite:
        owned = [DATASET_YAML, CHIPS_GPKG, CHIPS_DIR, STATE_DIR] + ([SCENES_DIR] if ours else [])
        remove_entries(out, owned, keep=keep)
    settings_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(settings_path, settings)


def write_json(path: Path, data: Any) -> None:
    """Write JSON through a temporary name, so that a reader never sees half a file."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


def write_chips_index(out: Path, chips: geopandas.GeoDataFrame) -> None:
    """Write ``chips.gpkg`` (layer ``chips``) through a temporary name."""
    with atomic_path(Path(out) / CHIPS_GPKG) as tmp:
        chips.to_file(tmp, layer="chips", driver="GPKG")


def write_dataset_yaml(out: Path, meta: dict[str, Any]) -> None:
    """Write ``dataset.yaml`` (``meta`` must hold ``spec`` and the other keys) and so finish
    the DATA_DIR; ``format`` is set here."""
    body = {"format": FORMAT, **meta}
    with atomic_path(Path(out) / DATASET_YAML) as tmp:
        # flow style for leaf lists keeps colours and per-band values on one line each
        tmp.write_text(yaml.safe_dump(body, sort_keys=False, allow_unicode=True,
                                      default_flow_style=None, width=100))


def remove_stale_files(out: Path, expected: set[str]) -> int:
    """Delete files under ``chips/`` that the index does not list (chips of an earlier grid or
    split, temporary files of an interrupted run) and then empty folders.

    Args:
        expected: chip paths relative to ``out`` (POSIX separators) that must stay.

    Returns:
        The number of files deleted.
    """
    root = Path(out) / CHIPS_DIR
    removed = 0
    if not root.is_dir():
        return 0
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            path = Path(dirpath) / name
            if path.relative_to(out).as_posix() not in expected:
                path.unlink()
                removed += 1
        if Path(dirpath) != root and not any(Path(dirpath).iterdir()):
            Path(dirpath).rmdir()
    return removed
