"""Class activation maps (CAMs) and what CTFA derives from them in one training step.

* :func:`multi_scale_cams`: multi-scale + flip CAMs of the final and auxiliary classifiers,
  normalised to ``[0, 1]`` per image and channel (the reference ``multi_scale_cam2``).
* :func:`cam_to_label`: CAM → pseudo label, plain or restricted to crop boxes with an ignored
  middle band (reference ``cam_to_label``).
* :func:`roi_mask`: CAM → 0 (certain background) / 1 (uncertain) / 2 (certain foreground).
* :func:`sample_local_crops`: the ROI-guided local views of CTC, with negative flags.
* :func:`label_to_aff_mask`: low-resolution pseudo label → pairwise affinity targets of PTC.
* :func:`box_mask` and :func:`scale_box`: crop boxes (``[h0, h1, w0, w1]``, the rows and columns
  of a training crop that hold real image) as masks, and rescaled to a feature map.

Conventions: CAMs hold the CAM classes only (``Cc = num_cam_classes``). With a background
class (``has_background=True``: Potsdam, Vaihingen, iSAID) channel ``k`` is label ``k + 1`` and
label 0 is background; without one (DeepGlobe) channel ``k`` is label ``k``. ``cls_label`` is a
``[B, Cc]`` multi-hot vector (any dtype; non-zero means present). Thresholds are Python floats
compared against the CAM tensor in the CAM's dtype (float32 in training: ``float32(0.7) >= 0.7``
holds), as the reference does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "box_mask",
    "checked_boxes",
    "cam_to_label",
    "label_to_aff_mask",
    "multi_scale_cams",
    "roi_mask",
    "sample_local_crops",
    "scale_box",
]


def multi_scale_cams(
    model: torch.nn.Module,
    images: Tensor,
    scales: Sequence[float] = (1.0, 0.5, 1.5),
    *,
    flip: bool = True,
    plain: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Multi-scale, flip-augmented CAMs of both classifiers (reference ``multi_scale_cam2``).

    The original size always comes first (as in the reference, whatever ``scales`` holds); then
    every scale ``s != 1.0`` resizes the images to ``(int(s·H), int(s·W))`` (bilinear,
    ``align_corners=False``). At each size the images and their horizontal flips go through
    ``model.cams`` in one batch; both halves are upsampled to ``(H, W)`` (bilinear,
    ``align_corners=False``), combined by an element-wise **max** of the plain half and the
    flipped-back half, and passed through ReLU. The maps are summed over sizes and min-max
    normalised per image and channel: ``(cam - min) / (max - min + 1e-5)``.

    Args:
        model: a network with ``cams(x [N,3,h,w]) -> (cam [N,Cc,h',w'], aux_cam [N,Cc,h',w'])``
            returning raw (pre-ReLU) CAMs at feature resolution.
        images: normalised images ``[B, 3, H, W]``.
        scales: resize factors; ``1.0`` is implied and computed first.
        flip: also use the horizontal flips (the reference always does).
        plain: ``model.cams(images)`` when the caller already has it (the training step's
            forward pass computes the same features); the model then runs only on the other
            inputs (the flips and the other scales).

    Returns:
        ``(cam, aux_cam)``, each ``[B, Cc, H, W]`` float32 in ``[0, 1)``, without gradient.
    """
    b, _, h, w = images.shape
    sizes = [(h, w)] + [(int(s * h), int(s * w)) for s in scales if s != 1.0]
    totals: list[Tensor] = []
    with torch.no_grad():
        for index, size in enumerate(sizes):
            x = images if index == 0 else F.interpolate(
                images, size=size, mode="bilinear", align_corners=False
            )
            if index == 0 and plain is not None:
                raws = ([torch.cat(pair) for pair in zip(plain, model.cams(x.flip(-1)),
                                                          strict=True)]
                        if flip else plain)
            else:
                raws = model.cams(torch.cat([x, x.flip(-1)], dim=0) if flip else x)
            for which, raw in enumerate(raws):
                # float32 from here on, also under bfloat16 autocast: the maps are summed,
                # normalised and thresholded.
                up = F.interpolate(raw.float(), size=(h, w), mode="bilinear",
                                   align_corners=False)
                if flip:
                    up = torch.max(up[:b], up[b:].flip(-1))
                up = F.relu(up)
                if index == 0:
                    totals.append(up)
                else:
                    totals[which] = totals[which] + up
        return tuple(_min_max_normalise(t) for t in totals)  # type: ignore[return-value]


def _min_max_normalise(cam: Tensor) -> Tensor:
    """``(cam - min) / (max - min + 1e-5)`` over each ``[H, W]`` plane of ``[B, C, H, W]``."""
    cam = cam - cam.amin(dim=(2, 3), keepdim=True)
    return cam / (cam.amax(dim=(2, 3), keepdim=True) + 1e-5)


# True inside checked_boxes(): the boxes were validated on the host when they were made.
_BOXES_CHECKED: ContextVar[bool] = ContextVar("ctfa_boxes_checked", default=False)


@contextlib.contextmanager
def checked_boxes() -> Iterator[None]:
    """Inside the block, :func:`box_mask` trusts its boxes to be non-negative.

    Checking a box tensor reads it on the host, which on a GPU waits for every queued kernel.
    The training step's boxes are checked once on the host when the batch is made
    (:func:`ctfa_cli.training.data.check_crop_box`), and the boxes the step derives from them
    (:func:`scale_box`) stay non-negative, so the step runs inside this block.
    """
    token = _BOXES_CHECKED.set(True)
    try:
        yield
    finally:
        _BOXES_CHECKED.reset(token)


def box_mask(img_box: Tensor, height: int, width: int, *, device=None) -> Tensor:
    """Boolean mask of the crop boxes.

    Args:
        img_box: integer ``[B, 4]`` boxes ``[h0, h1, w0, w1]``, non-negative; each is the
            half-open slice ``[h0:h1, w0:w1]`` (clamped at the map bounds; a start at or past
            the end gives an empty region), as in the reference.
        height: map height ``H``.
        width: map width ``W``.
        device: device of the mask (default: the boxes' device).

    Returns:
        ``bool [B, H, W]``, True inside each image's box.

    Raises:
        ValueError: ``img_box`` is not ``[B, 4]`` or holds a negative value (a negative Python
            slice start would count from the end; boxes never do). The value check is left to
            whoever made the boxes inside :func:`checked_boxes`.
    """
    if img_box.ndim != 2 or img_box.shape[1] != 4:
        raise ValueError(f"img_box must be [B, 4], got {tuple(img_box.shape)}")
    box = img_box.to(device=device if device is not None else img_box.device, dtype=torch.int64)
    if not _BOXES_CHECKED.get() and bool((box < 0).any()):
        raise ValueError("img_box holds a negative coordinate; boxes are [h0, h1, w0, w1] >= 0")
    rows = torch.arange(height, device=box.device)
    cols = torch.arange(width, device=box.device)
    in_rows = (rows >= box[:, 0:1]) & (rows < box[:, 1:2])  # [B, H]
    in_cols = (cols >= box[:, 2:3]) & (cols < box[:, 3:4])  # [B, W]
    return in_rows[:, :, None] & in_cols[:, None, :]


def scale_box(
    img_box: Tensor, from_size: int | tuple[int, int], to_size: int | tuple[int, int]
) -> Tensor:
    """Rescale crop boxes from one map size to another (e.g. 320-px crop → 20×20 features).

    The reference training script passes boxes in crop pixels to a CAM at feature-map
    resolution, so the box lands in the wrong place (and an offset of ``≥ h`` feature cells
    ignores the whole image); scaling the box first is the fix. Rounding keeps every cell that
    covers at least one real pixel: starts are floored, ends are ceiled
    (``h0' = ⌊h0·to/from⌋``, ``h1' = ⌈h1·to/from⌉``), computed exactly in integers.

    Args:
        img_box: integer ``[B, 4]`` boxes ``[h0, h1, w0, w1]`` in ``from_size`` pixels.
        from_size: size of the map the boxes refer to, ``S`` or ``(H, W)``.
        to_size: size of the target map, ``s`` or ``(h, w)``.

    Returns:
        ``int64 [B, 4]`` boxes in ``to_size`` cells, on the boxes' device.

    Raises:
        ValueError: a size is not positive.
    """
    fh, fw = (from_size, from_size) if isinstance(from_size, int) else from_size
    th, tw = (to_size, to_size) if isinstance(to_size, int) else to_size
    if min(fh, fw, th, tw) <= 0:
        raise ValueError(f"sizes must be positive, got from {from_size} to {to_size}")
    box = img_box.to(torch.int64)
    # Column by column with Python integers: no host-made tensor to copy to the device.
    columns = []
    for column, (num, den) in enumerate(((th, fh), (th, fh), (tw, fw), (tw, fw))):
        scaled = box[:, column] * num
        if column % 2:  # an end rounds up
            columns.append(-torch.div(-scaled, den, rounding_mode="floor"))
        else:
            columns.append(torch.div(scaled, den, rounding_mode="floor"))
    return torch.stack(columns, dim=1)


def cam_to_label(
    cam: Tensor,
    cls_label: Tensor,
    *,
    bkg_thre: float,
    img_box: Tensor | None = None,
    ignore_mid: bool = False,
    high_thre: float | None = None,
    low_thre: float | None = None,
    ignore_index: int = 255,
    has_background: bool = True,
) -> Tensor | tuple[Tensor, Tensor]:
    """CAM → pseudo label (reference ``cam_to_label``; FORMAT.md section 2).

    ``valid_cam = cam · cls_label``; ``v, k`` = channel max and its index (the first index wins
    a tie).

    With a background (``has_background=True``), label ``k + 1``, then 0 where
    ``v <= bkg_thre``. With boxes and ``ignore_mid``: then ``ignore_index`` where
    ``v <= high_thre`` and 0 where ``v <= low_thre``. Without a box (``img_box=None``) the call
    returns this label only, and ``ignore_mid``/``high_thre``/``low_thre`` are ignored as in the
    reference.

    Without a background (``has_background=False``, DeepGlobe; the reference needs hand edits
    here), every pixel belongs to one of the image's classes, so there is no background
    threshold and no shift: the label is the arg-max over the **present** classes only (absent
    channels never win, even when every present score is 0), and ``bkg_thre`` is unused. With
    boxes and ``ignore_mid``, pixels whose ``v <= low_thre`` (no class has even weak evidence)
    become ``ignore_index``; the middle band keeps its arg-max class, since it measures
    background-vs-foreground doubt, which does not arise here. An image with no present class
    is all ``ignore_index``.

    With boxes, everything outside each image's box is ``ignore_index``.

    Args:
        cam: ``[B, Cc, H, W]`` float CAMs (normalised to ``[0, 1]``).
        cls_label: ``[B, Cc]`` multi-hot image labels.
        bkg_thre: background threshold (background datasets only).
        img_box: optional integer ``[B, 4]`` boxes ``[h0, h1, w0, w1]`` in ``H×W`` pixels.
        ignore_mid: with boxes, apply the ``high_thre``/``low_thre`` bands.
        high_thre: upper threshold of the ignored band (needed with ``ignore_mid``).
        low_thre: lower threshold (needed with ``ignore_mid``).
        ignore_index: label of ignored pixels.
        has_background: the dataset's background policy (``DatasetSpec.has_background``).

    Returns:
        Without ``img_box``: ``int64 [B, H, W]`` labels. With ``img_box``:
        ``(valid_cam [B, Cc, H, W], label int64 [B, H, W])``; ``valid_cam`` is not boxed.

    Raises:
        ValueError: shapes disagree, or ``ignore_mid`` with boxes but a threshold is missing.
    """
    b, c, h, w = cam.shape
    if cls_label.shape != (b, c):
        raise ValueError(f"cls_label {tuple(cls_label.shape)} does not match cam {(b, c)}")
    present = (cls_label != 0)[:, :, None, None]
    valid_cam = cam * cls_label.to(cam.dtype)[:, :, None, None]
    use_bands = img_box is not None and ignore_mid
    if use_bands and (high_thre is None or low_thre is None):
        raise ValueError("ignore_mid needs both high_thre and low_thre")

    if has_background:
        value, index = valid_cam.max(dim=1)
        label = index + 1
        label = label.masked_fill(value <= bkg_thre, 0)
        if use_bands:
            label = label.masked_fill(value <= high_thre, ignore_index)
            label = label.masked_fill(value <= low_thre, 0)
    else:
        value, label = valid_cam.masked_fill(~present, float("-inf")).max(dim=1)
        # value is -inf exactly where the image has no present class.
        undecided = value == float("-inf")
        if use_bands:
            undecided |= value <= low_thre
        label = label.masked_fill(undecided, ignore_index)

    if img_box is None:
        return label
    inside = box_mask(img_box, h, w, device=label.device)
    return valid_cam, label.masked_fill(~inside, ignore_index)


def roi_mask(cam: Tensor, cls_label: Tensor, high_thre: float, low_thre: float) -> Tensor:
    """Region-of-interest mask of the CTC local crops (reference ``cam_to_roi_mask2``).

    ``v`` = channel max of ``cam · cls_label``; the mask is 0 where ``v <= low_thre``, 2 where
    ``v >= high_thre`` (``>=`` here, ``<=`` for the low side, as in the reference), else 1.

    Args:
        cam: ``[B, Cc, H, W]`` float CAMs.
        cls_label: ``[B, Cc]`` multi-hot image labels.
        high_thre: certain-foreground threshold.
        low_thre: certain-background threshold.

    Returns:
        ``int16 [B, H, W]`` with values 0, 1, 2.

    Raises:
        ValueError: ``cls_label`` does not match ``cam``.
    """
    b, c = cam.shape[:2]
    if cls_label.shape != (b, c):
        raise ValueError(f"cls_label {tuple(cls_label.shape)} does not match cam {(b, c)}")
    value = (cam * cls_label.to(cam.dtype)[:, :, None, None]).amax(dim=1)
    mask = torch.ones_like(value, dtype=torch.int16)
    mask = mask.masked_fill(value <= low_thre, 0)
    return mask.masked_fill(value >= high_thre, 2)


def label_to_aff_mask(cam_label: Tensor, ignore_index: int = 255) -> Tensor:
    """Pairwise affinity targets of PTC from a low-resolution label (FORMAT.md section 4).

    Flattening the label row-major to ``n = h·w`` pixels: ``aff[b, i, j] = (lab_i == lab_j)``;
    every row and column of an ignored pixel, and the diagonal, are ``ignore_index``. Built with
    broadcasting: no Python loop and no intermediate beyond the ``[B, n, n]`` output.

    Args:
        cam_label: integer ``[B, h, w]`` label (0 background, classes, ``ignore_index``).
        ignore_index: label of ignored pixels, also the value written for excluded pairs.

    Returns:
        ``int64 [B, n, n]`` with values 0, 1 and ``ignore_index``.
    """
    b = cam_label.shape[0]
    flat = cam_label.reshape(b, -1)
    aff = (flat[:, :, None] == flat[:, None, :]).to(torch.int64)
    ignored = flat == ignore_index
    aff.masked_fill_(ignored[:, :, None] | ignored[:, None, :], ignore_index)
    aff.diagonal(dim1=1, dim2=2).fill_(ignore_index)
    return aff


def sample_local_crops(
    images_aug: Tensor,
    roi: Tensor,
    *,
    num_crops: int = 8,
    crop_size: int = 96,
    neg_ratio: float = 0.2,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """ROI-guided local views for CTC with negative flags (reference ``crop_from_roi_neg``).

    With ``m = crop_size // 2``, a crop's top-left corner ``(t, l)`` ranges over
    ``[0, H - 2m) × [0, W - 2m)`` and its centre is ``(t + m, l + m)``, so every crop lies
    inside the image. Per image, ``num_crops`` distinct corners are drawn uniformly among those
    whose centre has ROI value 0 or 1 (not certain foreground); when fewer than ``num_crops``
    such centres exist ("too few"), among all corners. A crop is flagged negative (0) when
    ``sum(ROI over the crop) / crop_size² <= neg_ratio`` (float32, as the reference); the two
    global views (flag columns 0 and 1) are always positive.

    The reference fails on images smaller than ``2m + 1`` pixels; such images (and their ROI)
    are zero-padded at the bottom/right to ``2m + 1``. When an image has fewer corners than
    ``num_crops``, corners are drawn with replacement.

    Args:
        images_aug: ``[B, C, H, W]`` colour-augmented copy of the training crops.
        roi: integer ``[B, H, W]`` ROI mask of :func:`roi_mask` (same ``H×W``).
        num_crops: local crops per image.
        crop_size: side of a local crop in pixels.
        neg_ratio: flag threshold on the mean ROI value of a crop.
        generator: random generator for the corners (on the images' device).

    Returns:
        ``(crops [num_crops·B, C, crop_size, crop_size], flags float32 [B, 2 + num_crops])``;
        crops are crop-major (row ``r`` is crop ``r // B`` of image ``r % B``).

    Raises:
        ValueError: ``roi`` does not match the images, or ``num_crops``/``crop_size`` < 1.
    """
    b, c, h, w = images_aug.shape
    if roi.shape != (b, h, w):
        raise ValueError(f"roi {tuple(roi.shape)} does not match images {(b, h, w)}")
    if num_crops < 1 or crop_size < 1:
        raise ValueError("num_crops and crop_size must be at least 1")
    margin = crop_size // 2
    pad_h, pad_w = max(0, 2 * margin + 1 - h), max(0, 2 * margin + 1 - w)
    if pad_h or pad_w:
        images_aug = F.pad(images_aug, (0, pad_w, 0, pad_h))
        roi = F.pad(roi, (0, pad_w, 0, pad_h))
        h, w = h + pad_h, w + pad_w
    rows, cols = h - 2 * margin, w - 2 * margin  # corner grid = ROI at the crop centres
    centres = roi[:, margin : margin + rows, margin : margin + cols].reshape(b, -1)
    weights = (centres <= 1).to(torch.float32)
    too_few = weights.sum(dim=1, keepdim=True) < num_crops
    weights = torch.where(too_few, torch.ones_like(weights), weights)
    if rows * cols < num_crops:
        corner = torch.multinomial(weights, num_crops, replacement=True, generator=generator)
    else:  # [B, K]
        corner = _multinomial_without_replacement(weights, num_crops, generator)
    offsets = torch.arange(crop_size, device=images_aug.device)
    r = (corner // cols)[:, :, None] + offsets  # [B, K, S]
    q = (corner % cols)[:, :, None] + offsets  # [B, K, S]
    image = torch.arange(b, device=images_aug.device)[:, None, None, None]
    r, q = r[:, :, :, None], q[:, :, None, :]
    # Advanced indices separated by a slice go first: [B, K, S, S, C].
    crops = images_aug[image, :, r, q].permute(1, 0, 4, 2, 3)
    crops = crops.reshape(num_crops * b, c, crop_size, crop_size)

    roi_sum = roi[image, r, q].sum(dim=(2, 3), dtype=torch.int64)  # [B, K]
    negative = roi_sum.to(torch.float32) / (crop_size * crop_size) <= neg_ratio
    flags = torch.ones(b, 2 + num_crops, dtype=torch.float32, device=images_aug.device)
    flags[:, 2:] = (~negative).to(torch.float32)
    return crops, flags


def _multinomial_without_replacement(weights: Tensor, num_samples: int,
                                     generator: torch.Generator | None) -> Tensor:
    """``torch.multinomial(weights, num_samples, replacement=False)`` without its host reads.

    ``torch.multinomial`` checks its input on the host first (no inf/NaN/negative weight, no
    all-zero row, enough categories: two or three reads that each wait for the GPU), then
    draws ``argmax``/``topk`` of ``weights / q`` with ``q ~ Exp(1)`` (ATen's fast path for
    sampling without replacement). This is that draw, the same random numbers and the same
    result, without the checks, which the caller guarantees: every row of ``weights``
    ``[B, N]`` holds 0/1 values with at least ``num_samples`` ones, ``num_samples <= N``.

    Returns:
        int64 ``[B, num_samples]`` category indices.
    """
    q = torch.empty_like(weights).exponential_(1, generator=generator)
    q = torch.div(weights, q)
    if num_samples == 1:
        return q.argmax(dim=-1, keepdim=True)
    return torch.topk(q, num_samples).indices
