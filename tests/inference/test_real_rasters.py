"""``predict`` on real rasters from other projects' test data (``../shared/rasters``), checked
against their ``MANIFEST.tsv``: no crash, no lost or invented georeferencing, every refusal a
line whose ``--bands`` hint works.

The rasters are read where they are (beside the checkout, never copied into it). Every scene of
the manifest is run except ``cog_cmap.tif`` (7168×8704 px, about two minutes here on its own):
the smaller palette images (``test_color_table.tif``, ``CM13ct.png``, the 1-bit
``miniswhite-1c-1b.tiff``) take the same path. The model is a per-pixel linear map
(:class:`~tests.inference.helpers.LinearPredictor`) on RGB: reading, georeferencing and
writing are what is tested, not a network.
"""

from __future__ import annotations

import csv
import re
import warnings
from pathlib import Path

import pytest
import rasterio

from ctfa_cli.errors import CtfaError
from ctfa_cli.inference.predict import PredictOptions, predict_scene
from tests.inference.helpers import LinearPredictor

RASTERS = Path(__file__).resolve().parents[3] / "shared" / "rasters"
SKIPPED = {"cogeotiff__rio-tiler/cog_cmap.tif"}  # see the module docstring
OPTIONS = PredictOptions(tile=256, overlap=32, batch_size=4, progress=False, stac=False)


def manifest() -> list[dict[str, str]]:
    if not (RASTERS / "MANIFEST.tsv").is_file():
        return []
    with open(RASTERS / "MANIFEST.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [row for row in rows if "not a scene" not in row["notes"]
            and row["file"] not in SKIPPED]


pytestmark = pytest.mark.skipif(not manifest(), reason=f"{RASTERS} is not beside the checkout "
                                "(CI and the project's sessions have it as ../shared)")


def predict(path: Path, out: Path, **options):
    """predict_scene, with every Python warning recorded."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = predict_scene(path, LinearPredictor(), out,
                               options=PredictOptions(**{**OPTIONS.__dict__, **options}))
    return result, [str(w.message) for w in caught]


@pytest.mark.parametrize("row", manifest(), ids=lambda row: row["file"])
def test_predict_a_real_raster(row, tmp_path):
    path = RASTERS / row["file"]
    out = tmp_path / "classes.tif"
    try:
        _, caught = predict(path, out)
    except CtfaError as refusal:
        message = str(refusal)
        assert "\n" not in message and message.startswith(str(path))
        if "complex" in row["dtype"]:
            assert "complex-valued band(s)" in message and "gdal_calc.py" in message
            return
        if "corrupt" in row["notes"] or "corrupt" in row["file"]:
            assert "damaged" in message and "previous exception" not in message
            return
        hint = re.search(r"--bands (?:e\.g\. --bands )?([0-9,]+)", message)
        assert hint, message  # every other refusal says which bands to pass …
        bands = tuple(int(i) for i in hint[1].split(","))
        _, caught = predict(path, out, bands=bands)  # … and that hint works
    assert not caught, caught  # third-party warnings do not leak
    with rasterio.open(path) as src, rasterio.open(out) as result:
        assert (result.width, result.height) == (src.width, src.height)
        georef = row["georef"]
        if georef == "transform":
            assert result.transform.almost_equals(src.transform)
            expected = None if "cannot decode" in row["notes"] or row["crs"] == "none" \
                else src.crs
            assert result.crs == expected
        elif georef.startswith("gcps"):
            points, crs = result.gcps
            assert len(points) == int(georef[5:-1]) and crs == src.gcps[1]
            assert result.crs is None and result.transform.is_identity
        elif georef == "rpc":
            assert result.rpcs is not None and result.crs is None
            written, given = result.rpcs.to_dict(), src.rpcs.to_dict()
            assert written.keys() == given.keys()
            for key, value in given.items():  # GDAL stores them as text: 15 digits
                assert written[key] == pytest.approx(value, rel=1e-13, abs=1e-18), key
        else:
            assert georef == "none"
            assert result.crs is None and result.transform.is_identity


def test_polygons_of_a_gcp_scene_are_refused_in_one_line(tmp_path):
    path = RASTERS / "rasterio__rasterio" / "RGB.byte.gcp.vrt"
    with pytest.raises(CtfaError) as refusal:
        predict(path, tmp_path / "classes.tif", vector="gpkg")
    assert str(refusal.value) == (
        f"{path}: georeferenced by GCPs, not a geotransform, so polygons would be in pixel "
        f"units; warp it first (gdalwarp -tps {path} warped.tif) and predict warped.tif, or "
        "drop --vector")


def test_polygons_of_an_unreferenced_scene_raise_no_library_warning(tmp_path):
    path = RASTERS / "image-rs__image-tiff" / "planar-rgb-u8.tif"
    result, caught = predict(path, tmp_path / "classes.tif", vector="gpkg")
    assert result.polygons > 0 and not caught
