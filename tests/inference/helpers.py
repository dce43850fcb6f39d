"""Helpers of the inference and predict CLI tests: tiny predictors and seeded rasters."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine

from ctfa_cli.config import DatasetSpec

# A local transverse Mercator without an EPSG code, and a rotated geotransform.
LOCAL_TM = CRS.from_proj4("+proj=tmerc +lat_0=46.5 +lon_0=7.25 +k=1 +x_0=20000 +y_0=10000 "
                          "+ellps=GRS80 +units=m +no_defs")
ROTATED = Affine(0.4, 0.15, 2000.0, 0.12, -0.4, 9000.0)

SPEC = DatasetSpec(name="tiny", classes=["background", "building", "tree", "water"],
                   palette=[(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)],
                   bands=["r", "g", "b"], tile_size=64, stride=64)


class LinearPredictor:
    """Position-independent predictor: a fixed per-pixel linear map of the bands + softmax.

    Its output at a pixel depends on that pixel only, so a blended sweep must reproduce one
    forward pass over the whole scene.
    """

    def __init__(self, spec: DatasetSpec = SPEC, seed: int = 0, patch_size: int = 16) -> None:
        self.spec = spec
        self.device = torch.device("cpu")
        self.patch_size = patch_size
        generator = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(spec.num_classes, spec.in_chans, generator=generator) * 2
        self.calls = 0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.einsum("ck,bkhw->bchw", self.weight, batch).softmax(1)


class ContextPredictor(LinearPredictor):
    """Position-dependent predictor: each pixel also sees its window's mean, like attention.

    Whatever lies under nodata or padding would change every pixel of the window unless it is
    neutralised (zeroed) before the forward pass.
    """

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        context = batch.mean(dim=(2, 3), keepdim=True) * 5
        return torch.einsum("ck,bkhw->bchw", self.weight, batch + context).softmax(1)


def tiny_network(seed: int = 0):
    """A ``vit_tiny`` CTFA network for :data:`SPEC` with seeded random weights (small heads)."""
    from ctfa_cli.model.network import CTFANetwork

    torch.manual_seed(seed)
    return CTFANetwork(SPEC.num_cam_classes, SPEC.num_classes, backbone="vit_tiny_patch16_224",
                       pretrained=False, proj_hidden_dim=32, proj_bottleneck_dim=16,
                       proj_out_dim=32)


def save_tiny_bundle(path: Path, seed: int = 0) -> Path:
    """Save :func:`tiny_network` ``(seed)`` as a model bundle at ``path``; returns ``path``."""
    from ctfa_cli.config import TrainConfig
    from ctfa_cli.model.bundle import save_bundle

    save_bundle(path, tiny_network(seed), SPEC,
                TrainConfig(backbone="vit_tiny_patch16_224", pretrained=False))
    return path


def smooth_image(height: int, width: int, bands: int = 3, seed: int = 0) -> np.ndarray:
    """``[bands, height, width]`` uint8 with large smooth regions (few polygons per class)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (bands, height // 16 + 2, width // 16 + 2))
    rows = np.linspace(0, coarse.shape[1] - 1.001, height)
    cols = np.linspace(0, coarse.shape[2] - 1.001, width)
    r0, c0 = rows.astype(int), cols.astype(int)
    fr, fc = (rows - r0)[:, None], (cols - c0)[None, :]
    out = (coarse[:, r0][:, :, c0] * (1 - fr) * (1 - fc) + coarse[:, r0 + 1][:, :, c0] * fr
           * (1 - fc) + coarse[:, r0][:, :, c0 + 1] * (1 - fr) * fc
           + coarse[:, r0 + 1][:, :, c0 + 1] * fr * fc)
    return out.round().astype(np.uint8)


def write_raster(path: Path, data: np.ndarray, **profile) -> Path:
    """Write ``[bands, H, W]`` ``data`` as a GeoTIFF (or any driver given in ``profile``)."""
    profile = {"driver": "GTiff", "count": data.shape[0], "height": data.shape[1],
               "width": data.shape[2], "dtype": data.dtype.name} | profile
    descriptions = profile.pop("descriptions", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
            for i, text in enumerate(descriptions or [], start=1):
                dst.set_band_description(i, text)
    return path
