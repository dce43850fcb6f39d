"""Scene reading: band selection, scaling as trained, nodata masks."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin

from ctfa_cli.datasets.tiling import stretch_to_uint8
from ctfa_cli.errors import CtfaError, CtfaUsageError
from ctfa_cli.inference.reader import SceneReader, parse_band_indices
from tests.inference.helpers import SPEC, smooth_image, write_raster

GEO = {"crs": "EPSG:32632", "transform": from_origin(500000, 5600000, 0.5, 0.5)}
IRRG = SPEC.model_copy(update={"bands": ["ir", "r", "g"]})


def _normalised(values: np.ndarray, spec=SPEC) -> torch.Tensor:
    mean = torch.tensor(spec.mean)[:, None, None]
    std = torch.tensor(spec.std)[:, None, None]
    return (torch.from_numpy(values).double() / 255 - mean) / std


def test_uint8_rows_are_normalised_as_trained(tmp_path):
    data = smooth_image(40, 50)
    path = write_raster(tmp_path / "s.tif", data, **GEO)
    with SceneReader(path, SPEC) as reader:
        assert reader.indexes == (1, 2, 3) and reader.stretch is None
        band = reader.read_rows(10, 20)
    assert band.pixels.shape == (3, 20, 50) and band.pixels.dtype == torch.float32
    assert band.valid.all()
    torch.testing.assert_close(band.pixels.double(), _normalised(data[:, 10:30]), rtol=0,
                               atol=1e-6)


def test_bands_are_matched_by_description_in_model_order(tmp_path):
    data = smooth_image(16, 16, bands=4)
    path = write_raster(tmp_path / "s.tif", data, descriptions=["Red", "Green", "Blue", "NIR"],
                        photometric="MINISBLACK", **GEO)
    with SceneReader(path, IRRG) as reader:
        assert reader.indexes == (4, 1, 2)
        pixels = reader.read_rows(0, 16).pixels
    torch.testing.assert_close(pixels.double(), _normalised(data[[3, 0, 1]], IRRG), rtol=0,
                               atol=1e-6)


def test_bands_option_overrides_and_is_checked(tmp_path):
    path = write_raster(tmp_path / "s.tif", smooth_image(16, 16, bands=4),
                        photometric="MINISBLACK", **GEO)
    with SceneReader(path, SPEC, bands=(3, 2, 1)) as reader:
        assert reader.indexes == (3, 2, 1)
    with pytest.raises(CtfaError, match="selects 2 bands but the model expects 3"):
        SceneReader(path, SPEC, bands=(1, 2))
    with pytest.raises(CtfaError, match="band 7 but the scene has 4 bands"):
        SceneReader(path, SPEC, bands=(1, 2, 7))


def test_band_count_mismatch_names_both_counts(tmp_path):
    path = write_raster(tmp_path / "s.tif", smooth_image(16, 16, bands=4),
                        photometric="MINISBLACK", **GEO)
    with pytest.raises(CtfaError, match=r"s\.tif: the scene has 4 bands but the model expects 3"
                                        r" \(r, g, b\); choose them with --bands"):
        SceneReader(path, SPEC)


def test_a_scene_tagged_rgb_into_an_irrg_model_is_refused_with_a_fix_that_works(tmp_path):
    # In order, the scene's red band would be fed as the model's IR: refused.
    path = write_raster(tmp_path / "s.tif", smooth_image(16, 16), photometric="RGB", **GEO)
    with pytest.raises(CtfaError) as raised:
        SceneReader(path, IRRG)
    assert str(raised.value) == (
        f"{path}: the scene's bands are r, g, b but the model expects ir, r, g; use a model "
        "trained on these bands, or, if the scene's bands are in the model's order whatever "
        "their tags say (ISPRS IRRG tiles are tagged R, G, B), pass --bands 1,2,3")
    with SceneReader(path, IRRG, bands=(1, 2, 3)) as reader:  # the hint is accepted
        assert reader.indexes == (1, 2, 3)
    described = write_raster(tmp_path / "d.tif", smooth_image(16, 16),
                             photometric="MINISBLACK", descriptions=["red", "green", "blue"], **GEO)
    with pytest.raises(CtfaError, match="bands are r, g, b but the model expects ir, r, g"):
        SceneReader(described, IRRG)


def test_unnamed_bands_are_taken_in_order_with_one_warning(tmp_path, caplog):
    path = write_raster(tmp_path / "s.tif", smooth_image(16, 16), photometric="MINISBLACK",
                        **GEO)
    with SceneReader(path, IRRG) as reader:
        assert reader.indexes == (1, 2, 3)
        reader.read_rows(0, 8), reader.read_rows(8, 8)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"{path}: the scene's bands carry no names: bands 1,2,3 are taken "
                        "as ir, r, g (pass --bands to choose others)"]


def test_a_grey_scene_is_told_a_band_choice_that_works(tmp_path):
    path = write_raster(tmp_path / "g.tif", smooth_image(16, 16, bands=1), **GEO)
    with pytest.raises(CtfaError, match=r"has 1 bands but the model expects 3 \(r, g, b\); "
                                        r"choose them with --bands, e.g. --bands 1,1,1 \(a grey"):
        SceneReader(path, SPEC)
    with SceneReader(path, SPEC, bands=(1, 1, 1)) as reader:
        band = reader.read_rows(0, 16)
    # every model band gets the grey band: pixel/255 = normalised · std + mean, per band
    grey = [band.pixels[k] * SPEC.std[k] + SPEC.mean[k] for k in range(3)]
    torch.testing.assert_close(grey[0], grey[1], atol=1e-6, rtol=0)
    torch.testing.assert_close(grey[0], grey[2], atol=1e-6, rtol=0)


def test_alpha_band_is_a_mask_not_a_band(tmp_path):
    data = smooth_image(32, 32, bands=4)
    data[3] = 255
    data[3, 5:12, 7:20] = 0
    path = write_raster(tmp_path / "s.tif", data, photometric="RGB", alpha="YES", **GEO)
    with rasterio.open(path) as src:
        assert src.colorinterp[3] == ColorInterp.alpha
    with SceneReader(path, SPEC) as reader:  # r, g, b by name; the alpha band is no band
        assert reader.indexes == (1, 2, 3)
        band = reader.read_rows(0, 32)
    expected = torch.from_numpy(data[3] != 0)
    assert torch.equal(band.valid, expected)
    assert band.pixels[:, ~expected].abs().max() == 0


def test_declared_nodata_is_masked_and_zeroed(tmp_path):
    data = smooth_image(32, 40).clip(1, 255)
    data[:, 20:, :9] = 0
    path = write_raster(tmp_path / "s.tif", data, nodata=0, **GEO)
    with SceneReader(path, SPEC) as reader:
        band = reader.read_rows(16, 16)
    assert not band.valid[4:, :9].any() and band.valid[:4].all() and band.valid[:, 9:].all()
    assert band.pixels[:, ~band.valid].abs().max() == 0


def test_gdal_mask_band_is_honoured(tmp_path):
    data = smooth_image(32, 32)
    path = write_raster(tmp_path / "s.tif", data, **GEO)
    mask = np.full((32, 32), 255, np.uint8)
    mask[:8] = 0
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "r+") as dst:
        dst.write_mask(mask)
    with SceneReader(path, SPEC) as reader:
        band = reader.read_rows(0, 32)
    assert torch.equal(band.valid, torch.from_numpy(mask != 0))


def test_16bit_input_is_stretched_like_prepare(tmp_path):
    rng = np.random.default_rng(3)
    data = rng.gamma(2.0, 600.0, (3, 48, 64)).astype(np.uint16)
    data[:, :4, :4] = 0
    path = write_raster(tmp_path / "s.tif", data, nodata=0, **GEO)
    with SceneReader(path, SPEC) as reader:
        assert reader.stretch is not None and len(reader.stretch) == 3
        band = reader.read_rows(0, 48)
    # The scene is smaller than the percentile sample: the same numbers as `ctfa prepare`.
    expected = np.stack([stretch_to_uint8(b, nodata=0)[0] for b in data])
    valid = band.valid.numpy()
    assert not valid[:4, :4].any()
    torch.testing.assert_close(band.pixels.double()[:, valid],
                               _normalised(expected)[:, valid], rtol=0, atol=1e-5)


def test_missing_scene_is_a_one_line_error(tmp_path):
    with pytest.raises(CtfaError, match="nope.tif: missing or unreadable raster"):
        SceneReader(tmp_path / "nope.tif", SPEC)


@pytest.mark.parametrize("text,expected", [(None, None), ("4,1,2", (4, 1, 2)), ("2", (2,))])
def test_parse_band_indices(text, expected):
    assert parse_band_indices(text) == expected


@pytest.mark.parametrize("text", ["", "0,1,2", "r,g,b", "1,,2"])
def test_parse_band_indices_rejects_bad_lists(text):
    with pytest.raises(CtfaUsageError, match="1-based band indices"):
        parse_band_indices(text)
