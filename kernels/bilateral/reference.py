"""Readable reference: the exact bilateral (dense Gaussian) filter, in float64, O(N²).

For one image with N = H·W pixels, feature vectors f_i ∈ R⁵ (see :func:`pixel_features`) and
K value channels v_j ∈ R^K, the filter is

    out_i = Σ_j exp(-|f_i - f_j|² / 2) · v_j        (sum over all j, including j = i)

Convention (shared by every exact path): the self term j = i is **included** (weight 1) and the
result is **not normalised**. This is the sum the permutohedral lattice of the reference code
approximates (its splat/blur/slice also carries a pixel's own value back to it, and it does not
normalise), so the exact and lattice paths are directly comparable and interchangeable in the
energy loss.

This module is the ground truth for the fast exact paths; it materialises the N×N weight matrix
and is meant for small images only.
"""

from __future__ import annotations

import torch
from torch import Tensor


def pixel_features(images: Tensor, sigma_rgb: float, sigma_xy: float) -> Tensor:
    """Bilateral features of every pixel, in the reference's order: x first.

    Args:
        images: ``[B, 3, H, W]`` RGB, 0..255 (float; the result has the same dtype).
        sigma_rgb: colour bandwidth, in grey levels.
        sigma_xy: spatial bandwidth, in pixels.

    Returns:
        ``[B, 5, H·W]``; the feature of pixel (row j, column i), at index ``j·W + i``, is
        ``[i/σxy, j/σxy, R/σrgb, G/σrgb, B/σrgb]``.
    """
    batch, _, height, width = images.shape
    cols = torch.arange(width, device=images.device, dtype=images.dtype) / sigma_xy
    rows = torch.arange(height, device=images.device, dtype=images.dtype) / sigma_xy
    position = torch.stack(
        [cols.expand(height, width), rows[:, None].expand(height, width)]
    ).expand(batch, 2, height, width)
    features = torch.cat([position, images / sigma_rgb], dim=1)
    return features.flatten(2)


def bilateral_filter_reference(
    images: Tensor, values: Tensor, sigma_rgb: float, sigma_xy: float
) -> Tensor:
    """Exact dense Gaussian filter in float64 (materialises ``[B, N, N]``; small images only).

    Args:
        images: ``[B, 3, H, W]`` RGB, 0..255.
        values: ``[B, K, H, W]`` values to filter.
        sigma_rgb: colour bandwidth, in grey levels.
        sigma_xy: spatial bandwidth, in pixels.

    Returns:
        ``[B, K, H, W]`` float64: ``out_i = Σ_j exp(-|f_i - f_j|²/2) v_j``, self term included.
    """
    features = pixel_features(images.double(), sigma_rgb, sigma_xy)  # [B, 5, N]
    batch, dims, num_pixels = features.shape
    squared_distance = features.new_zeros(batch, num_pixels, num_pixels)
    for c in range(dims):  # one feature at a time: [B, N, N], not [B, N, N, 5]
        feature = features[:, c]
        squared_distance += (feature[:, :, None] - feature[:, None, :]) ** 2
    weights = torch.exp(-0.5 * squared_distance)  # [B, N(out), N(in)]
    flat_values = values.double().flatten(2)  # [B, K, N]
    out = torch.einsum("bij,bkj->bki", weights, flat_values)
    return out.reshape(values.shape)
