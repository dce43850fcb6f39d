"""Polygons per class from a written class raster, built block row by block row.

The class raster is read one block row (all columns) at a time and polygonised with
:func:`rasterio.features.shapes` (4-connectivity, nodata left out) in pixel coordinates, where
coordinates are exact integers. A polygon that touches the bottom edge of its block row may
continue below: it stays *open* and is unioned (per class, :func:`shapely.union_all`) with the
polygons of the next block row that touch the shared edge; every other polygon is final and is
queued and appended to the file in batches. Only one block row, the open polygons and one
batch are ever in memory.

Final polygons are mapped to the scene CRS with the raster's affine transform (rotated ones
included), optionally simplified and dropped below ``min_area`` (CRS units squared).
Attributes: ``class_id``, ``class_name``, ``area`` (CRS units squared, after simplification).
The format follows the extension: ``.gpkg``, ``.geojson``/``.json``, ``.fgb``.

Simplification (``simplify``, CRS units) treats the polygons of one written batch as a coverage
(:func:`shapely.coverage_simplify`, Visvalingam–Whyatt: the tolerance is roughly the square
root of the area of the triangles removed), so neighbouring polygons keep sharing their edges:
no gaps and no overlaps (an edge that moves gives area to one side and takes it from the
other). Only edges shared inside the batch are simplified; the edges along nodata and the scene
border, and those shared with a polygon written in another batch, keep their pixel steps, so
batches also fit together. The polygons are split at every pixel corner first, since the
coverage algorithm needs the two sides of a shared edge to have the same vertices, which the
traced rings do not always have; the split points left on straight edges are removed again.
This runs in pixel coordinates, where those points are exact, with the tolerance divided by
the square root of the pixel area (areas scale by that under any affine map, so the tolerance
converts exactly, whatever the rotation or shear).
"""

from __future__ import annotations

import logging
import warnings
from collections import defaultdict
from pathlib import Path

import geopandas
import numpy as np
import pandas
import pyogrio
import rasterio
import rasterio.features
import shapely
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window
from shapely.geometry import shape

from ctfa_cli.config import DatasetSpec
from ctfa_cli.errors import CtfaUsageError
from ctfa_cli.inference.writers import CLASS_NODATA
from ctfa_cli.io import atomic_path

log = logging.getLogger("ctfa.inference.vector")

VECTOR_DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON",
                  ".fgb": "FlatGeobuf"}
BLOCK_ROWS = 512
# Final polygons are appended to the file in batches of about this many (bounded memory, few
# file openings).
FLUSH_POLYGONS = 20_000


def vector_driver(path: Path) -> str:
    """OGR driver for an output path, chosen by its extension.

    Raises:
        CtfaUsageError: an extension other than .gpkg, .geojson, .json or .fgb.
    """
    driver = VECTOR_DRIVERS.get(Path(path).suffix.lower())
    if driver is None:
        raise CtfaUsageError(f"{path}: unknown vector format; use a .gpkg, .geojson or .fgb "
                             "file name")
    return driver


def polygonize(class_raster: Path, out: Path, spec: DatasetSpec, *, simplify: float = 0.0,
               min_area: float = 0.0, block_rows: int = BLOCK_ROWS) -> int:
    """Write the polygons of every class of ``class_raster`` to ``out`` (atomically).

    Args:
        class_raster: single-band uint8 raster of class indices, nodata 255.
        out: output vector file; the driver follows the extension.
        spec: class names (``class_name`` attribute).
        simplify: simplification tolerance in CRS units (0: none).
        min_area: polygons smaller than this, in CRS units squared, are dropped.
        block_rows: rows polygonised at a time.

    Returns:
        The number of polygons written.

    Raises:
        CtfaUsageError: unknown vector extension.
    """
    driver = vector_driver(out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        src = rasterio.open(class_raster)
    with src, atomic_path(out) as tmp:
        sink = _PolygonSink(tmp, driver, out.stem, spec, src.crs, src.transform,
                            simplify=simplify, min_area=min_area)
        open_polygons: dict[int, list[shapely.Polygon]] = defaultdict(list)
        for top in range(0, src.height, block_rows):
            bottom = min(top + block_rows, src.height)
            data = src.read(1, window=Window(0, top, src.width, bottom - top))
            new = defaultdict(list)
            for geometry, value in rasterio.features.shapes(
                    data, mask=data != CLASS_NODATA, transform=rasterio.Affine.translation(0, top)):
                new[int(value)].append(shape(geometry))
            for class_id in sorted(set(new) | set(open_polygons)):
                polygons = _join_at_edge(open_polygons.pop(class_id, []), new[class_id], top)
                if bottom < src.height:  # polygons reaching the bottom edge may continue below
                    open_polygons[class_id] = [p for p in polygons if p.bounds[3] == bottom]
                    polygons = [p for p in polygons if p.bounds[3] != bottom]
                sink.add(class_id, polygons)
            if sink.pending >= FLUSH_POLYGONS:
                sink.flush()
        sink.flush()
    log.info("%s: %d polygons", out, sink.written)
    return sink.written


def _join_at_edge(above: list[shapely.Polygon], below: list[shapely.Polygon], edge: int
                  ) -> list[shapely.Polygon]:
    """Union the open polygons of the rows above with the new ones touching the row ``edge``."""
    if not above:
        return below
    touching = [p for p in below if p.bounds[1] == edge]
    apart = [p for p in below if p.bounds[1] != edge]
    merged = shapely.get_parts(shapely.union_all(above + touching)).tolist()
    return merged + apart


class _PolygonSink:
    """Maps pixel-space polygons to the CRS, filters them and appends them to the file."""

    def __init__(self, path: Path, driver: str, layer: str, spec: DatasetSpec, crs, transform,
                 *, simplify: float, min_area: float) -> None:
        self.path, self.driver, self.layer, self.spec = path, driver, layer, spec
        self.crs, self.simplify, self.min_area = crs, simplify, min_area
        self._linear = np.array([[transform.a, transform.b], [transform.d, transform.e]])
        self._offset = np.array([transform.c, transform.f])
        self._pixel_size = abs(transform.determinant) ** 0.5  # converts the tolerance
        self.written = 0
        self._classes: list[int] = []
        self._polygons: list[shapely.Polygon] = []
        self._started = False

    @property
    def pending(self) -> int:
        """Polygons queued and not yet written."""
        return len(self._polygons)

    def add(self, class_id: int, polygons: list[shapely.Polygon]) -> None:
        """Queue final polygons (pixel coordinates) of one class."""
        self._classes += [class_id] * len(polygons)
        self._polygons += polygons

    def flush(self) -> None:
        """Append the queued polygons; the first call creates the file, even when empty."""
        if self._started and not self._polygons:
            return
        geoms = np.array(self._polygons, dtype=object)
        if self.simplify > 0:
            geoms = _simplify_coverage(geoms, self.simplify / self._pixel_size)
        geoms = shapely.transform(geoms, lambda xy: xy @ self._linear.T + self._offset)
        area = shapely.area(geoms)
        keep = (area >= self.min_area) & ~shapely.is_empty(geoms)
        classes = np.asarray(self._classes, dtype=np.int32)[keep]
        frame = geopandas.GeoDataFrame(
            {"class_id": classes,
             "class_name": pandas.Series([self.spec.classes[c] for c in classes], dtype=object),
             "area": area[keep].astype(np.float64)},
            geometry=geopandas.GeoSeries(geoms[keep], crs=self.crs))
        with warnings.catch_warnings():
            # Without a CRS pyogrio warns at every batch; predict has said it once already.
            warnings.filterwarnings("ignore", message="'crs' was not provided")
            pyogrio.write_dataframe(frame, self.path, layer=self.layer, driver=self.driver,
                                    geometry_type="Polygon", append=self._started)
        self._started = True
        self.written += len(frame)
        self._classes, self._polygons = [], []


def _simplify_coverage(polygons: np.ndarray, tolerance: float) -> np.ndarray:
    """Coverage simplification of polygons in pixel coordinates (see the module docstring).

    Args:
        polygons: object array of polygons whose vertices are pixel corners (integers).
        tolerance: Visvalingam–Whyatt tolerance in pixels (square root of a triangle area).

    Returns:
        The simplified polygons, in the same order.
    """
    split = shapely.segmentize(polygons, 1.0)  # a vertex at every pixel corner
    simplified = shapely.coverage_simplify(split, tolerance, simplify_boundary=False)
    # Tolerance 0 removes only points on a straight line: the split points of kept edges.
    return shapely.simplify(simplified, 0.0)
