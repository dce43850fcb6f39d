"""Dense-CRF energy loss (Tang et al.'s regularised loss, as CTFA uses it), on device end to end.

Everything, the bilateral filter included, runs on the inputs' device: there is no copy to host
memory and back, which the reference code makes twice per step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels.bilateral import bilateral_filter
from kernels.constants import device_constant


class _DenseEnergy(torch.autograd.Function):
    """``E = -Σ S·(A S ⊙ Gate) / B`` with ``S = prob·ROI``; backward as the reference defines it.

    The reference's gradient is ``dE/dprob = -2·(A S ⊙ Gate)/B · ROI``: the gate, although it
    depends on ``prob``, is held constant, and the filter is treated as symmetric.
    """

    @staticmethod
    def forward(
        ctx,
        prob: Tensor,
        images: Tensor,
        roi: Tensor,
        gate: Tensor,
        sigma_rgb: float,
        sigma_xy: float,
        method: str,
    ) -> Tensor:
        segmentation = prob * roi[:, None]
        filtered = bilateral_filter(images, segmentation, sigma_rgb, sigma_xy, method=method)
        filtered = filtered * gate[:, None]
        ctx.save_for_backward(filtered, roi)
        return -(segmentation * filtered).sum().reshape(1) / prob.shape[0]

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        filtered, roi = ctx.saved_tensors
        grad_prob = -2 * grad_output * filtered / filtered.shape[0] * roi[:, None]
        return grad_prob, None, None, None, None, None, None


def energy_loss(
    img: Tensor,
    logit: Tensor,
    label: Tensor,
    img_box: Tensor | None,
    *,
    mean: Sequence[float] = (123.675, 116.28, 103.53),
    std: Sequence[float] = (58.395, 57.12, 57.375),
    weight: float = 1e-7,
    sigma_rgb: float = 15.0,
    sigma_xy: float = 100.0,
    scale_factor: float = 0.5,
    method: str = "lattice",
) -> Tensor:
    """Dense-CRF energy regulariser of the segmentation, at a reduced resolution.

    Semantics of the official ``get_energy_loss(img, logit, label, img_box,
    DenseEnergyLoss(weight, sigma_rgb, sigma_xy, scale_factor))``:

    1. ``prob = softmax(logit)``; ``ROI`` = 1 inside each image's box; ``img255 = img·std+mean``.
    2. Downscale by ``scale_factor`` with ``recompute_scale_factor=True`` (so the sampling uses
       the exact in/out size ratio): nearest for the image, ROI and label, bilinear
       (``align_corners=False``) for ``prob``.
    3. ``Gate = ROI - max_k prob``, 1 where the label is 255, clamped at 0.
    4. ``S = prob·ROI``; ``AS = bilateral(img255, S, sigma_rgb, sigma_xy·scale_factor)·Gate``.
    5. ``loss = weight · (-Σ S·AS / B)``; backward ``dS = -2·g·AS/B·ROI`` (gate constant),
       flowing through the resize and the softmax to ``logit``.

    Args:
        img: ``[B, 3, H, W]`` float normalised RGB image (``(u8/255 - mean/255)/(std/255)``).
        logit: ``[B, C, H, W]`` float segmentation logits; the loss is differentiable w.r.t. it.
        label: ``[B, H, W]`` float or int, 0..C-1 or 255 (ignore); cast to uint8 like the
            reference.
        img_box: ``[B, 4]`` int ``[h0, h1, w0, w1]``: Python half-open slices of the real image
            in the crop (negative values count from the end, bounds clamp); None: whole image.
        mean, std: the normalisation to undo, in grey levels (RGB order).
        weight: loss weight.
        sigma_rgb: colour bandwidth, grey levels.
        sigma_xy: spatial bandwidth, pixels at full resolution (scaled with the image).
        scale_factor: downscaling factor, e.g. 0.5.
        method: ``"lattice"`` (the reference's permutohedral approximation) or ``"exact"``
            (dense Gaussian sum; its values are about 2× the lattice's, which under-weighs the
            Gaussian by a data-dependent factor of ~0.4-0.6, see kernels.bilateral.lattice).

    Returns:
        ``[1]`` tensor in ``logit``'s dtype, on ``logit``'s device.

    Raises:
        ValueError: mismatched shapes.
        CtfaUsageError: an unknown ``method`` (from the filter).
    """
    batch, _, height, width = logit.shape
    if (
        img.shape[0] != batch
        or img.shape[2:] != logit.shape[2:]
        or label.shape != (batch, height, width)
    ):
        raise ValueError(
            f"energy_loss: img {list(img.shape)}, logit {list(logit.shape)} and "
            f"label {list(label.shape)} must share batch and size"
        )
    device = logit.device
    prob = torch.softmax(logit, dim=1)
    roi = _box_mask(img_box, batch, height, width, device, prob.dtype)
    std_t = device_constant(list(std), dtype=img.dtype, device=device)[None, :, None, None]
    mean_t = device_constant(list(mean), dtype=img.dtype, device=device)[None, :, None, None]
    img255 = img * std_t + mean_t  # two roundings, as the reference's x*std + mean

    def down(x: Tensor, **kwargs) -> Tensor:
        return F.interpolate(x, scale_factor=scale_factor, recompute_scale_factor=True, **kwargs)

    small_img = down(img255.detach())
    small_prob = down(prob, mode="bilinear", align_corners=False)
    small_roi = down(roi[:, None])[:, 0]
    # Nearest resizing only picks pixels, so resizing the ignore mask equals the reference's
    # resizing of the uint8 label followed by == 255.
    ignore = (label.to(device=device, dtype=torch.uint8) == 255)[:, None].to(prob.dtype)
    small_ignore = down(ignore)[:, 0] > 0.5

    with torch.no_grad():
        gate = small_roi - small_prob.max(dim=1).values
        gate = torch.where(small_ignore, torch.ones_like(gate), gate).clamp_min(0)
    energy = _DenseEnergy.apply(
        small_prob, small_img, small_roi, gate, sigma_rgb, sigma_xy * scale_factor, method
    )
    return weight * energy


def _box_mask(
    img_box: Tensor | None,
    batch: int,
    height: int,
    width: int,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """``[B, H, W]`` mask, 1 inside ``img[b, h0:h1, w0:w1]`` (Python slice semantics), else 0."""
    if img_box is None:
        return torch.ones(batch, height, width, dtype=dtype, device=device)
    box = img_box.to(device=device, dtype=torch.int64)
    bounds = device_constant([height, height, width, width], dtype=torch.int64, device=device)
    box = torch.where(box < 0, box + bounds, box).clamp(min=torch.zeros_like(bounds), max=bounds)
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    inside_rows = (rows[None, :] >= box[:, 0:1]) & (rows[None, :] < box[:, 1:2])
    inside_cols = (cols[None, :] >= box[:, 2:3]) & (cols[None, :] < box[:, 3:4])
    return (inside_rows[:, :, None] & inside_cols[:, None, :]).to(dtype)
