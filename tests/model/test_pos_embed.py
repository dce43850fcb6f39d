"""The backbone resamples position embeddings as the reference does: plain bicubic.

Expected values come from a direct implementation of Keys' cubic convolution (a = -0.75,
half-pixel centres, border replication), the kernel of ``F.interpolate(mode="bicubic",
antialias=False)`` that the reference's ``prepare_tokens`` calls; timm's own resampling
(antialias=True) must differ from it on the same grids, so these tests tell the two apart.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from timm.layers import resample_abs_pos_embed

from ctfa_cli.model.backbone import ViTBackbone, resample_pos_embed


def keys_cubic(t: float, a: float = -0.75) -> float:
    t = abs(t)
    if t <= 1:
        return (a + 2) * t**3 - (a + 3) * t**2 + 1
    if t < 2:
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return 0.0


def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` weights of 1-D bicubic resampling, align_corners=False."""
    w = np.zeros((n_out, n_in))
    for o in range(n_out):
        x = (o + 0.5) * n_in / n_out - 0.5
        base = int(np.floor(x))
        for k in range(base - 1, base + 3):
            w[o, min(max(k, 0), n_in - 1)] += keys_cubic(x - k)
    return w


def reference_resample(pos: np.ndarray, old: tuple[int, int], new: tuple[int, int]) -> np.ndarray:
    """``pos`` ``[1, 1 + gh·gw, D]`` with its patch part resampled to ``new`` (class token kept)."""
    dim = pos.shape[-1]
    grid = pos[0, 1:].reshape(*old, dim)
    rows, cols = bicubic_matrix(old[0], new[0]), bicubic_matrix(old[1], new[1])
    out = np.einsum("ai,bj,ijd->abd", rows, cols, grid).reshape(1, -1, dim)
    return np.concatenate([pos[:, :1], out], axis=1)


@pytest.mark.parametrize(("old", "new"), [((6, 6), (3, 3)), ((6, 6), (9, 9)), ((4, 5), (6, 3))])
def test_resampling_is_plain_bicubic_not_timms_antialiased_one(old, new):
    gen = torch.Generator().manual_seed(1)
    pos = torch.randn(1, 1 + old[0] * old[1], 8, generator=gen)
    ours = resample_pos_embed(pos, new, old, 1)
    expected = reference_resample(pos.double().numpy(), old, new)
    # float32 arithmetic (source coordinates included) against float64: ~1e-6.
    np.testing.assert_allclose(ours.double().numpy(), expected, rtol=1e-5, atol=1e-5)
    timm_way = resample_abs_pos_embed(pos, list(new), list(old), num_prefix_tokens=1)
    assert (timm_way - ours).abs().max() > 1e-2  # the case the reference differs from timm


def test_same_grid_is_the_embedding_itself():
    pos = torch.randn(1, 37, 8)
    assert resample_pos_embed(pos, (6, 6), (6, 6), 1) is pos


def test_the_vit_adds_the_reference_resampled_embedding_at_other_sizes():
    backbone = ViTBackbone("vit_tiny_patch16_224")  # native grid 14×14
    vit = backbone.vit
    patches = vit.patch_embed(torch.randn(2, 3, 160, 96))  # [2, 10, 6, D]
    tokens = vit._pos_embed(patches)
    pos = reference_resample(vit.pos_embed.detach().double().numpy(), (14, 14), (10, 6))
    expected = np.concatenate(
        [np.broadcast_to(vit.cls_token.detach().double().numpy(), (2, 1, vit.embed_dim)),
         patches.detach().double().numpy().reshape(2, 60, -1)], axis=1) + pos
    np.testing.assert_allclose(tokens.detach().double().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_copies_of_the_backbone_use_their_own_embeddings():
    import copy

    backbone = ViTBackbone("vit_tiny_patch16_224")
    twin = copy.deepcopy(backbone)
    with torch.no_grad():
        twin.vit.pos_embed.add_(1.0)
    x = torch.randn(1, 3, 64, 64)
    assert not torch.allclose(backbone(x).final, twin(x).final)
