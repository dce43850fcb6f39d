"""PAR without the 48-neighbour stack: shifted views of one padded copy, accumulated in place.

The reference (:mod:`kernels.par.reference`) builds ``[B, C, 48, H, W]`` stacks for the
image and, on each of the 10 iterations, for the masks. Here every neighbour is a strided
view into a single replicate-padded copy (padding by the largest dilation clamps like
padding by each dilation), and every sum over neighbours is accumulated into one buffer:

* affinity: two passes over the 48 views for the per-channel mean and unbiased std, a
  third that writes each neighbour's image term into the affinity buffer, then an in-place
  softmax over the neighbour axis; the position softmax is the same for every pixel, so it
  is a 48-vector added last;
* propagation: ``out += view_n(masks) · aff_n`` for each neighbour, ping-ponging two
  buffers, one image at a time so that they stay in cache.

The affinities are stored once, ``[B, 48, H, W]`` (1/K of one mask stack), rather than
recomputed on each iteration: recomputing would redo the colour statistics 10 times.
Extra memory is about ``48·B·H·W`` plus a few ``[B, 3, H+2p, W+2p]`` and ``[B, K, H, W]``
buffers, against ``≥ 2·48·B·K·H·W`` for the reference (the stack and the product).

Plain PyTorch, so it runs on any device, in the inputs' dtype. It has no backward:
:func:`kernels.par.par` refuses it under autograd.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels.par.reference import (
    DEFAULT_DILATIONS,
    POSITION_WEIGHT,
    STD_EPS,
    TEMPERATURE,
    neighbour_offsets,
    position_softmax,
)


def _shifted_views(x: Tensor, offsets: Sequence[tuple[int, int]]) -> list[Tensor]:
    """Views of ``x`` ``[B, C, H, W]`` shifted by each ``(dy, dx)``, clamped at the border."""
    pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    height, width = x.shape[-2:]
    padded = F.pad(x, [pad, pad, pad, pad], mode="replicate")
    return [
        padded[:, :, pad + dy : pad + dy + height, pad + dx : pad + dx + width]
        for dy, dx in offsets
    ]


def affinity_fused(images: Tensor, dilations: Sequence[int]) -> Tensor:
    """Neighbour weights of every pixel, as :func:`kernels.par.reference.affinity`.

    Args:
        images: ``[B, 3, H, W]`` float, RGB in [0, 1].
        dilations: dilation of each ring of 8 neighbours, in pixels.

    Returns:
        ``[B, 8·len(dilations), H, W]`` of the images' dtype, contiguous; sums to 1.01 over dim 1.
    """
    offsets = neighbour_offsets(dilations)
    count = len(offsets)
    batch, channels, height, width = images.shape
    views = _shifted_views(images, offsets)

    mean = torch.zeros_like(images)
    for view in views:
        mean.add_(view)
    mean.div_(count)
    scratch = torch.empty_like(images)
    variance = torch.zeros_like(images)
    for view in views:
        torch.sub(view, mean, out=scratch)
        variance.addcmul_(scratch, scratch)
    # 1 / ((std + eps) · w1): one multiply per neighbour instead of two divisions.
    inv_scale = variance.div_(count - 1).sqrt_().add_(STD_EPS).mul_(TEMPERATURE).reciprocal_()
    del mean

    aff = torch.empty(batch, count, height, width, dtype=images.dtype, device=images.device)
    for n, view in enumerate(views):
        torch.sub(view, images, out=scratch).mul_(inv_scale).square_()
        torch.sum(scratch, dim=1, out=aff[:, n])
    aff.mul_(-1.0 / channels)

    # In-place softmax over the neighbour axis (max-subtracted, as torch.softmax).
    aff.sub_(aff.amax(dim=1, keepdim=True)).exp_()
    aff.div_(aff.sum(dim=1, keepdim=True))
    position = position_softmax(dilations, images.dtype).to(images.device)
    return aff.add_(POSITION_WEIGHT * position.view(1, count, 1, 1))


def propagate_fused(masks: Tensor, aff: Tensor, dilations: Sequence[int], num_iter: int) -> Tensor:
    """Run ``num_iter`` steps of ``M(p) ← Σ_n M(p + offset_n) · aff_n(p)``.

    Args:
        masks: ``[B, K, H, W]``; not modified.
        aff: ``[B, 8·len(dilations), H, W]`` from :func:`affinity_fused`.
        dilations: the dilations ``aff`` was built with.
        num_iter: propagation steps.

    Returns:
        ``[B, K, H, W]``, a new tensor.
    """
    offsets = neighbour_offsets(dilations)
    refined = torch.empty_like(masks)
    # One image at a time: its masks and the accumulator stay in cache across the 48
    # accumulations (about twice as fast as whole-batch ops at 8×6×160×160).
    for image in range(masks.shape[0]):
        weights = aff[image : image + 1]
        current = masks[image : image + 1].clone()
        result = torch.empty_like(current)
        for _ in range(num_iter):
            result.zero_()
            for n, view in enumerate(_shifted_views(current, offsets)):
                result.addcmul_(view, weights[:, n : n + 1])
            current, result = result, current
        refined[image] = current[0]
    return refined


def par_fused(
    images: Tensor, masks: Tensor, dilations: Sequence[int] = DEFAULT_DILATIONS, num_iter: int = 10
) -> Tensor:
    """PAR as :func:`kernels.par.reference.par_reference`, without neighbour stacks.

    Args:
        images: ``[B, 3, H, W]`` float, RGB in [0, 1].
        masks: ``[B, K, h, w]`` soft masks of the same dtype; resized bilinearly
            (``align_corners=True``) to ``(H, W)`` first.
        dilations: dilation of each ring of 8 neighbours, in pixels.
        num_iter: propagation steps.

    Returns:
        ``[B, K, H, W]`` refined masks.
    """
    masks = F.interpolate(masks, size=images.shape[-2:], mode="bilinear", align_corners=True)
    return propagate_fused(masks, affinity_fused(images, dilations), dilations, num_iter)
