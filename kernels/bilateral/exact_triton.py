"""Exact dense Gaussian bilateral filter as a Triton kernel (GPU; CPU under ``TRITON_INTERPRET=1``).

Same sum and convention as :mod:`kernels.bilateral.reference`:
``out_i = Σ_j exp(-|f_i - f_j|²/2) v_j``, self term included, unnormalised, float32.

Each program owns a tile of ``BLOCK_I`` output pixels of one image and sweeps the image's pixels
in tiles of ``BLOCK_J``: it computes the ``[BLOCK_I, BLOCK_J]`` weight tile from the 5 feature
differences in registers and accumulates ``weights @ values`` into a ``[BLOCK_I, BLOCK_K]``
accumulator (online accumulation: the N×N matrix never exists). The product runs in IEEE float32
(``input_precision="ieee"``), not TF32, whose 10-bit mantissa would cost ~1e-3 relative error.

Triton reads ``TRITON_INTERPRET`` when a kernel is decorated, i.e. when this module is first
imported: set it before importing anything from here (tests do so in a subprocess).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from ctfa_cli.errors import CtfaUsageError
from kernels.bilateral.reference import pixel_features
from kernels.launch import launch_device

# exp(-s/2) = exp2(-s/2 · log2(e)). A global read inside @triton.jit must be a tl.constexpr:
# the compiler refuses a plain float (the interpreter, running the kernel as Python, would not).
_MINUS_HALF_LOG2_E = tl.constexpr(-0.5 * 1.4426950408889634)
_BLOCK_I = 64
_BLOCK_J = 64


def block_sizes(num_channels: int) -> dict[str, int]:
    """The kernel's block constexprs for ``num_channels`` value channels, as launched."""
    # tl.dot needs every dimension >= 16.
    return {"BLOCK_I": _BLOCK_I, "BLOCK_J": _BLOCK_J,
            "BLOCK_K": max(16, triton.next_power_of_2(num_channels))}


@triton.jit
def _exact_bilateral_kernel(
    features_ptr,  # [B, 5, N] float32, contiguous
    values_ptr,  # [B, K, N] float32, contiguous
    out_ptr,  # [B, K, N] float32, contiguous
    num_pixels,
    num_channels,
    BLOCK_I: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    image = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)
    row_valid = rows < num_pixels
    features = features_ptr + image * 5 * num_pixels
    target_x = tl.load(features + rows, mask=row_valid, other=0.0)
    target_y = tl.load(features + num_pixels + rows, mask=row_valid, other=0.0)
    target_r = tl.load(features + 2 * num_pixels + rows, mask=row_valid, other=0.0)
    target_g = tl.load(features + 3 * num_pixels + rows, mask=row_valid, other=0.0)
    target_b = tl.load(features + 4 * num_pixels + rows, mask=row_valid, other=0.0)
    channels = tl.arange(0, BLOCK_K)
    channel_valid = channels < num_channels
    values = values_ptr + image * num_channels * num_pixels

    acc = tl.zeros([BLOCK_I, BLOCK_K], dtype=tl.float32)
    for start in range(0, num_pixels, BLOCK_J):
        cols = start + tl.arange(0, BLOCK_J)
        col_valid = cols < num_pixels
        diff = target_x[:, None] - tl.load(features + cols, mask=col_valid, other=0.0)[None, :]
        squared = diff * diff
        diff = (
            target_y[:, None]
            - tl.load(features + num_pixels + cols, mask=col_valid, other=0.0)[None, :]
        )
        squared += diff * diff
        diff = (
            target_r[:, None]
            - tl.load(features + 2 * num_pixels + cols, mask=col_valid, other=0.0)[None, :]
        )
        squared += diff * diff
        diff = (
            target_g[:, None]
            - tl.load(features + 3 * num_pixels + cols, mask=col_valid, other=0.0)[None, :]
        )
        squared += diff * diff
        diff = (
            target_b[:, None]
            - tl.load(features + 4 * num_pixels + cols, mask=col_valid, other=0.0)[None, :]
        )
        squared += diff * diff
        weights = tl.where(col_valid[None, :], tl.exp2(squared * _MINUS_HALF_LOG2_E), 0.0)
        tile = tl.load(
            values + channels[None, :] * num_pixels + cols[:, None],
            mask=col_valid[:, None] & channel_valid[None, :],
            other=0.0,
        )  # [BLOCK_J, BLOCK_K]
        acc += tl.dot(weights, tile, input_precision="ieee")

    out = out_ptr + image * num_channels * num_pixels
    tl.store(
        out + channels[None, :] * num_pixels + rows[:, None],
        acc,
        mask=row_valid[:, None] & channel_valid[None, :],
    )


def triton_bilateral_filter(
    images: Tensor, values: Tensor, sigma_rgb: float, sigma_xy: float
) -> Tensor:
    """Exact Gaussian bilateral filter, one Triton program per tile of output pixels.

    Args:
        images: ``[B, 3, H, W]`` float32 RGB, 0..255, on a CUDA device (or on CPU when
            ``TRITON_INTERPRET=1`` was set before this module was imported).
        values: ``[B, K, H, W]`` float32, same device.
        sigma_rgb: colour bandwidth, in grey levels.
        sigma_xy: spatial bandwidth, in pixels.

    Returns:
        ``[B, K, H, W]`` float32 on the inputs' device.

    Raises:
        CtfaUsageError: the tensors are on CPU and Triton's interpreter is off.
    """
    if images.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise CtfaUsageError(
            "the triton bilateral path needs CUDA tensors (or TRITON_INTERPRET=1 set before "
            "import); use path='torch' on CPU"
        )
    batch, channels, height, width = values.shape
    num_pixels = height * width
    features = pixel_features(images.float(), sigma_rgb, sigma_xy).contiguous()  # [B, 5, N]
    flat_values = values.float().reshape(batch, channels, num_pixels).contiguous()
    out = torch.empty_like(flat_values)
    grid = (triton.cdiv(num_pixels, _BLOCK_I), batch)
    with launch_device(out.device):
        _exact_bilateral_kernel[grid](
            features, flat_values, out, num_pixels, channels, **block_sizes(channels)
        )
    return out.reshape(values.shape)
