"""Polygons from the class raster, built block row by block row and merged across seams."""

from __future__ import annotations

import numpy as np
import pyogrio
import pytest
import rasterio
import rasterio.features
import shapely
from rasterio.transform import from_origin

from ctfa_cli.errors import CtfaUsageError
from ctfa_cli.inference.vector import polygonize, vector_driver
from ctfa_cli.inference.writers import CLASS_NODATA, class_writer
from tests.inference.helpers import LOCAL_TM, ROTATED, SPEC, smooth_image


def _class_raster(path, *, height=120, width=90, crs=LOCAL_TM, transform=ROTATED, seed=0):
    """Blobby classes (several polygons per class, with holes) and a nodata corner."""
    image = smooth_image(height, width, bands=1, seed=seed)[0]
    labels = np.digitize(image, [70, 120, 170]).astype(np.uint8)
    labels[:10, -15:] = CLASS_NODATA
    with class_writer(path, SPEC, width=width, height=height, crs=crs,
                      transform=transform) as writer:
        writer.write_rows(0, labels[None])
        writer.commit()
    return labels


def _rasterise(frame, shape, transform):
    return rasterio.features.rasterize(
        zip(frame.geometry, frame.class_id, strict=True), out_shape=shape, transform=transform,
        fill=CLASS_NODATA, dtype="uint8")


@pytest.mark.parametrize("block_rows", [7, 32, 512])
def test_polygons_rasterise_back_to_the_class_raster(tmp_path, block_rows):
    labels = _class_raster(tmp_path / "c.tif")
    out = tmp_path / "p.gpkg"
    count = polygonize(tmp_path / "c.tif", out, SPEC, block_rows=block_rows)
    frame = pyogrio.read_dataframe(out)
    assert len(frame) == count > 0
    assert frame.crs == LOCAL_TM
    assert set(frame.geom_type) == {"Polygon"}
    assert np.array_equal(_rasterise(frame, labels.shape, ROTATED), labels)
    assert frame.class_name.tolist() == [SPEC.classes[c] for c in frame.class_id]
    pixel_area = abs(ROTATED.determinant)
    for class_id in range(SPEC.num_classes):
        area = frame.area[frame.class_id == class_id].sum()
        np.testing.assert_allclose(area, (labels == class_id).sum() * pixel_area, rtol=1e-9)
    np.testing.assert_allclose(frame["area"], frame.area, rtol=1e-9)


def test_block_seams_do_not_split_polygons(tmp_path, monkeypatch):
    monkeypatch.setattr("ctfa_cli.inference.vector.FLUSH_POLYGONS", 3)  # many appends
    labels = _class_raster(tmp_path / "c.tif")
    whole = polygonize(tmp_path / "c.tif", tmp_path / "whole.gpkg", SPEC, block_rows=512)
    blocks = polygonize(tmp_path / "c.tif", tmp_path / "blocks.gpkg", SPEC, block_rows=5)
    assert blocks == whole
    frame = pyogrio.read_dataframe(tmp_path / "blocks.gpkg")
    assert len(frame) == blocks
    assert np.array_equal(_rasterise(frame, labels.shape, ROTATED), labels)


@pytest.mark.parametrize("name,driver", [("p.geojson", "GeoJSON"), ("p.fgb", "FlatGeobuf")])
def test_format_follows_the_extension(tmp_path, name, driver):
    transform = from_origin(500000, 5600000, 0.5, 0.5)
    labels = _class_raster(tmp_path / "c.tif", crs="EPSG:32632", transform=transform)
    polygonize(tmp_path / "c.tif", tmp_path / name, SPEC, block_rows=16)
    assert pyogrio.read_info(tmp_path / name)["driver"] == driver
    frame = pyogrio.read_dataframe(tmp_path / name)
    assert frame.crs.to_epsg() == 32632
    assert np.array_equal(_rasterise(frame, labels.shape, transform), labels)


def test_unknown_extension_is_a_usage_error(tmp_path):
    with pytest.raises(CtfaUsageError, match=r"p\.shp: unknown vector format"):
        vector_driver(tmp_path / "p.shp")


def test_min_area_and_simplify(tmp_path):
    _class_raster(tmp_path / "c.tif")
    polygonize(tmp_path / "c.tif", tmp_path / "all.gpkg", SPEC)
    everything = pyogrio.read_dataframe(tmp_path / "all.gpkg")
    threshold = float(np.median(everything.area))
    polygonize(tmp_path / "c.tif", tmp_path / "big.gpkg", SPEC, min_area=threshold,
               simplify=0.5)
    big = pyogrio.read_dataframe(tmp_path / "big.gpkg")
    assert 0 < len(big) < len(everything)
    assert (big["area"] >= threshold).all()
    vertices = big.geometry.count_coordinates().sum()
    assert vertices < everything[everything.area >= threshold].geometry.count_coordinates().sum()
    assert big.is_valid.all()


@pytest.mark.parametrize("flush_polygons", [3, 20_000])
def test_simplified_polygons_still_tile_the_scene(tmp_path, monkeypatch, flush_polygons):
    # Written in one batch or many: no gaps or overlaps between neighbours, same total area.
    monkeypatch.setattr("ctfa_cli.inference.vector.FLUSH_POLYGONS", flush_polygons)
    labels = _class_raster(tmp_path / "c.tif")
    polygonize(tmp_path / "c.tif", tmp_path / "raw.gpkg", SPEC, block_rows=16)
    polygonize(tmp_path / "c.tif", tmp_path / "s.gpkg", SPEC, block_rows=16, simplify=2.0)
    raw, simple = (pyogrio.read_dataframe(tmp_path / n) for n in ("raw.gpkg", "s.gpkg"))
    assert len(simple) == len(raw)
    assert simple.geometry.count_coordinates().sum() < raw.geometry.count_coordinates().sum()
    assert simple.is_valid.all()
    union = shapely.union_all(simple.geometry.values)
    valid_area = (labels != CLASS_NODATA).sum() * abs(ROTATED.determinant)
    np.testing.assert_allclose(simple.area.sum(), valid_area, rtol=1e-9)
    np.testing.assert_allclose(union.area, valid_area, rtol=1e-9)  # no overlaps


def test_all_nodata_writes_an_empty_layer(tmp_path):
    with class_writer(tmp_path / "c.tif", SPEC, width=20, height=20, crs=LOCAL_TM,
                      transform=ROTATED) as writer:
        writer.write_rows(0, np.full((1, 20, 20), CLASS_NODATA, np.uint8))
        writer.commit()
    assert polygonize(tmp_path / "c.tif", tmp_path / "p.gpkg", SPEC) == 0
    info = pyogrio.read_info(tmp_path / "p.gpkg")
    assert info["features"] == 0 and list(info["fields"]) == ["class_id", "class_name", "area"]
