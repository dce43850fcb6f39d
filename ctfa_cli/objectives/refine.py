"""Pseudo-label refinement with PAR (reference ``refine_cams_with_bkg_v2``; FORMAT.md section 5).

The CAMs are refined by pixel-adaptive refinement (:func:`kernels.par.par`) at reduced
resolution, once against a high and once against a low constant background score; the two
arg-max maps are combined so that a pixel is background only when both agree, foreground where
the high map says so, and ignored in between.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ctfa_cli.objectives.cam import box_mask
from kernels.constants import device_constant

__all__ = ["denormalize", "refine_pseudo_label"]


def denormalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Undo the normalisation the way the training script does, for PAR's image input.

    ``u8 = trunc(x·std·255 + mean·255)``, returned as ``u8 / 255``: the reference converts to
    uint8, which **truncates**, so a round trip of ``k/255`` can give ``(k-1)/255``; that quirk
    is kept so that pseudo labels match the reference. Values are clamped to ``[0, 255]`` before
    truncation (the reference's uint8 cast would wrap out-of-range values; augmented images
    stay in range, so this only removes undefined behaviour).

    Args:
        x: normalised images ``[B, C, H, W]``.
        mean: per-channel mean of ``pixel/255`` (``DatasetSpec.mean``).
        std: per-channel standard deviation of ``pixel/255`` (``DatasetSpec.std``).

    Returns:
        float32 ``[B, C, H, W]`` in ``[0, 1]``.

    Raises:
        ValueError: ``mean``/``std`` lengths differ from the channel count.
    """
    channels = x.shape[1]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean/std have {len(mean)}/{len(std)} values for {channels} channels")
    shape = (1, channels, 1, 1)
    # Made once per device (a host-made tensor copied every step would wait for the GPU).
    scale = device_constant([s * 255 for s in std], dtype=x.dtype, device=x.device).view(shape)
    shift = device_constant([m * 255 for m in mean], dtype=x.dtype, device=x.device).view(shape)
    pixels = (x * scale + shift).clamp(0, 255).floor()
    return pixels.to(torch.float32) / 255.0


def refine_pseudo_label(
    images_denorm: Tensor,
    cams: Tensor,
    cls_labels: Tensor,
    *,
    high_thre: float,
    low_thre: float,
    ignore_index: int = 255,
    img_box: Tensor | None = None,
    down_scale: int = 2,
    dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
    num_iter: int = 10,
    has_background: bool = True,
) -> Tensor:
    """Refine CAMs into a pseudo label with PAR (reference ``refine_cams_with_bkg_v2``).

    With a background (FORMAT.md section 5): images are resized to ``(H//d, W//d)``
    (bilinear, ``align_corners=False``); for ``thr`` in (high, low), a constant plane ``thr``
    is prepended to the CAMs and the stack resized likewise; a softmax runs over the
    background plane and the present classes only; PAR refines it on the resized images; the
    result is resized back to ``(H, W)`` and its arg-max gives labels (0 background, ``k+1``
    class channel ``k``). Inside each box: ``out = L_high``, ``ignore_index`` where
    ``L_high == 0``, and 0 where both maps are 0. Outside the box: ``ignore_index``.

    The reference loops over images; here each image's present channels are gathered first
    (in the reference's order) and padded to the batch's largest count with ``-inf`` logits
    (softmax weight exactly 0, never the arg-max), so the whole batch and both thresholds go
    through one PAR call (PAR propagates every channel with the same per-image affinities) and
    absent classes cost nothing. PAR's output is compared by arg-max, where the reference came
    as close as 5e-7 to a tie, so a different float summation order may flip a few pixels.

    Without a background (``has_background=False``, DeepGlobe), there is no background plane
    and the thresholds play no part: the softmax runs over the present classes, PAR refines
    it, and the label is the arg-max class (no shift) inside the box. An image with no present
    class is all ``ignore_index``.

    Args:
        images_denorm: ``[B, 3, H, W]`` RGB in ``[0, 1]`` (see :func:`denormalize`).
        cams: ``[B, Cc, H, W]`` CAMs (the masked ``valid_cam`` in training).
        cls_labels: ``[B, Cc]`` multi-hot image labels.
        high_thre: high background score.
        low_thre: low background score.
        ignore_index: label of ignored pixels.
        img_box: integer ``[B, 4]`` boxes ``[h0, h1, w0, w1]``; None means the whole image.
        down_scale: PAR runs at ``(H // down_scale, W // down_scale)``.
        dilations: PAR dilations.
        num_iter: PAR iterations.
        has_background: the dataset's background policy.

    Returns:
        float32 ``[B, H, W]`` labels (0, classes, ``ignore_index``), without gradient.

    Raises:
        ValueError: shapes disagree.
    """
    from kernels.par import par

    b, _, h, w = images_denorm.shape
    if cams.shape[0] != b or cams.shape[2:] != (h, w):
        raise ValueError(f"cams {tuple(cams.shape)} do not match images {(b, h, w)}")
    if cls_labels.shape != cams.shape[:2]:
        raise ValueError(f"cls_labels {tuple(cls_labels.shape)} do not match cams")
    small = (h // down_scale, w // down_scale)
    present = cls_labels != 0
    with torch.no_grad():
        small_images = _resize(images_denorm, small)
        # Per image, the present channels first in ascending order (the reference's
        # valid_key), padded with absent channels to every class: a bound known without
        # reading the labels on the host (the batch's largest count would wait for the GPU).
        # Absent channels get probability 0, which PAR keeps at 0 and the arg-max skips, so
        # the labels are those of the tightest bound (the reference's refine cases of
        # tests/test_parity.py).
        # With a background, channel 0 of the stack is the constant background plane.
        if has_background:
            present = torch.cat([present.new_ones(b, 1), present], dim=1)
        num_keys = present.shape[1]
        keys = torch.sort((~present).to(torch.uint8), dim=1, stable=True).indices[:, :num_keys]
        absent = ~present.gather(1, keys)[:, None, :, None, None]  # [B, 1, keys, 1, 1]
        # Bilinear resizing works channel by channel, so the selected CAMs are resized once
        # and shared by both thresholds, and each constant plane is resized on its own.
        if has_background:
            cam_keys = keys[:, 1:] - 1  # keys[:, 0] is the background plane
            planes = [torch.full_like(cams[:, :1], thr) for thr in (high_thre, low_thre)]
            small_planes = [_resize(plane, small) for plane in planes]
        else:
            cam_keys, small_planes = keys, []
        selected = cams.gather(1, cam_keys[:, :, None, None].expand(-1, -1, h, w))
        small_cams = _resize(selected, small)
        # [B, G, keys, h', w']: G maps (high and low background scores, or the CAMs alone).
        logits = torch.stack([torch.cat([plane, small_cams], dim=1) for plane in small_planes]
                             or [small_cams], dim=1)
        groups = logits.shape[1]
        logits = logits.masked_fill(absent, float("-inf"))
        # Softmax over the present channels (padding gets weight 0; an image without any
        # present channel gives NaN, zeroed here and ignored below).
        probs = logits.softmax(dim=2).masked_fill(absent, 0)
        refined = par(small_images, probs.reshape(b, groups * num_keys, *small), dilations,
                      num_iter)
        refined = _resize(refined, (h, w)).reshape(b, groups, num_keys, h, w)
        best = _argmax_present(refined, absent)  # [B, G, H, W]
        labels = keys[torch.arange(b, device=keys.device)[:, None, None, None], best]
        labels = labels.to(torch.float32)  # a key (channel index) is the label value

        keep = torch.ones(b, h, w, dtype=torch.bool, device=cams.device)
        if img_box is not None:
            keep = box_mask(img_box, h, w, device=cams.device)
        if not has_background:
            keep = keep & present.any(dim=1)[:, None, None]
        labels = labels.masked_fill(~keep[:, None], ignore_index)
        if not has_background:
            return labels[:, 0]
        high, low = labels[:, 0], labels[:, 1]
        out = high.masked_fill(high == 0, ignore_index)
        return out.masked_fill((high + low) == 0, 0)


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _argmax_present(scores: Tensor, absent: Tensor) -> Tensor:
    """Arg-max over dim 2 of ``[B, G, K, H, W]`` among channels not ``absent`` ``[B, 1, K, 1, 1]``.

    The first index wins a tie, as with ``torch.argmax`` (which is several times slower along
    a middle dimension); channel 0 is taken where every channel is absent.
    """
    best = torch.zeros(scores.shape[:2] + scores.shape[3:], dtype=torch.int64,
                       device=scores.device)
    best_score = scores[:, :, 0].masked_fill(absent[:, :, 0], float("-inf"))
    for k in range(1, scores.shape[2]):
        score = scores[:, :, k].masked_fill(absent[:, :, k], float("-inf"))
        better = score > best_score
        best.masked_fill_(better, k)
        best_score = torch.where(better, score, best_score)
    return best


# PAR's colour affinities use the first three bands (RGB or IRRG); extra bands such as a DSM
# carry no colour and are left out, as the reference only ever sees three.
COLOUR_BANDS = 3


def pseudo_label_from_cams(
    images: Tensor,
    cam: Tensor,
    labels: Tensor,
    spec,
    cfg,
    *,
    img_box: Tensor | None = None,
) -> Tensor:
    """The training step's refined pseudo label of a normalised batch.

    CAMs of the present classes, PAR on the de-normalised colour bands (with the reference's
    uint8 truncation) at half resolution, high/low background thresholds combined. Training and
    evaluation (``--target pseudo``) and ``ctfa pseudolabel`` all go through here.

    Args:
        images: normalised ``[B, in_chans, H, W]``.
        cam: float ``[B, Cc, H, W]`` CAMs of the final classifier in ``[0, 1]``.
        labels: ``[B, Cc]`` multi-hot image-level labels.
        spec: the :class:`~ctfa_cli.config.DatasetSpec` (normalisation, background policy,
            ignore index).
        cfg: the :class:`~ctfa_cli.config.TrainConfig` (``high_thre``, ``low_thre``,
            ``par_dilations``, ``par_iters``).
        img_box: int ``[B, 4]`` crop boxes ``[h0, h1, w0, w1]``; None: whole images.

    Returns:
        float32 ``[B, H, W]`` labels (0, classes, ``ignore_index``).
    """
    valid_cam = cam * labels.to(cam.dtype)[:, :, None, None]
    colour = denormalize(images[:, :COLOUR_BANDS].float(), spec.mean[:COLOUR_BANDS],
                         spec.std[:COLOUR_BANDS])
    return refine_pseudo_label(
        colour, valid_cam, labels, high_thre=cfg.high_thre, low_thre=cfg.low_thre,
        ignore_index=spec.ignore_index, img_box=img_box, down_scale=2,
        dilations=cfg.par_dilations, num_iter=cfg.par_iters, has_background=spec.has_background,
    )
