"""Chip labels from vector features (reprojected spatial join) and from tag tables."""

from __future__ import annotations

import geopandas as gpd
import pytest
from shapely.geometry import LineString, Point, box

from ctfa_cli.config import DatasetSpec
from ctfa_cli.datasets.vector_tags import TableTagger, VectorTagger, load_tagger, parse_labels
from ctfa_cli.errors import CtfaError, CtfaUsageError

SPEC = DatasetSpec(name="t", classes=["background", "building", "tree", "water"],
                   palette=[(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)])
UTM = "EPSG:32631"
X0, Y0 = 500000.0, 4000000.0  # chips are 100 m × 100 m squares in a row, east of (X0, Y0)


def chips_frame(n: int = 4, crs: str | None = UTM) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {"chip_id": [f"s_r0_c{100 * k}" for k in range(n)], "scene_id": ["s"] * n},
        geometry=[box(X0 + 100 * k, Y0, X0 + 100 * (k + 1), Y0 + 100) for k in range(n)],
        crs=crs)


def features_in_wgs84() -> gpd.GeoDataFrame:
    """Features drawn in the chips' UTM grid, then stored in EPSG:4326 (another CRS)."""
    utm = gpd.GeoDataFrame({"cls": ["building", "building", "tree", "water", "2", "tree"]},
                           geometry=[
        box(X0 + 10, Y0 + 10, X0 + 60, Y0 + 90),    # chip 0: building covering 40 %
        box(X0 + 110, Y0 + 10, X0 + 117, Y0 + 17),  # chip 1: building covering 0.49 %
        Point(X0 + 250, Y0 + 50),                   # chip 2: a tree point inside
        LineString([(X0 + 150, Y0 - 50), (X0 + 150, Y0 + 150)]),  # chip 1: a river across
        Point(X0 + 450, Y0 + 50),                   # east of chip 3: a tree (class index 2)
        box(X0 + 95, Y0 + 10, X0 + 105, Y0 + 90),   # trees covering 4 % of chips 0 and 1
    ], crs=UTM)
    return utm.to_crs("EPSG:4326")


def classified(features: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    return features.assign(class_index=[SPEC.classes.index(c) if not c.isdigit() else int(c)
                                        for c in features["cls"]])


def test_reprojected_join_with_min_cover_points_and_lines():
    features = classified(features_in_wgs84())
    # Chip 3 has no feature: no positive label. The 0.49 % building is under the 1 % cover.
    assert VectorTagger(features, min_cover=0.01)(chips_frame()) == [(1, 2), (2, 3), (2,), ()]
    # It counts once the cover threshold is low enough, or by its area (49 m²).
    assert VectorTagger(features, min_cover=0.004)(chips_frame())[1] == (1, 2, 3)
    assert VectorTagger(features, min_cover=0.5, min_area=40.0)(chips_frame())[:2] == [
        (1, 2), (1, 2, 3)]
    assert VectorTagger(features, min_cover=0.5)(chips_frame())[:2] == [(), (3,)]
    # A fifth chip east of the fourth holds the tree point.
    assert VectorTagger(features)(chips_frame(n=5))[4] == (2,)


def test_cover_is_the_union_of_a_class_polygons():
    # Two 0.6 % buildings in one chip: 1.2 % together, above a 1 % threshold.
    feats = gpd.GeoDataFrame({"class_index": [1, 1]}, geometry=[
        box(X0 + 10, Y0 + 10, X0 + 16, Y0 + 20), box(X0 + 50, Y0 + 50, X0 + 56, Y0 + 60)], crs=UTM)
    assert VectorTagger(feats, min_cover=0.01)(chips_frame(n=1)) == [(1,)]
    # The same polygon twice covers its area once.
    twice = gpd.GeoDataFrame({"class_index": [1, 1]}, geometry=[
        box(X0 + 10, Y0 + 10, X0 + 16, Y0 + 20)] * 2, crs=UTM)
    assert VectorTagger(twice, min_cover=0.01)(chips_frame(n=1)) == [()]


def test_vector_tagger_needs_georeferenced_chips_and_valid_thresholds():
    tagger = VectorTagger(classified(features_in_wgs84()))
    with pytest.raises(CtfaError, match="not georeferenced"):
        tagger(chips_frame(crs=None))
    with pytest.raises(CtfaUsageError, match="--min-cover 1.5"):
        VectorTagger(classified(features_in_wgs84()), min_cover=1.5)


def test_load_tagger_from_a_geopackage(tmp_path):
    path = tmp_path / "osm.gpkg"
    features_in_wgs84().to_file(path)
    tagger = load_tagger(path, SPEC, class_column="cls")
    assert isinstance(tagger, VectorTagger)
    assert tagger(chips_frame()) == [(1, 2), (2, 3), (2,), ()]
    with pytest.raises(CtfaError, match="no column 'kind' .*pass the right --class-column"):
        load_tagger(path, SPEC, class_column="kind")
    bad = features_in_wgs84().assign(cls=["building", "road", "tree", "water", "2", "tree"])
    bad.to_file(tmp_path / "bad.gpkg")
    with pytest.raises(CtfaError, match="bad.gpkg: column 'cls' holds classes that are not in "
                                        "the spec: road"):
        load_tagger(tmp_path / "bad.gpkg", SPEC, class_column="cls")
    features_in_wgs84().set_crs(None, allow_override=True).to_file(tmp_path / "nocrs.gpkg")
    with pytest.raises(CtfaError, match="nocrs.gpkg: the features have no CRS"):
        load_tagger(tmp_path / "nocrs.gpkg", SPEC, class_column="cls")


def test_tag_tables_by_scene_and_by_chip(tmp_path):
    scenes = tmp_path / "scenes.csv"
    scenes.write_text("scene_id,labels\ns,\"building,3\"\nother,\n")
    tagger = load_tagger(scenes, SPEC)
    assert isinstance(tagger, TableTagger) and tagger.key == "scene_id"
    assert tagger(chips_frame(n=2)) == [(1, 3), (1, 3)]
    chips = tmp_path / "chips.csv"
    chips.write_text("chip_id,labels\ns_r0_c0,tree\ns_r0_c100,\"background,water\"\n")
    assert load_tagger(chips, SPEC)(chips_frame(n=3)) == [(2,), (3,), ()]
    (tmp_path / "none.csv").write_text("chip_id,labels\nx_r0_c0,tree\n")
    with pytest.raises(CtfaError, match="no chip_id of the table matches the chips"):
        load_tagger(tmp_path / "none.csv", SPEC)(chips_frame())
    (tmp_path / "cols.csv").write_text("id,labels\ns,tree\n")
    with pytest.raises(CtfaError, match="needs a `labels` column and a `chip_id` or `scene_id`"):
        load_tagger(tmp_path / "cols.csv", SPEC)


def test_parse_labels_names_and_indices():
    assert parse_labels("water, building,1", SPEC, "x") == (1, 3)
    assert parse_labels("background", SPEC, "x") == ()  # background is never an image label
    with pytest.raises(CtfaError, match="f.csv row 2: unknown class 'car'"):
        parse_labels("car", SPEC, "f.csv row 2")
