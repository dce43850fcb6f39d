"""PAR on the GPU with Triton: one kernel for the affinities, one launch per propagation step.

Each program owns a block of pixels of one image and gathers their 48 neighbours as a
``[64, BLOCK]`` tile (rows ≥ 48 masked), so every sum over neighbours is a reduction over
the tile's first axis. The affinity kernel does this per colour channel for the std, the
image term and the softmax; only the final ``[B, 48, H, W]`` weights touch memory. The
propagation kernel loads its weight tile once and reuses it for every mask channel.
A step needs every pixel of the previous step (neighbours lie up to 24 px away), so each
of the ``num_iter`` steps is one launch, ping-ponging two buffers.

Border clamping replaces replicate padding: the neighbour index is clamped to the image.

Set ``TRITON_INTERPRET=1`` before this module is imported to run the kernels in Triton's
interpreter on CPU tensors (slow; for tests on small shapes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from kernels.constants import device_constant
from kernels.launch import launch_device
from kernels.par.reference import (
    DEFAULT_DILATIONS,
    POSITION_WEIGHT,
    STD_EPS,
    TEMPERATURE,
    neighbour_offsets,
    position_softmax,
)

#: Whether the kernels below were built for Triton's CPU interpreter (decided at import).
INTERPRETED: bool = triton.knobs.runtime.interpret


def _pixel_block(num_pixels: int) -> int:
    """Pixels per program: 64 keeps a [64, 64] tile in registers on a GPU; the interpreter
    pays per program and per op, not per element, so it gets few large programs."""
    if INTERPRETED:
        return min(triton.next_power_of_2(num_pixels), 4096)
    return 64


def affinity_constants(num_channels: int, num_neighbours: int, num_pixels: int) -> dict[str, int]:
    """The affinity kernel's constexprs, as launched."""
    return {"CHANNELS": num_channels, **propagate_constants(num_neighbours, num_pixels)}


def propagate_constants(num_neighbours: int, num_pixels: int) -> dict[str, int]:
    """The propagation kernel's constexprs, as launched."""
    return {"NEIGHBOUR_BLOCK": triton.next_power_of_2(num_neighbours),
            "BLOCK": _pixel_block(num_pixels)}


@triton.jit
def _neighbour_tile(dy_ptr, dx_ptr, height, width, num_neighbours,
                    NEIGHBOUR_BLOCK: tl.constexpr, BLOCK: tl.constexpr):
    """This program's pixels and the ``[NEIGHBOUR_BLOCK, BLOCK]`` indices of their
    neighbours (clamped to the image), with the masks of valid pixels, rows and entries."""
    pixel = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    pixel_ok = pixel < height * width
    row, col = pixel // width, pixel % width
    n = tl.arange(0, NEIGHBOUR_BLOCK)
    n_ok = n < num_neighbours
    dy = tl.load(dy_ptr + n, mask=n_ok, other=0)
    dx = tl.load(dx_ptr + n, mask=n_ok, other=0)
    nbr_row = tl.minimum(tl.maximum(row[None, :] + dy[:, None], 0), height - 1)
    nbr_col = tl.minimum(tl.maximum(col[None, :] + dx[:, None], 0), width - 1)
    tile_ok = n_ok[:, None] & pixel_ok[None, :]
    return pixel, pixel_ok, n, n_ok, nbr_row * width + nbr_col, tile_ok


@triton.jit
def _affinity_kernel(
    images_ptr, dy_ptr, dx_ptr, position_ptr, aff_ptr,
    height, width, num_neighbours,
    inv_temperature, std_eps, position_weight,
    CHANNELS: tl.constexpr, NEIGHBOUR_BLOCK: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    batch = tl.program_id(1).to(tl.int64)
    num_pixels = height * width
    pixel, pixel_ok, n, n_ok, nbr_index, tile_ok = _neighbour_tile(
        dy_ptr, dx_ptr, height, width, num_neighbours, NEIGHBOUR_BLOCK, BLOCK)

    term = tl.zeros([NEIGHBOUR_BLOCK, BLOCK], dtype=tl.float32)
    for c in tl.static_range(CHANNELS):
        plane = images_ptr + (batch * CHANNELS + c) * num_pixels
        centre = tl.load(plane + pixel, mask=pixel_ok, other=0.0)
        nbr = tl.load(plane + nbr_index, mask=tile_ok, other=0.0)
        mean = tl.sum(nbr, axis=0) / num_neighbours
        deviation = tl.where(tile_ok, nbr - mean[None, :], 0.0)
        std = tl.sqrt(tl.sum(deviation * deviation, axis=0) / (num_neighbours - 1))
        scaled = tl.abs(nbr - centre[None, :]) / (std[None, :] + std_eps) * inv_temperature
        term += scaled * scaled
    term = tl.where(n_ok[:, None], -term / CHANNELS, float("-inf"))

    weight = tl.exp(term - tl.max(term, axis=0)[None, :])
    weight = weight / tl.sum(weight, axis=0)[None, :]
    position = tl.load(position_ptr + n, mask=n_ok, other=0.0)
    weight += position_weight * position[:, None]
    out = aff_ptr + (batch * num_neighbours + n[:, None]) * num_pixels + pixel[None, :]
    tl.store(out, weight, mask=tile_ok)


@triton.jit
def _propagate_kernel(
    masks_ptr, aff_ptr, dy_ptr, dx_ptr, out_ptr,
    height, width, num_channels, num_neighbours,
    NEIGHBOUR_BLOCK: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    batch = tl.program_id(1).to(tl.int64)
    num_pixels = height * width
    pixel, pixel_ok, n, n_ok, nbr_index, tile_ok = _neighbour_tile(
        dy_ptr, dx_ptr, height, width, num_neighbours, NEIGHBOUR_BLOCK, BLOCK)
    # The weights are loaded once and reused for every channel.
    aff_tile = aff_ptr + (batch * num_neighbours + n[:, None]) * num_pixels + pixel[None, :]
    weight = tl.load(aff_tile, mask=tile_ok, other=0.0)

    for k in range(num_channels):
        plane = (batch * num_channels + k) * num_pixels
        nbr = tl.load(masks_ptr + plane + nbr_index, mask=tile_ok, other=0.0)
        tl.store(out_ptr + plane + pixel, tl.sum(nbr * weight, axis=0), mask=pixel_ok)


def _offset_tables(dilations: Sequence[int], device: torch.device) -> tuple[Tensor, Tensor]:
    """Neighbour row and column offsets ``[8·len(dilations)]`` int32, made once per device."""
    offsets = neighbour_offsets(dilations)
    dy = device_constant([o[0] for o in offsets], dtype=torch.int32, device=device)
    dx = device_constant([o[1] for o in offsets], dtype=torch.int32, device=device)
    return dy, dx


def affinity_triton(images: Tensor, dilations: Sequence[int]) -> Tensor:
    """Neighbour weights of every pixel, as :func:`kernels.par.reference.affinity`.

    Args:
        images: ``[B, 3, H, W]`` float32, RGB in [0, 1], on CUDA (or CPU when interpreted).
        dilations: dilation of each ring of 8 neighbours, in pixels.

    Returns:
        ``[B, 8·len(dilations), H, W]`` float32; sums to 1.01 over dim 1.
    """
    images = images.contiguous()
    batch, channels, height, width = images.shape
    dy, dx = _offset_tables(dilations, images.device)
    count = dy.numel()
    # Built on the CPU, copied to the device once (a copy per call would wait for the GPU).
    position = device_constant(position_softmax(dilations).tolist(), dtype=torch.float32,
                               device=images.device)
    aff = torch.empty(batch, count, height, width, dtype=torch.float32, device=images.device)
    constants = affinity_constants(channels, count, height * width)
    grid = (triton.cdiv(height * width, constants["BLOCK"]), batch)
    with launch_device(aff.device):
        _affinity_kernel[grid](
            images, dy, dx, position, aff, height, width, count,
            1.0 / TEMPERATURE, STD_EPS, POSITION_WEIGHT, **constants,
        )  # fmt: skip
    return aff


def par_triton(
    images: Tensor, masks: Tensor, dilations: Sequence[int] = DEFAULT_DILATIONS, num_iter: int = 10
) -> Tensor:
    """PAR as :func:`kernels.par.reference.par_reference`, with Triton kernels.

    Args:
        images: ``[B, 3, H, W]`` float32, RGB in [0, 1], on CUDA (or CPU when interpreted).
        masks: ``[B, K, h, w]`` float32 soft masks on the same device; resized bilinearly
            (``align_corners=True``) to ``(H, W)`` first.
        dilations: dilation of each ring of 8 neighbours, in pixels.
        num_iter: propagation steps.

    Returns:
        ``[B, K, H, W]`` float32 refined masks.

    Raises:
        ValueError: if an input is not float32.
    """
    if images.dtype != torch.float32 or masks.dtype != torch.float32:
        raise ValueError(
            f"PAR's Triton path takes float32 inputs, got {images.dtype} and {masks.dtype}; "
            "use path='cpu' or 'reference' for other dtypes"
        )
    masks = F.interpolate(masks, size=images.shape[-2:], mode="bilinear", align_corners=True)
    aff = affinity_triton(images, dilations)
    batch, channels, height, width = masks.shape
    dy, dx = _offset_tables(dilations, masks.device)
    count = dy.numel()
    constants = propagate_constants(count, height * width)
    grid = (triton.cdiv(height * width, constants["BLOCK"]), batch)
    current = masks.contiguous()
    buffers = [torch.empty_like(current), torch.empty_like(current)]
    with launch_device(current.device):
        for step in range(num_iter):
            result = buffers[step % 2]
            _propagate_kernel[grid](
                current, aff, dy, dx, result, height, width, channels, count, **constants,
            )  # fmt: skip
            current = result
    return current
