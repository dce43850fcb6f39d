"""STAC Items of `predict` and the DATA_DIR Collection of `prepare`, validated offline.

pystac's validator fetches extension schemas over the network; here it is given local copies
(tests/data/stac_schemas) and any other fetch fails the test.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from pathlib import Path

import pystac
import pytest
from pyproj import CRS, Transformer
from pystac.validation import JsonSchemaSTACValidator, validate_dict
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin

from ctfa_cli.datasets.registry import get_spec
from ctfa_cli.datasets.tiling import build_datadir
from ctfa_cli.errors import CtfaError
from ctfa_cli.inference.predict import PredictOptions, predict_scene
from ctfa_cli.stac import CLASSIFICATION_SCHEMA, PROJECTION_SCHEMA
from tests.datasets.tiny_scenes import write_scene
from tests.inference.helpers import (
    LOCAL_TM,
    ROTATED,
    LinearPredictor,
    smooth_image,
    write_raster,
)

SCHEMAS = Path(__file__).parent / "data" / "stac_schemas"


@pytest.fixture
def validator(monkeypatch):
    """pystac's JSON-schema validator with the extension schemas from disk, network refused."""

    def no_network(self, href):
        raise AssertionError(f"a test tried to fetch {href}")

    monkeypatch.setattr(pystac.stac_io.DefaultStacIO, "read_text_from_href", no_network)
    checker = JsonSchemaSTACValidator()
    checker.schema_cache[PROJECTION_SCHEMA] = json.loads(
        (SCHEMAS / "projection-v2.0.0.json").read_text())
    checker.schema_cache[CLASSIFICATION_SCHEMA] = json.loads(
        (SCHEMAS / "classification-v1.1.0.json").read_text())
    return checker


def valid(body: dict, validator) -> list[str]:
    """Schema URIs the object validated against (raises on any violation)."""
    return validate_dict(body, validator=validator)


class _Sourced(LinearPredictor):
    def __init__(self, source: Path) -> None:
        super().__init__()
        self.source = source


def _predict(tmp_path, scene, predictor, **options):
    options = PredictOptions(tile=32, overlap=8, progress=False, stac=True, **options)
    return predict_scene(scene, predictor, tmp_path / "maps" / "scene.tif", options=options)


def test_prediction_item_of_a_utm_scene(tmp_path, validator):
    scene = write_raster(tmp_path / "scene.tif", smooth_image(80, 100, seed=2), crs="EPSG:32632",
                         transform=from_origin(500000, 5600000, 0.5, 0.5))
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    result = _predict(tmp_path, scene, _Sourced(model), probs=True, vector="gpkg")
    assert result.stac == tmp_path / "maps" / "scene.stac.json"
    body = json.loads(result.stac.read_text())
    assert set(valid(body, validator)) >= {PROJECTION_SCHEMA, CLASSIFICATION_SCHEMA}
    props = body["properties"]
    assert props["proj:code"] == "EPSG:32632" and props["proj:shape"] == [80, 100]
    assert props["proj:transform"] == [0.5, 0.0, 500000.0, 0.0, -0.5, 5600000.0]
    assert props["proj:bbox"] == [500000.0, 5599960.0, 500050.0, 5600000.0]
    # The corners in WGS84, computed here with pyproj from the UTM corners.
    lon, lat = Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True).transform(
        [500000, 500050, 500050, 500000], [5600000, 5600000, 5599960, 5599960])
    assert body["bbox"] == pytest.approx([min(lon), min(lat), max(lon), max(lat)], abs=1e-9)
    assert body["geometry"]["type"] == "Polygon"
    assert props["ctfa:model"] == str(model.absolute())
    assert props["ctfa:model_sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert sum(props["ctfa:class_pixels"].values()) == 80 * 100
    assets = body["assets"]
    assert assets["classes"]["href"] == "scene.tif"
    assert assets["classes"]["roles"] == ["data", "classification"]
    assert assets["probabilities"]["href"] == "scene_probs.tif"
    assert assets["vector"]["href"] == "scene.gpkg"
    assert assets["vector"]["type"] == "application/geopackage+sqlite3"
    assert assets["classes"]["classification:classes"] == [
        {"value": 0, "name": "background", "description": "background", "color_hint": "000000"},
        {"value": 1, "name": "building", "description": "building", "color_hint": "FF0000"},
        {"value": 2, "name": "tree", "description": "tree", "color_hint": "00FF00"},
        {"value": 3, "name": "water", "description": "water", "color_hint": "0000FF"}]
    (derived,) = [link for link in body["links"] if link["rel"] == "derived_from"]
    assert derived["href"] == str(scene.absolute())
    # An existing Item is not clobbered without --overwrite.
    (tmp_path / "maps" / "scene.tif").unlink()
    with pytest.raises(CtfaError, match=r"scene.stac.json already exists"):
        _predict(tmp_path, scene, _Sourced(model))


def test_prediction_item_of_a_crs_without_code_and_of_a_plain_image(tmp_path, validator):
    scene = write_raster(tmp_path / "scene.tif", smooth_image(40, 48, seed=1), crs=LOCAL_TM,
                         transform=ROTATED)
    body = json.loads(_predict(tmp_path, scene, LinearPredictor()).stac.read_text())
    valid(body, validator)
    assert body["properties"]["proj:code"] is None
    assert CRS.from_wkt(body["properties"]["proj:wkt2"]).equals(CRS.from_wkt(LOCAL_TM.to_wkt()))
    assert body["properties"]["proj:transform"] == [0.4, 0.15, 2000.0, 0.12, -0.4, 9000.0]
    # Rotated grid: the native bbox spans the four transformed corners (computed by hand).
    xs = [2000.0, 2000 + 0.4 * 48, 2000 + 0.4 * 48 + 0.15 * 40, 2000 + 0.15 * 40]
    ys = [9000.0, 9000 + 0.12 * 48, 9000 + 0.12 * 48 - 0.4 * 40, 9000 - 0.4 * 40]
    assert body["properties"]["proj:bbox"] == pytest.approx([min(xs), min(ys), max(xs),
                                                             max(ys)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        plain = write_raster(tmp_path / "plain.png", smooth_image(40, 48, seed=4), driver="PNG")
        out = predict_scene(plain, LinearPredictor(), tmp_path / "plain" / "plain.tif",
                            options=PredictOptions(tile=32, progress=False, stac=True))
    body = json.loads(out.stac.read_text())
    valid(body, validator)
    assert body["geometry"] is None and "bbox" not in body
    assert body["properties"]["proj:code"] is None
    assert body["properties"]["proj:shape"] == [40, 48]
    assert "proj:transform" not in body["properties"]


def test_validator_rejects_a_broken_projection_field(tmp_path, validator):
    # The local projection schema is really applied: proj:shape must hold two integers.
    scene = write_raster(tmp_path / "scene.tif", smooth_image(32, 32), crs="EPSG:32632",
                         transform=from_origin(0, 0, 1, 1))
    body = json.loads(_predict(tmp_path, scene, LinearPredictor()).stac.read_text())
    body["properties"]["proj:shape"] = [32, 32, 3]
    with pytest.raises(pystac.errors.STACValidationError):
        valid(body, validator)


def _items(out: Path, collection: dict) -> dict[str, tuple[Path, dict]]:
    items = {}
    for link in collection["links"]:
        if link["rel"] == "item":
            path = (out / "stac" / link["href"]).resolve()
            items[path.stem] = (path, json.loads(path.read_text()))
    return items


def test_prepare_writes_a_collection_with_one_item_per_scene(tmp_path, validator):
    spec = get_spec("synthetic")
    scenes = [write_scene(tmp_path / "raw", "a", height=64, width=96, seed=1),
              write_scene(tmp_path / "raw", "b", height=64, width=64, seed=2, split="val")]
    out = tmp_path / "data"
    build_datadir([s.record for s in scenes], spec, out, tile=32)
    collection = json.loads((out / "stac" / "collection.json").read_text())
    valid(collection, validator)
    items = _items(out, collection)
    assert sorted(items) == ["a", "b"]
    for name, (path, item) in items.items():
        valid(item, validator)
        for asset in item["assets"].values():  # relative hrefs that resolve
            assert (path.parent / asset["href"]).resolve().is_file(), (name, asset["href"])
    a = items["a"][1]
    assert a["properties"]["ctfa:split"] == "train" and a["properties"]["ctfa:chips"] == 6
    assert a["properties"]["proj:code"] == "EPSG:32633"
    assert a["properties"]["proj:shape"] == [64, 96]
    assert a["properties"]["proj:transform"] == [0.5, 0.0, 366000.0, 0.0, -0.5, 5808000.0]
    assert a["assets"]["label"]["roles"] == ["labels"]
    assert items["b"][1]["properties"]["ctfa:split"] == "val"
    assert items["b"][1]["properties"]["ctfa:chips"] == 4
    # Collection extent: both scenes share the origin; a is 48 m × 32 m, b 32 m × 32 m.
    lon, lat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True).transform(
        [366000, 366048, 366048, 366000], [5808000, 5808000, 5807968, 5807968])
    assert collection["extent"]["spatial"]["bbox"][0] == pytest.approx(
        [min(lon), min(lat), max(lon), max(lat)], abs=1e-7)
    classes = collection["summaries"]["classification:classes"]
    assert [c["name"] for c in classes] == list(spec.classes)
    assert not any(p.name.startswith(".tmp-") for p in out.iterdir())
    # A re-run replaces the catalogue, it does not pile up old Items.
    build_datadir([scenes[0].record], spec, out, tile=32, overwrite=True)
    collection = json.loads((out / "stac" / "collection.json").read_text())
    assert sorted(_items(out, collection)) == ["a"]
    assert sorted(p.name for p in (out / "stac").iterdir()) == ["a", "collection.json"]


def test_prepare_of_plain_images_gives_items_without_geometry(tmp_path, validator):
    spec = get_spec("synthetic")
    scene = write_scene(tmp_path / "raw", "c", height=64, width=64, seed=3, crs=None,
                        label=None)
    record = dataclasses.replace(scene.record, tags=(1, 2))
    out = tmp_path / "data"
    build_datadir([record], spec, out, tile=32)
    collection = json.loads((out / "stac" / "collection.json").read_text())
    valid(collection, validator)
    assert collection["extent"]["spatial"]["bbox"] == [[-180.0, -90.0, 180.0, 90.0]]
    ((_, item),) = _items(out, collection).values()
    valid(item, validator)
    assert item["geometry"] is None and "bbox" not in item
    assert item["properties"]["proj:code"] is None
    assert item["properties"]["proj:shape"] == [64, 64]
    assert item["properties"]["ctfa:tags"] == [spec.classes[1], spec.classes[2]]
    assert "label" not in item["assets"]
