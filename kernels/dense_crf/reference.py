"""Readable reference of the dense-CRF energy loss and of the gradient the reference code uses.

Plain float64 PyTorch, one step per line of the official ``get_energy_loss`` +
``DenseEnergyLoss`` + ``DenseEnergyLossFunction``, with the bilateral filter passed in (the exact
float64 Gaussian sum by default). Tests compare the fast autograd path against it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels.bilateral.reference import bilateral_filter_reference


def energy_loss_reference(
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
    bilateral: Callable[[Tensor, Tensor, float, float], Tensor] = bilateral_filter_reference,
) -> tuple[Tensor, Tensor]:
    """The energy loss and the reference-defined gradient with respect to ``logit``, in float64.

    Args: as :func:`kernels.dense_crf.energy_loss`; ``bilateral(images, values, sigma_rgb,
        sigma_xy)`` is the filter.

    Returns:
        ``loss`` ``[1]`` float64 and ``grad_logit`` (same shape as ``logit``, float64): the
        gradient of ``loss`` as the reference defines it, ``dS = -2·weight·AS/B·ROI`` (gate
        held constant) pushed back through the resize and the softmax.
    """
    logit = logit.detach().double().requires_grad_(True)
    batch, _, height, width = logit.shape
    prob = torch.softmax(logit, dim=1)

    roi = torch.zeros(batch, height, width, dtype=torch.float64, device=logit.device)
    for index in range(batch):
        if img_box is None:
            roi[index] = 1
        else:
            h0, h1, w0, w1 = (int(v) for v in img_box[index])
            roi[index, h0:h1, w0:w1] = 1

    img255 = img.double().clone()
    for c in range(3):
        img255[:, c] = img.double()[:, c] * std[c] + mean[c]

    def down(x: Tensor, **kwargs) -> Tensor:
        return F.interpolate(x, scale_factor=scale_factor, recompute_scale_factor=True, **kwargs)

    small_img = down(img255)
    small_prob = down(prob, mode="bilinear", align_corners=False)
    small_roi = down(roi[:, None])[:, 0]
    unlabeled = down(label.to(torch.uint8)[:, None].double())[:, 0] == 255

    gate = small_roi - small_prob.max(dim=1).values
    gate[unlabeled] = 1
    gate[gate < 0] = 0
    segmentation = small_prob.detach() * small_roi[:, None]
    filtered = bilateral(small_img, segmentation, sigma_rgb, sigma_xy * scale_factor).double()
    filtered = filtered * gate[:, None]
    loss = weight * (-(segmentation * filtered).sum() / batch)

    grad_small_prob = -2 * weight * filtered / batch * small_roi[:, None]
    (grad_logit,) = torch.autograd.grad(small_prob, logit, grad_small_prob)
    return loss.reshape(1).detach(), grad_logit
