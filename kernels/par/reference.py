"""PAR reference: the official 48-neighbour-stack formulation in plain PyTorch.

Pixel-adaptive refinement (PAR, from ToCo/CTFA ``model/PAR.py``) propagates soft masks
between pixels whose colours are alike. This module is the readable statement of the
maths; the fast paths in this package are tested against it. It materialises, like the
official code, every neighbour of every pixel: a ``[B, C, 48, H, W]`` stack per call,
which is what makes it slow and memory hungry.

For one pixel ``p`` with the 48 neighbours ``q_n`` (6 dilations × 8 directions):

* image term ``a_n = -mean_c( |I_c(q_n) - I_c(p)| / (std48_c(p) + 1e-8) / 0.3 )²``,
  where ``std48_c(p)`` is the unbiased std (÷47) of the 48 neighbour values of channel c;
* position term ``b_n = -(dist_n / (std48(dist) + 1e-8) / 0.3)²`` with ``dist_n = d`` or
  ``d·√2`` for diagonals;
* ``aff_n = softmax_n(a) + 0.01·softmax_n(b)``, which sums to 1.01 (an official quirk);
* 10 times: ``M(p) ← Σ_n M(q_n)·aff_n(p)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

#: (dy, dx) of the 8 neighbours per dilation, in the official order (centre excluded).
DIRECTIONS: tuple[tuple[int, int], ...] = (
    (-1, -1), (-1, 0), (-1, 1),
    (0, -1), (0, 1),
    (1, -1), (1, 0), (1, 1),
)  # fmt: skip

#: The official dilations: rings at 1, 2, 4, 8, 12 and 24 pixels.
DEFAULT_DILATIONS: tuple[int, ...] = (1, 2, 4, 8, 12, 24)
#: Width of the colour and position Gaussians, relative to the per-pixel std (official w1).
TEMPERATURE = 0.3
#: Weight of the position softmax added to the colour softmax (official w2).
POSITION_WEIGHT = 0.01
#: Added to the std before dividing, as in the official code.
STD_EPS = 1e-8


def neighbour_offsets(dilations: Sequence[int]) -> list[tuple[int, int]]:
    """Pixel offsets ``(dy, dx)`` of the ``8·len(dilations)`` neighbours, indexed ``8*i + k``."""
    return [(dy * d, dx * d) for d in dilations for dy, dx in DIRECTIONS]


def position_softmax(dilations: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
    """Softmax over the neighbours of the position term; the same for every pixel.

    Returns:
        ``[8·len(dilations)]`` tensor of ``dtype`` on the CPU, summing to 1.
    """
    dist = torch.tensor(
        [d * (math.sqrt(2.0) if dy and dx else 1.0) for d in dilations for dy, dx in DIRECTIONS],
        dtype=torch.float32,  # the official code builds it in float32
    ).to(dtype)
    return torch.softmax(-((dist / (dist.std() + STD_EPS) / TEMPERATURE) ** 2), dim=0)


def dilated_neighbours(x: Tensor, dilations: Sequence[int]) -> Tensor:
    """Stack the dilated 8-neighbourhoods of every pixel, with replicate padding.

    Args:
        x: ``[B, C, H, W]``.
        dilations: dilation of each ring of 8 neighbours, in pixels.

    Returns:
        ``[B, C, 8·len(dilations), H, W]``; entry ``n = 8*i + k`` is ``x`` shifted by
        ``dilations[i] · DIRECTIONS[k]`` (the value at ``(y+dy, x+dx)``, clamped to the image).
    """
    _, _, height, width = x.shape
    stack = []
    for d in dilations:
        padded = F.pad(x, [d, d, d, d], mode="replicate")
        for dy, dx in DIRECTIONS:
            y0, x0 = d + dy * d, d + dx * d
            stack.append(padded[:, :, y0 : y0 + height, x0 : x0 + width])
    return torch.stack(stack, dim=2)


def affinity(images: Tensor, dilations: Sequence[int]) -> Tensor:
    """Neighbour weights of every pixel: colour softmax + 0.01 · position softmax.

    Args:
        images: ``[B, 3, H, W]`` float, RGB in [0, 1].
        dilations: see :func:`dilated_neighbours`.

    Returns:
        ``[B, 1, 8·len(dilations), H, W]`` of the images' dtype; sums to 1.01 over dim 2.
    """
    neighbours = dilated_neighbours(images, dilations)
    std = neighbours.std(dim=2, keepdim=True)  # unbiased, over the 48 neighbours
    image_term = -(((neighbours - images.unsqueeze(2)).abs() / (std + STD_EPS) / TEMPERATURE) ** 2)
    image_term = image_term.mean(dim=1, keepdim=True)
    position = position_softmax(dilations, images.dtype).to(images.device)
    return torch.softmax(image_term, dim=2) + POSITION_WEIGHT * position[:, None, None]


def par_reference(
    images: Tensor, masks: Tensor, dilations: Sequence[int] = DEFAULT_DILATIONS, num_iter: int = 10
) -> Tensor:
    """PAR as the official code computes it (48-neighbour stack); differentiable.

    Args:
        images: ``[B, 3, H, W]`` float32 or float64, RGB in [0, 1].
        masks: ``[B, K, h, w]`` soft masks of the same dtype; resized bilinearly
            (``align_corners=True``) to ``(H, W)`` first.
        dilations: dilation of each ring of 8 neighbours, in pixels.
        num_iter: propagation steps.

    Returns:
        ``[B, K, H, W]`` refined masks; their channel sum is ``1.01**num_iter`` times the input's.
    """
    masks = F.interpolate(masks, size=images.shape[-2:], mode="bilinear", align_corners=True)
    aff = affinity(images, dilations)
    for _ in range(num_iter):
        masks = (dilated_neighbours(masks, dilations) * aff).sum(dim=2)
    return masks
