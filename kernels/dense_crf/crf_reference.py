"""Readable reference of dense-CRF inference, float64, O(N²) (small images only).

The fully connected CRF of Krähenbühl & Koltun (NIPS 2011) with Potts compatibility, as
pydensecrf runs it (``DenseCRF2D`` + ``addPairwiseGaussian`` + ``addPairwiseBilateral`` +
``inference``), which is what the official ``utils/dcrf.py::DenseCRF`` calls. For one image of
N pixels and C classes, with probabilities P:

    U      = -log(clip(P, 1e-5, 1))                          unary (``unary_from_softmax``)
    Q⁰     = softmax_c(-U)
    Qᵗ⁺¹   = softmax_c(-U + Σ_m w_m · n_m ⊙ K_m (n_m ⊙ Qᵗ))    mean-field update

with two kernels ``K_m[i, j] = exp(-|f_i - f_j|² / 2)`` over pixel features (self term
included, as pydensecrf's lattice carries a pixel's own value back to it):

* the Gaussian (smoothness) kernel, ``f = [x/σ_pos, y/σ_pos]``, weight ``pos_w``;
* the bilateral (appearance) kernel, ``f = [x/σ_xy, y/σ_xy, R/σ_rgb, G/σ_rgb, B/σ_rgb]``,
  weight ``bi_w``;

and pydensecrf's default symmetric normalisation ``n_m = 1/√(K_m 1)``. Potts compatibility
``μ(l, l') = -w·[l = l']`` turns the message into ``+w · K Q``: a label gains where similar
pixels hold it. ``x`` is the column and ``y`` the row, as in pydensecrf.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: pydensecrf's ``unary_from_softmax`` clips probabilities to [UNARY_CLIP, 1] before the log.
UNARY_CLIP = 1e-5


@dataclass(frozen=True)
class CRFParams:
    """Mean-field iterations and the two kernels' weights and bandwidths.

    The defaults are the official evaluation scripts' (``infer_seg_potsdam.py`` … build
    ``DenseCRF(iter_max=10, pos_w=1, pos_xy_std=1, bi_w=4, bi_xy_std=121, bi_rgb_std=5)``).

    Attributes:
        iterations: mean-field updates.
        pos_w, pos_xy_std: Gaussian kernel weight and spatial bandwidth (pixels).
        bi_w, bi_xy_std, bi_rgb_std: bilateral kernel weight, spatial (pixels) and colour
            (grey levels) bandwidths.
    """

    iterations: int = 10
    pos_w: float = 1.0
    pos_xy_std: float = 1.0
    bi_w: float = 4.0
    bi_xy_std: float = 121.0
    bi_rgb_std: float = 5.0


#: The official evaluation's CRF.
OFFICIAL_CRF = CRFParams()


def gaussian_matrix(features: Tensor) -> Tensor:
    """``[N, N]`` ``exp(-|f_i - f_j|²/2)`` of ``[d, N]`` features (float64)."""
    difference = features[:, :, None] - features[:, None, :]
    return torch.exp(-0.5 * (difference ** 2).sum(0))


def dense_crf_reference(probs: Tensor, image: Tensor, params: CRFParams = OFFICIAL_CRF) -> Tensor:
    """Mean-field marginals of one image, in float64.

    Args:
        probs: ``[C, H, W]`` class probabilities (each pixel sums to 1).
        image: ``[3, H, W]`` RGB, 0..255.
        params: iterations and kernels.

    Returns:
        ``[C, H, W]`` float64 marginals Q after ``params.iterations`` updates.
    """
    classes, height, width = probs.shape
    cols = torch.arange(width, dtype=torch.float64).expand(height, width).reshape(-1)
    rows = torch.arange(height, dtype=torch.float64)[:, None].expand(height, width).reshape(-1)
    colours = image.double().reshape(3, -1)
    smoothness = gaussian_matrix(torch.stack([cols, rows]) / params.pos_xy_std)
    appearance = gaussian_matrix(torch.cat([torch.stack([cols, rows]) / params.bi_xy_std,
                                            colours / params.bi_rgb_std]))
    kernels = [(params.pos_w, smoothness), (params.bi_w, appearance)]
    norms = [1.0 / torch.sqrt(matrix.sum(1) + 1e-20) for _, matrix in kernels]

    unary = -torch.log(probs.double().reshape(classes, -1).clamp(UNARY_CLIP, 1.0))
    q = torch.softmax(-unary, dim=0)
    for _ in range(params.iterations):
        energy = -unary
        for (weight, matrix), norm in zip(kernels, norms, strict=True):
            energy = energy + weight * norm * ((q * norm) @ matrix.T)
        q = torch.softmax(energy, dim=0)
    return q.reshape(classes, height, width)
