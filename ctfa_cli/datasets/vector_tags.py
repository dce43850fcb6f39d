"""Image-level labels of chips from what users actually have: vector features or tag tables.

Both kinds of tagger are called by the tiler with the chips GeoDataFrame (one row per chip:
``chip_id``, ``scene_id``, footprint ``geometry`` in the scene CRS …) and return one label
tuple per row, in row order.

* :class:`VectorTagger` joins the chip footprints with features (OpenStreetMap buildings,
  surveyed points, polygons with a class column) reprojected to the chips' CRS. Polygons give a
  class to a chip when the class's polygons cover at least ``min_cover`` of the chip's area, or
  at least ``min_area`` (CRS units², m² for a projected CRS); points when one lies inside the
  chip; lines when a stretch of positive length lies inside. A chip that no feature reaches
  gets no positive label.
* :class:`TableTagger` reads a table (CSV, GPKG …) with a ``labels`` column and either
  ``chip_id`` (chip-level tags, e.g. a ``chips.gpkg`` tagged by hand in QGIS) or ``scene_id``
  (scene-level tags shared by all chips of a scene).

Labels are written ``building,car`` (class names) or ``1,4`` (class indices). Only foreground
classes become image-level labels: the background class of a spec that has one is dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import shapely

from ctfa_cli.config import DatasetSpec
from ctfa_cli.errors import CtfaError, CtfaUsageError

log = logging.getLogger("ctfa.datasets.vector_tags")

Tagger = Callable[[gpd.GeoDataFrame], list[tuple[int, ...]]]

DEFAULT_MIN_COVER = 0.01


def class_index(value: object, spec: DatasetSpec) -> int | None:
    """Class index of a class name or index (``"building"``, ``"1"``, ``1``); None if unknown."""
    text = str(value).strip()
    if text in spec.classes:
        return spec.classes.index(text)
    if text.lstrip("-").isdigit() and 0 <= int(text) < spec.num_classes:
        return int(text)
    return None


def parse_labels(text: str | None, spec: DatasetSpec, where: str) -> tuple[int, ...]:
    """Parse ``"building,car"`` or ``"1,4"`` into sorted foreground class indices.

    Args:
        text: comma-separated class names or indices; empty or None means no positive label.
        spec: the dataset spec the names refer to.
        where: file and row, for the error message.

    Raises:
        CtfaError: a token is neither a class name nor a class index.
    """
    indices = set()
    for token in (text or "").split(","):
        if not token.strip():
            continue
        index = class_index(token, spec)
        if index is None:
            raise CtfaError(f"{where}: unknown class {token.strip()!r}; use one of "
                            f"{', '.join(spec.classes)} or their indices")
        indices.add(index)
    return tuple(sorted(indices & set(spec.foreground_classes)))


class VectorTagger:
    """Chip labels from a spatial join of chip footprints with classified vector features.

    Args:
        features: features with a CRS and an integer ``class_index`` column.
        min_cover: fraction of a chip's area a class's polygons must cover, in [0, 1].
        min_area: alternatively, area (CRS units²) they must cover; None: not used.
        source: the file the features come from, for messages.

    Raises:
        CtfaUsageError: ``min_cover`` outside [0, 1] or a negative ``min_area``.
    """

    def __init__(self, features: gpd.GeoDataFrame, *, min_cover: float = DEFAULT_MIN_COVER,
                 min_area: float | None = None, source: str = "features") -> None:
        if not 0 <= min_cover <= 1:
            raise CtfaUsageError(f"--min-cover {min_cover}: expected a fraction in [0, 1]")
        if min_area is not None and min_area < 0:
            raise CtfaUsageError(f"--min-area {min_area}: expected an area >= 0")
        # Single parts: a MultiPoint counts point by point, like separate points would.
        self.features = features[["class_index", "geometry"]].explode(index_parts=False)
        self.features = self.features[~self.features.geometry.is_empty].reset_index(drop=True)
        self.min_cover = min_cover
        self.min_area = min_area
        self.source = source

    def __call__(self, chips: gpd.GeoDataFrame) -> list[tuple[int, ...]]:
        """Labels of each chip, in row order.

        Raises:
            CtfaError: the chips have no CRS (scenes not georeferenced).
        """
        if chips.crs is None:
            raise CtfaError(f"{self.source}: the scenes are not georeferenced (no CRS), so "
                            "vector features cannot be placed on them; use a tag table instead")
        footprints = gpd.GeoSeries(chips.geometry.values, crs=chips.crs)
        features = self.features.to_crs(chips.crs)
        chip_pos, feat_pos = features.sindex.query(footprints.values, predicate="intersects")
        chip_geom = footprints.values[chip_pos]
        feat_geom = features.geometry.values[feat_pos]
        classes = features["class_index"].to_numpy()[feat_pos]
        dims = shapely.get_dimensions(feat_geom)
        pieces = shapely.intersection(chip_geom, feat_geom)

        labels: list[set[int]] = [set() for _ in range(len(chips))]
        # Points inside (not on the border shared with the next chip); lines with length inside.
        hits = np.where(dims == 0, shapely.contains(chip_geom, feat_geom),
                        shapely.length(pieces) > 0)
        for chip, cls in zip(chip_pos[(dims < 2) & hits], classes[(dims < 2) & hits],
                             strict=True):
            labels[chip].add(int(cls))

        polygons = dims == 2
        if polygons.any():
            covered = gpd.GeoDataFrame(
                {"chip": chip_pos[polygons], "cls": classes[polygons]},
                geometry=pieces[polygons], crs=chips.crs,
            ).dissolve(by=["chip", "cls"])  # union: overlapping polygons count once
            chip_area = footprints.area.to_numpy()
            for (chip, cls), area in covered.area.items():
                if area > 0 and (area >= self.min_cover * chip_area[chip]
                                 or (self.min_area is not None and area >= self.min_area)):
                    labels[chip].add(int(cls))
        return [tuple(sorted(chip_labels)) for chip_labels in labels]


class TableTagger:
    """Chip labels from a table keyed by ``chip_id`` or ``scene_id``.

    Args:
        key: ``chip_id`` or ``scene_id``: the chips column the table is keyed by.
        labels: labels per key.
        source: the table's file, for messages.
    """

    def __init__(self, key: str, labels: dict[str, tuple[int, ...]], source: str) -> None:
        self.key = key
        self.labels = labels
        self.source = source

    def __call__(self, chips: gpd.GeoDataFrame) -> list[tuple[int, ...]]:
        """Labels of each chip, in row order; chips missing from the table get none.

        Raises:
            CtfaError: no key of the table matches any chip (wrong ids or wrong kind of table).
        """
        keys = chips[self.key].astype(str)
        known = keys.isin(list(self.labels))
        if len(chips) and not known.any():
            raise CtfaError(f"{self.source}: no {self.key} of the table matches the chips "
                            f"(e.g. {keys.iloc[0]!r}); check the ids")
        if not known.all():
            log.warning("%s: %d chips have no row and get no positive label", self.source,
                        int((~known).sum()))
        return [self.labels.get(k, ()) for k in keys]


def load_tagger(
    path: Path,
    spec: DatasetSpec,
    *,
    class_column: str | None = None,
    min_cover: float = DEFAULT_MIN_COVER,
    min_area: float | None = None,
) -> VectorTagger | TableTagger:
    """Build the tagger for ``--tags FILE``.

    With ``class_column`` the file holds vector features (any format geopandas reads) whose
    column gives a class name or index per feature; features without a class are dropped.
    Without it the file is a tag table (see :class:`TableTagger`).

    Raises:
        CtfaError: the file cannot be read, lacks the needed columns or a CRS, or names a class
            that is not in ``spec``.
        CtfaUsageError: invalid ``min_cover`` or ``min_area``.
    """
    path = Path(path)
    if not path.exists():
        raise CtfaError(f"{path}: no such tags file")
    if class_column is None:
        return _load_table(path, spec)
    features = _read(path, ignore_geometry=False)
    if class_column not in features.columns:
        raise CtfaError(f"{path}: no column {class_column!r} (columns: "
                        f"{', '.join(c for c in features.columns if c != 'geometry')}); "
                        "pass the right --class-column")
    if not isinstance(features, gpd.GeoDataFrame) or features.geometry.isna().all():
        raise CtfaError(f"{path}: no geometries; a tag table takes no --class-column")
    if features.crs is None:
        raise CtfaError(f"{path}: the features have no CRS; set one (e.g. ogr2ogr -a_srs)")
    features = features[features[class_column].notna() & features.geometry.notna()]
    indices = features[class_column].map(lambda value: class_index(value, spec))
    unknown = sorted({str(v) for v in features.loc[indices.isna(), class_column]})
    if unknown:
        raise CtfaError(f"{path}: column {class_column!r} holds classes that are not in the "
                        f"spec: {', '.join(unknown[:5])}; use one of {', '.join(spec.classes)}")
    features = features.assign(class_index=indices.astype(int))
    features = features[features["class_index"].isin(spec.foreground_classes)]
    log.info("%s: %d features of %d classes", path, len(features),
             features["class_index"].nunique())
    return VectorTagger(features, min_cover=min_cover, min_area=min_area, source=str(path))


def _load_table(path: Path, spec: DatasetSpec) -> TableTagger:
    table = _read(path, ignore_geometry=True)
    key = next((k for k in ("chip_id", "scene_id") if k in table.columns), None)
    if key is None or "labels" not in table.columns:
        raise CtfaError(f"{path}: a tag table needs a `labels` column and a `chip_id` or "
                        "`scene_id` column; for vector features pass --class-column")
    labels: dict[str, tuple[int, ...]] = {}
    for row, (k, text) in enumerate(zip(table[key], table["labels"], strict=True), start=1):
        k = str(k)
        if k in labels:
            raise CtfaError(f"{path}: {key} {k!r} appears twice; keep one row per {key}")
        missing = text is None or (isinstance(text, float) and np.isnan(text))
        labels[k] = parse_labels(None if missing else str(text), spec, f"{path} row {row}")
    return TableTagger(key, labels, str(path))


def _read(path: Path, *, ignore_geometry: bool):
    try:
        return gpd.read_file(path, ignore_geometry=ignore_geometry)
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as exc:
        raise CtfaError(f"{path}: cannot read it as a table or vector file ({exc})") from exc
