"""Dense-CRF inference: the mean field of :mod:`kernels.dense_crf.crf_reference`, batched,
on CPU and CUDA, with nothing to compile.

Both kernels are filtered by :mod:`kernels.bilateral`:

* ``method="lattice"`` (default): the permutohedral lattice, Krähenbühl's algorithm as
  pydensecrf runs it, built once per image and kernel and reused by every iteration (the
  Gaussian kernel on a 2-D lattice of positions, the bilateral one on the 5-D lattice). Like
  pydensecrf it approximates the Gaussian sums (see :mod:`kernels.bilateral.lattice` for the
  error), so it reproduces pydensecrf's labels, not the dense formula's.
* ``method="exact"``: the dense Gaussian sums (:func:`kernels.bilateral.bilateral_filter`,
  method ``exact``; the Gaussian kernel as a bilateral one over a constant image), O(N²) per
  iteration: the ground truth for small images.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from kernels.bilateral import bilateral_filter
from kernels.bilateral.lattice import _channel_pairs, build_lattice, filter_on_lattice
from kernels.bilateral.reference import pixel_features
from kernels.dense_crf.crf_reference import OFFICIAL_CRF, UNARY_CLIP, CRFParams

METHODS = ("lattice", "exact")


def dense_crf(probs: Tensor, images: Tensor, params: CRFParams = OFFICIAL_CRF, *,
              method: str = "lattice") -> Tensor:
    """Mean-field marginals of a fully connected CRF over each image.

    Args:
        probs: ``[B, C, H, W]`` class probabilities (softmax of the segmentation logits).
        images: ``[B, 3, H, W]`` RGB (any three bands the model sees), 0..255, same device.
        params: iterations, kernel weights and bandwidths (default: the official scripts').
        method: ``lattice`` (pydensecrf's approximation) or ``exact`` (dense sums).

    Returns:
        ``[B, C, H, W]`` float32 marginals; their argmax is the CRF label.

    Raises:
        ValueError: an unknown method, or shapes that do not match.
    """
    if method not in METHODS:
        raise ValueError(f"dense CRF: method must be one of {METHODS}, not {method!r}")
    if probs.dim() != 4 or images.shape != (probs.shape[0], 3, *probs.shape[2:]):
        raise ValueError(f"dense CRF: probs [B, C, H, W] and images [B, 3, H, W] expected, "
                         f"got {tuple(probs.shape)} and {tuple(images.shape)}")
    images = images.float()
    out = torch.empty_like(probs, dtype=torch.float32)
    for index in range(probs.shape[0]):
        image = images[index:index + 1]
        if method == "lattice":
            kernels = [(params.pos_w, _lattice_kernel(image, None, params.pos_xy_std)),
                       (params.bi_w, _lattice_kernel(image, params.bi_rgb_std,
                                                     params.bi_xy_std))]
        else:
            flat = torch.zeros_like(image)  # no colour: the Gaussian kernel over positions
            kernels = [(params.pos_w, _exact_kernel(flat, 1.0, params.pos_xy_std)),
                       (params.bi_w, _exact_kernel(image, params.bi_rgb_std, params.bi_xy_std))]
        out[index] = _mean_field(probs[index].float(), kernels, params.iterations)
    return out


Kernel = Callable[[Tensor], Tensor]  # [K, H, W] → [K, H, W]


def _mean_field(probs: Tensor, kernels: list[tuple[float, Kernel]], iterations: int) -> Tensor:
    """``[C, H, W]`` probabilities → marginals (see the reference's update)."""
    unary = -torch.log(probs.clamp(UNARY_CLIP, 1.0))
    ones = torch.ones_like(probs[:1])
    norms = [torch.rsqrt(kernel(ones) + 1e-20) for _, kernel in kernels]
    q = torch.softmax(-unary, dim=0)
    for _ in range(iterations):
        energy = -unary
        for (weight, kernel), norm in zip(kernels, norms, strict=True):
            energy = energy + weight * norm * kernel(q * norm)
        q = torch.softmax(energy, dim=0)
    return q


def _exact_kernel(image: Tensor, sigma_rgb: float, sigma_xy: float) -> Kernel:
    def apply(values: Tensor) -> Tensor:
        return bilateral_filter(image, values[None].contiguous(), sigma_rgb, sigma_xy,
                                method="exact")[0]
    return apply


def _lattice_kernel(image: Tensor, sigma_rgb: float | None, sigma_xy: float) -> Kernel:
    """The lattice of one image's features, built once: positions only when ``sigma_rgb`` is
    None (the Gaussian kernel), positions and colours otherwise."""
    features = pixel_features(image, 1.0 if sigma_rgb is None else sigma_rgb, sigma_xy)
    if sigma_rgb is None:
        features = features[:, :2].contiguous()
    lattice = build_lattice(features)

    def apply(values: Tensor) -> Tensor:
        channels, height, width = values.shape
        pairs = _channel_pairs(values.reshape(1, channels, -1).float())  # [P, 1, N, 2]
        pairs = pairs.reshape(pairs.shape[0], -1, 2)
        filtered = filter_on_lattice(lattice, pairs, out=torch.empty_like(pairs))
        return filtered.permute(0, 2, 1).reshape(-1, height, width)[:channels]
    return apply
