"""Streamed COG writers: layout, georeferencing, colour table, metadata, temporary names."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from ctfa_cli.inference.writers import CLASS_NODATA, class_writer, probs_writer
from tests.inference.helpers import LOCAL_TM, ROTATED, SPEC


def _write_classes(path, labels, *, crs=LOCAL_TM, transform=ROTATED, step=97):
    height, width = labels.shape
    with class_writer(path, SPEC, width=width, height=height, crs=crs,
                      transform=transform) as writer:
        for row in range(0, height, step):  # row blocks that do not align with GeoTIFF blocks
            writer.write_rows(row, labels[None, row:row + step])
        writer.commit()


def _labels(height, width, seed=0):
    labels = np.random.default_rng(seed).integers(0, SPEC.num_classes, (height, width))
    labels = labels.astype(np.uint8)
    labels[:30, :40] = CLASS_NODATA
    return labels


def test_class_raster_is_a_georeferenced_cog_with_palette_and_names(tmp_path):
    labels = _labels(700, 600)
    out = tmp_path / "classes.tif"
    _write_classes(out, labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.tif"]  # no temporary left
    with rasterio.open(out) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.tags(ns="IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"
        assert src.profile["tiled"] and src.block_shapes == [(512, 512)]
        assert src.overviews(1) == [2]
        assert (src.count, src.dtypes[0], src.nodata) == (1, "uint8", CLASS_NODATA)
        assert (src.width, src.height) == (600, 700)
        assert src.crs == LOCAL_TM and src.crs.to_epsg() is None
        assert src.transform.almost_equals(ROTATED, precision=1e-12)
        assert np.array_equal(src.read(1), labels)
        colormap = src.colormap(1)
        for i, rgb in enumerate(SPEC.palette):
            assert colormap[i] == (*rgb, 255)
        assert json.loads(src.tags()["CLASS_NAMES"]) == SPEC.classes
        assert src.tags()["CLASS_1"] == "building"


def test_class_overviews_use_the_mode(tmp_path):
    labels = np.ones((1024, 1024), np.uint8)
    labels[1::2, 1::2] = 0
    labels[0::2, 0::2] = 2  # every 2×2 block holds 2, 1, 1, 0: the mode is 1
    out = tmp_path / "classes.tif"
    _write_classes(out, labels, step=512)
    with rasterio.open(out) as src:
        overview = src.read(1, out_shape=(512, 512))
    assert np.unique(overview).tolist() == [1]


def test_probabilities_cog_has_class_band_names_and_a_nodata_mask(tmp_path):
    rng = np.random.default_rng(1)
    probs = rng.integers(0, 256, (SPEC.num_classes, 300, 200), dtype=np.uint8)
    valid = np.ones((300, 200), bool)
    valid[250:, 150:] = False
    out = tmp_path / "probs.tif"
    with probs_writer(out, SPEC, width=200, height=300, crs=LOCAL_TM,
                      transform=ROTATED) as writer:
        writer.write_rows(0, probs[:, :160], valid[:160])
        writer.write_rows(160, probs[:, 160:], valid[160:])
        writer.commit()
    with rasterio.open(out) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.descriptions == tuple(SPEC.classes)
        assert np.array_equal(src.read(), probs)
        assert np.array_equal(src.dataset_mask() != 0, valid)


def test_non_georeferenced_output_has_no_crs(tmp_path):
    out = tmp_path / "classes.tif"
    _write_classes(out, _labels(64, 80), crs=None, transform=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(out) as src:
            assert src.crs is None and src.transform.is_identity


def test_an_interrupted_write_leaves_nothing_that_looks_finished(tmp_path):
    out = tmp_path / "classes.tif"
    with pytest.raises(RuntimeError, match="boom"), class_writer(
            out, SPEC, width=50, height=60, crs=LOCAL_TM, transform=ROTATED) as writer:
        writer.write_rows(0, np.zeros((1, 30, 50), np.uint8))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_rows_must_come_in_order_and_all_before_commit(tmp_path):
    with class_writer(tmp_path / "c.tif", SPEC, width=50, height=60, crs=None,
                      transform=None) as writer:
        with pytest.raises(ValueError, match="expected rows from 0"):
            writer.write_rows(10, np.zeros((1, 5, 50), np.uint8))
        writer.write_rows(0, np.zeros((1, 30, 50), np.uint8))
        with pytest.raises(ValueError, match="only 30 of 60 rows"):
            writer.commit()
    assert list(tmp_path.iterdir()) == []
