"""STAC records of ctfa's outputs: an Item beside every map, a Collection for every DATA_DIR.

* ``ctfa predict`` writes ``<stem>.stac.json`` beside each class COG
  (:func:`write_prediction_item`): the footprint in WGS84 (edges densified, so a rotated or
  curved footprint stays true); the native grid with the projection extension
  (``proj:code`` or ``proj:wkt2``, ``proj:transform``, ``proj:shape``, ``proj:bbox``); the
  class COG, probabilities and polygons as assets with roles; the classes with names and
  colours (classification extension, ``classification:classes`` on the class COG); and the
  model's provenance (``ctfa:*`` fields, a ``derived_from`` link to the scene).
* ``ctfa prepare`` writes ``DATA_DIR/stac/``: ``collection.json`` and one Item per scene
  (``<scene_id>/<scene_id>.json``), self-contained with relative links
  (:func:`write_datadir_collection`).

Scenes without georeferencing still get an Item, with ``geometry: null`` and no ``bbox`` (STAC
allows both for data that cannot be placed on Earth); only ``proj:shape`` and
``proj:code: null`` describe their grid.

Versions: STAC 1.1 (pystac's default), projection extension v2.0.0, classification extension
v1.1.0 (its class names are free text; v2.0.0 restricts them to ``[0-9A-Za-z_-]``, which
dataset names such as "impervious surfaces" break).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pystac
import rasterio
from pyproj import CRS, Transformer
from shapely.geometry import Polygon, box, mapping

from ctfa_cli import __version__
from ctfa_cli.config import DatasetSpec
from ctfa_cli.io import atomic_path

log = logging.getLogger("ctfa.stac")

PROJECTION_SCHEMA = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
CLASSIFICATION_SCHEMA = "https://stac-extensions.github.io/classification/v1.1.0/schema.json"
STAC_SUFFIX = ".stac.json"
STAC_DIR = "stac"
COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
VECTOR_MEDIA_TYPES = {".gpkg": "application/geopackage+sqlite3",
                      ".geojson": "application/geo+json", ".fgb": "application/vnd.flatgeobuf"}
# Points per footprint edge reprojected to WGS84: a projected rectangle is curved there.
EDGE_POINTS = 16


def class_objects(spec: DatasetSpec) -> list[dict[str, Any]]:
    """``classification:classes`` of a spec: value, name, description and colour per class."""
    return [{"value": i, "name": name, "description": name,
             "color_hint": "{:02X}{:02X}{:02X}".format(*colour)}
            for i, (name, colour) in enumerate(zip(spec.classes, spec.palette, strict=True))]


def grid_fields(crs: Any, transform: rasterio.Affine | None, width: int, height: int
                ) -> tuple[dict[str, Any] | None, list[float] | None, dict[str, Any]]:
    """WGS84 footprint, its bbox and the projection fields of a raster grid.

    Args:
        crs: the raster's CRS (rasterio/pyproj CRS, or anything pyproj reads); None when the
            raster is not georeferenced.
        transform: its geotransform (pixel → CRS); ignored without ``crs``.
        width, height: size in pixels.

    Returns:
        ``(geometry, bbox, proj_fields)``: a GeoJSON Polygon and ``[west, south, east, north]``
        in WGS84 (None, None without a CRS), and the ``proj:*`` fields.
    """
    if crs is None or transform is None:
        return None, None, {"proj:code": None, "proj:shape": [height, width]}
    native = CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    corners = [transform @ xy for xy in ((0, 0), (width, 0), (width, height), (0, height))]
    outline = Polygon(corners)
    proj: dict[str, Any] = {
        "proj:code": None, "proj:shape": [height, width],
        "proj:transform": [transform.a, transform.b, transform.c, transform.d, transform.e,
                           transform.f],
        "proj:bbox": list(outline.bounds),
    }
    authority = native.to_authority()
    if authority is not None:
        proj["proj:code"] = ":".join(authority)
    else:  # a CRS without a code is described in full
        proj["proj:wkt2"] = native.to_wkt()
    to_wgs84 = Transformer.from_crs(native, "EPSG:4326", always_xy=True)
    ring = outline.exterior.segmentize(outline.exterior.length / (4 * EDGE_POINTS))
    lon, lat = to_wgs84.transform(*zip(*ring.coords, strict=True))
    footprint = Polygon(zip(lon, lat, strict=True))
    if not footprint.exterior.is_ccw:  # GeoJSON (RFC 7946) exterior rings run anticlockwise
        footprint = Polygon(footprint.exterior.coords[::-1])
    return mapping(footprint), [float(v) for v in footprint.bounds], proj


def _geojson(geometry: dict[str, Any] | None) -> dict[str, Any] | None:
    """Plain lists (pystac and json want lists, shapely's mapping gives tuples)."""
    return None if geometry is None else json.loads(json.dumps(geometry))


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime: float) -> str:
    from ctfa_cli.inference.onnx_export import file_sha256

    return file_sha256(Path(path))


def model_provenance(predictor: Any) -> dict[str, Any]:
    """``ctfa:*`` provenance fields of a predictor: model file, hash, format, backbone.

    A predictor without a ``source`` file (a test stand-in) gives only ctfa's version.
    """
    fields: dict[str, Any] = {"ctfa:version": __version__}
    source = getattr(predictor, "source", None)
    if source is None:
        return fields
    source = Path(source)
    stat = source.stat()
    fields |= {"ctfa:model": str(source.absolute()),
               "ctfa:model_sha256": _sha256(str(source.absolute()), stat.st_size,
                                            stat.st_mtime)}
    metadata = getattr(predictor, "metadata", None)
    if metadata is not None:  # an ONNX export
        fields |= {"ctfa:model_format": metadata.get("ctfa_format"),
                   "ctfa:backbone": metadata.get("ctfa_backbone"),
                   "ctfa:model_source_sha256": metadata.get("ctfa_source_sha256")}
    else:
        from ctfa_cli.model.bundle import BUNDLE_FORMAT

        model = getattr(predictor, "model", None)
        fields["ctfa:model_format"] = BUNDLE_FORMAT
        if model is not None and hasattr(model, "arch"):
            fields["ctfa:backbone"] = model.arch["backbone"]
    return fields


def _href(target: Path, item_path: Path) -> str:
    """``target`` relative to the folder of ``item_path`` (POSIX separators)."""
    return Path(os.path.relpath(Path(target).absolute(),
                                Path(item_path).absolute().parent)).as_posix()


def prediction_item(result: Any, spec: DatasetSpec, *, crs: Any,
                    transform: rasterio.Affine | None, provenance: dict[str, Any],
                    item_path: Path, created: dt.datetime | None = None) -> pystac.Item:
    """The STAC Item of one predicted scene (see the module docstring).

    Args:
        result: the :class:`~ctfa_cli.inference.predict.SceneResult`.
        spec: the model's dataset spec (classes, palette).
        crs, transform: the output grid (None, None when the scene is not georeferenced).
        provenance: :func:`model_provenance` of the predictor.
        item_path: where the Item will be written (asset hrefs are relative to it).
        created: time stamp of the map (default: now, UTC); it is the Item's ``datetime``
            too, since the acquisition time of the scene is not known to ctfa.
    """
    created = created or dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    geometry, bbox, proj = grid_fields(crs, transform, result.width, result.height)
    properties = {
        **proj, "created": created.isoformat().replace("+00:00", "Z"),
        "ctfa:dataset": spec.name, **provenance,
        "ctfa:class_pixels": dict(result.class_pixels),
        "ctfa:nodata_pixels": result.nodata_pixels,
    }
    item = pystac.Item(id=Path(result.classes).stem, geometry=_geojson(geometry), bbox=bbox,
                       datetime=created, properties=properties,
                       stac_extensions=[PROJECTION_SCHEMA, CLASSIFICATION_SCHEMA])
    item.add_asset("classes", pystac.Asset(
        href=_href(result.classes, item_path), media_type=COG_MEDIA_TYPE,
        title="Classes (uint8, 255 = nodata)", roles=["data", "classification"],
        extra_fields={"classification:classes": class_objects(spec), "nodata": 255}))
    if result.probs is not None:
        item.add_asset("probabilities", pystac.Asset(
            href=_href(result.probs, item_path), media_type=COG_MEDIA_TYPE,
            title="Class probabilities (uint8 0-255 = 0-1, one band per class)",
            roles=["data", "probabilities"], extra_fields={"ctfa:bands": list(spec.classes)}))
    if result.vector is not None:
        item.add_asset("vector", pystac.Asset(
            href=_href(result.vector, item_path),
            media_type=VECTOR_MEDIA_TYPES.get(Path(result.vector).suffix.lower()),
            title="Polygons per class (class_id, class_name)", roles=["data", "vector"]))
    item.add_link(pystac.Link("derived_from", str(Path(result.scene).absolute()),
                              title="input scene"))
    return item


def stac_path(classes: Path) -> Path:
    """``<stem>.stac.json`` beside a class COG."""
    return Path(classes).with_name(f"{Path(classes).stem}{STAC_SUFFIX}")


def write_prediction_item(result: Any, spec: DatasetSpec, *, crs: Any,
                          transform: rasterio.Affine | None, predictor: Any) -> Path:
    """Write :func:`prediction_item` to :func:`stac_path` (temporary name, then renamed)."""
    path = stac_path(result.classes)
    item = prediction_item(result, spec, crs=crs, transform=transform,
                           provenance=model_provenance(predictor), item_path=path)
    _write_json(path, item.to_dict(include_self_link=False, transform_hrefs=False))
    return path


def _write_json(path: Path, body: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(body, indent=1))


def scene_item(record: Any, spec: DatasetSpec, *, chips: int,
               created: dt.datetime) -> pystac.Item:
    """The STAC Item of one prepared scene: its grid, image and mask assets, split and chips.

    Args:
        record: the :class:`~ctfa_cli.datasets.scenes.SceneRecord`.
        spec: the dataset spec.
        chips: number of chips cut from it.
        created: time stamp of the DATA_DIR (the Item's ``datetime``: acquisition times are
            not known to ctfa).
    """
    with rasterio.open(record.image) as src:
        georeferenced = src.crs is not None
        geometry, bbox, proj = grid_fields(src.crs if georeferenced else None, src.transform,
                                           src.width, src.height)
    properties = {**proj, "created": created.isoformat().replace("+00:00", "Z"),
                  "ctfa:dataset": spec.name, "ctfa:split": record.split, "ctfa:chips": chips,
                  "ctfa:version": __version__}
    if record.tags is not None:
        properties["ctfa:tags"] = [spec.classes[k] for k in record.tags]
    item = pystac.Item(id=record.scene_id, geometry=_geojson(geometry), bbox=bbox,
                       datetime=created, properties=properties,
                       stac_extensions=[PROJECTION_SCHEMA])
    item.add_asset("image", pystac.Asset(
        href=str(Path(record.image).absolute()), title="scene", roles=["data"],
        extra_fields={"ctfa:bands": list(spec.bands)}))
    if record.label is not None:
        item.stac_extensions.append(CLASSIFICATION_SCHEMA)
        item.add_asset("label", pystac.Asset(
            href=str(Path(record.label).absolute()), title=f"mask ({record.label_kind})",
            roles=["labels"], extra_fields={"classification:classes": class_objects(spec)}))
    return item


def write_datadir_collection(out: Path, scenes: Sequence[Any], spec: DatasetSpec,
                             chips_per_scene: dict[str, int], *,
                             created: dt.datetime | None = None) -> Path:
    """Write ``out/stac/``: a self-contained Collection of one Item per scene.

    The folder is built under a temporary name beside ``stac/`` and then swapped in, so a
    reader sees the old catalogue or the new one, never half of one. Asset hrefs are relative
    (scenes outside the DATA_DIR too), so the DATA_DIR can move together with its sources.

    Args:
        out: the DATA_DIR.
        scenes: the :class:`~ctfa_cli.datasets.scenes.SceneRecord` list.
        spec: the dataset spec.
        chips_per_scene: chips cut from each scene id.
        created: time stamp (default: now, UTC).

    Returns:
        The path of ``collection.json``.
    """
    out = Path(out)
    created = created or dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    items = [scene_item(r, spec, chips=chips_per_scene.get(r.scene_id, 0), created=created)
             for r in scenes]
    boxes = [box(*item.bbox) for item in items if item.bbox is not None]
    if boxes:
        west, south, east, north = functools.reduce(lambda a, b: a.union(b), boxes).bounds
        spatial = [[west, south, east, north]]
    else:  # no scene is georeferenced: the extent is unknown, so the whole Earth
        spatial = [[-180.0, -90.0, 180.0, 90.0]]
    collection = pystac.Collection(
        id=spec.name, title=f"ctfa DATA_DIR {spec.name}",
        description=f"Scenes tiled by `ctfa prepare` into {out.absolute()} "
                    f"({len(items)} scenes; classes: {', '.join(spec.classes)}).",
        extent=pystac.Extent(pystac.SpatialExtent(spatial),
                             pystac.TemporalExtent([[created, created]])),
        license="other", stac_extensions=[CLASSIFICATION_SCHEMA],
        summaries=pystac.Summaries({"classification:classes": class_objects(spec)}))
    collection.add_asset("chips", pystac.Asset(
        href=str((out / "chips.gpkg").absolute()), media_type=VECTOR_MEDIA_TYPES[".gpkg"],
        title="chip index (one footprint per chip)", roles=["metadata"]))
    collection.add_asset("dataset", pystac.Asset(
        href=str((out / "dataset.yaml").absolute()), media_type="application/yaml",
        title="dataset spec and statistics", roles=["metadata"]))
    for item in items:
        collection.add_item(item)
    final = out / STAC_DIR
    tmp = out / f".tmp-{os.getpid()}-{STAC_DIR}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        collection.normalize_hrefs(str(tmp.absolute()))
        collection.make_all_asset_hrefs_relative()
        collection.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final / "collection.json"
