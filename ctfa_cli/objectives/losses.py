"""The CTFA loss terms (reference ``model/losses.py``), with two reference bugs fixed.

* :func:`cls_loss`: multi-label soft-margin classification (main and auxiliary heads).
* :func:`ptc_loss`: patch-token contrast on the final tokens (FORMAT.md section 6).
* :func:`ctc_loss`: class-wise contrastive token loss between teacher global views and student
  global + local views (section 9), computed in log space: the reference exponentiates raw
  dot products and overflows to NaN when trained from scratch.
* :func:`seg_loss`: background/foreground-balanced cross-entropy (section 7); an empty group
  contributes zero instead of the reference's NaN.
* :func:`joint_loss`: the joint foreground-activation loss (section 8).
* :func:`energy_loss`: the dense-CRF energy regulariser, from :mod:`kernels.dense_crf`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels.dense_crf import energy_loss

__all__ = ["cls_loss", "ctc_loss", "energy_loss", "joint_loss", "ptc_loss", "seg_loss"]


def cls_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Multi-label soft-margin loss (``F.multilabel_soft_margin_loss``, mean over the batch).

    Args:
        logits: ``[B, Cc]`` classifier logits.
        labels: ``[B, Cc]`` multi-hot image labels (any numeric dtype).

    Returns:
        Scalar loss.
    """
    return F.multilabel_soft_margin_loss(logits, labels.to(logits.dtype))


def ptc_loss(fmap: Tensor, aff_mask: Tensor) -> Tensor:
    """Masked patch-token contrast (reference ``get_masked_ptc_loss``).

    With ``x`` the L2-normalised tokens (``eps=1e-8``) and ``S = |xᵀx|`` their absolute cosine
    similarities:
    ``0.5·(1 − Σ_{m=1} S / (#{m=1} + 1)) + 0.5·Σ_{m=0} S / (#{m=0} + 1)``, sums and counts over
    the whole batch (note the ``+1``); entries of any other value (ignore) are left out.

    Args:
        fmap: ``[B, D, h, w]`` token features.
        aff_mask: integer ``[B, n, n]`` targets, ``n = h·w`` (:func:`label_to_aff_mask`).

    Returns:
        Scalar loss.

    Raises:
        ValueError: ``aff_mask`` does not match ``fmap``.
    """
    b, d, h, w = fmap.shape
    if aff_mask.shape != (b, h * w, h * w):
        raise ValueError(f"aff_mask {tuple(aff_mask.shape)} does not match fmap {(b, h, w)}")
    x = F.normalize(fmap.reshape(b, d, h * w), p=2, dim=1, eps=1e-8)
    sim = torch.matmul(x.transpose(1, 2), x).abs()
    pos, neg = aff_mask == 1, aff_mask == 0
    pos_term = (pos * sim).sum() / (pos.sum() + 1)
    neg_term = (neg * sim).sum() / (neg.sum() + 1)
    return 0.5 * (1 - pos_term) + 0.5 * neg_term


def ctc_loss(student_out: Tensor, teacher_out: Tensor, flags: Tensor, *,
             temp: float = 0.5) -> Tensor:
    """Class-wise contrastive token loss (reference ``CTCLoss_neg``), in log space.

    Rows are crop-major: student row ``r`` is view ``r // b`` of image ``r % b`` (views 0 and 1
    are the global views), teacher row ``r`` is global view ``r // b`` of image ``r % b``. With
    ``s_tj = T_t·S_j / temp`` for teacher view ``t`` and student view ``j`` of one image,
    positives ``P = {j: flag_j != 0}`` and negatives ``N = {j: flag_j == 0}``, the reference
    computes, per image,

    ``Σ_t [ Σ_{j∈P} −log(e^{s_tj} / (e^{s_tj} + Σ_{k∈N} e^{s_tk} + 1e-4))
    − log(1 / (1 + Σ_{k∈N} e^{s_tk} + 1e-4)) ] / 2 / (|P| + 1e-4)``

    (the last term comes from a ``for … else`` and is always added once) and averages over
    images. Here each ``−log`` is ``logsumexp([s_tj, s_tk for k∈N, log 1e-4]) − s_tj`` (and
    ``logsumexp([0, s_tk for k∈N, log 1e-4])`` for the extra term), which equals the reference
    wherever ``exp`` does not overflow and stays finite where the reference gives inf/NaN (the
    reference overflows once a dot product exceeds ``88.7·temp`` in float32, which happened when
    training from scratch).

    Args:
        student_out: ``[V·b, D]`` student projections, ``V`` views per image (``2 +`` local).
        teacher_out: ``[2·b, D]`` teacher projections of the two global views.
        flags: ``[b, V]`` view flags (non-zero positive, zero negative).
        temp: temperature.

    Returns:
        Scalar loss.

    Raises:
        ValueError: the row counts do not match ``flags``.
    """
    b, views = flags.shape
    if student_out.shape[0] != views * b or teacher_out.shape[0] != 2 * b:
        raise ValueError(
            f"expected {views * b} student and {2 * b} teacher rows for flags {(b, views)}, "
            f"got {student_out.shape[0]} and {teacher_out.shape[0]}"
        )
    student = student_out.reshape(views, b, -1).transpose(0, 1)  # [b, V, D]
    teacher = teacher_out.reshape(2, b, -1).transpose(0, 1)  # [b, 2, D]
    logits = torch.matmul(teacher, student.transpose(1, 2)) / temp  # [b, 2, V]
    positive = flags != 0  # [b, V]
    negative = ~positive

    log_eps = logits.new_full((), math.log(1e-4))
    neg_logits = logits.masked_fill(~negative[:, None, :], float("-inf"))  # [b, 2, V]
    # One log-sum-exp row per (image, teacher view, candidate): the candidate's own logit
    # (or 0 for the extra term), every negative, and log 1e-4 so a row is never all -inf.
    own = torch.cat([logits, logits.new_zeros(b, 2, 1)], dim=2)  # [b, 2, V+1]
    rows = torch.cat(
        [
            own[..., None],
            neg_logits[:, :, None, :].expand(b, 2, views + 1, views),
            log_eps.expand(b, 2, views + 1, 1),
        ],
        dim=3,
    )
    neg_log_p = torch.logsumexp(rows, dim=3) - own  # [b, 2, V+1]
    counted = torch.cat([positive, positive.new_ones(b, 1)], dim=1)  # extra term always counted
    per_image = (neg_log_p * counted[:, None, :]).sum(dim=(1, 2))
    per_image = per_image / 2 / (positive.sum(dim=1) + 1e-4)
    return per_image.mean()


def seg_loss(pred: Tensor, label: Tensor, ignore_index: int = 255, *,
             has_background: bool = True) -> Tensor:
    """Segmentation cross-entropy (reference ``get_seg_loss``), without its NaN.

    With a background: ``0.5·(CE mean over label == 0 + CE mean over the other valid
    pixels)``, each mean over the whole batch. Deliberate fix: the reference gives ``0/0 = NaN``
    when a group is empty (e.g. a crop with no valid background pixel), poisoning the step;
    here an empty group's term is 0. The gradient equals the reference's (an empty term
    contributes none), and the value equals it whenever both groups are non-empty.

    Without a background (``has_background=False``) label 0 is a class like the others, so
    the background/foreground split has no meaning: plain CE averaged over valid pixels (0 when
    none is valid).

    Args:
        pred: ``[B, C, H, W]`` logits.
        label: integer ``[B, H, W]`` labels (``ignore_index`` ignored).
        ignore_index: label of ignored pixels.
        has_background: the dataset's background policy.

    Returns:
        Scalar loss, always finite for finite logits.
    """
    label = label.long()
    ce = F.cross_entropy(pred, label, ignore_index=ignore_index, reduction="none")
    valid = label != ignore_index
    if not has_background:
        return _masked_mean(ce, valid)
    background = label == 0
    return 0.5 * (_masked_mean(ce, background) + _masked_mean(ce, valid & ~background))


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over ``mask``; 0 (with zero gradient) for an empty mask."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def joint_loss(foreground_logits: Tensor, seg_logits: Tensor, label: Tensor,
               ignore_index: int = 255) -> Tensor:
    """Joint foreground-activation loss (reference ``JointLoss``; FORMAT.md section 8).

    ``joint = sigmoid(seg_logits) · softmax(foreground_logits)`` for every channel (channel 0
    included, unlike FactSeg), ``p = clamp(joint / Σ_c joint, 1e-7, 1 − 1e-7)``, and the loss is
    ``Σ_valid −log p[label] / #valid``. The argument order is the training call's:
    ``JOINT_loss(foreground_seg, segs, label)``. With no valid pixel the reference gives NaN;
    here 0.

    Args:
        foreground_logits: ``[B, C, H, W]`` foreground-decoder logits (softmax over channels).
        seg_logits: ``[B, C, H, W]`` segmentation logits (sigmoid per channel).
        label: integer ``[B, H, W]`` labels.
        ignore_index: label of ignored pixels.

    Returns:
        Scalar loss.
    """
    label = label.long()
    valid = label != ignore_index
    joint = torch.sigmoid(seg_logits) * torch.softmax(foreground_logits, dim=1)
    p = (joint / joint.sum(dim=1, keepdim=True)).clamp(1e-7, 1 - 1e-7)
    # A gather rather than F.nll_loss, whose 2-D backward rejects channels-last inputs.
    picked = p.gather(1, label.masked_fill(~valid, 0)[:, None]).squeeze(1)
    return -(torch.log(picked) * valid).sum() / valid.sum().clamp(min=1)
