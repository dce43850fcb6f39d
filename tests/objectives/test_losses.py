"""CTFA losses beyond the golden vectors: CTC where the reference overflows, the segmentation
loss with an empty group, the no-background policy, and argument checks."""

import math

import pytest
import torch
import torch.nn.functional as F

from ctfa_cli.objectives.losses import cls_loss, ctc_loss, joint_loss, ptc_loss, seg_loss


def ctc_reference_formula(student, teacher, flags, temp):
    """FORMAT.md section 9 written out with a loop over images, as the reference computes it."""
    b, views = flags.shape
    s = student.reshape(views, b, -1).transpose(0, 1)
    t = teacher.reshape(2, b, -1).transpose(0, 1)
    big = torch.exp(t @ s.transpose(1, 2) / temp)  # [b, 2, V], no max-subtraction
    total = 0
    for i in range(b):
        neg = big[i][:, flags[i] == 0].sum(dim=1)
        loss = 0
        positives = torch.nonzero(flags[i])[:, 0]
        for j in positives:
            loss = loss - torch.log(big[i, :, j] / (big[i, :, j] + neg + 1e-4))
        loss = loss - torch.log(1 / (1 + neg + 1e-4))  # the for ... else term
        total = total + loss.sum() / 2 / (len(positives) + 1e-4)
    return total / b


def ctc_inputs(scale: float, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    b, views, d = 3, 6, 16
    student = F.normalize(torch.randn(views * b, d, generator=gen), dim=1) * scale
    teacher = F.normalize(torch.randn(2 * b, d, generator=gen), dim=1) * scale
    flags = torch.ones(b, views)
    flags[0, [2, 4]] = 0
    flags[1, 3] = 0  # image 2 has no negative at all
    # The teacher sees the same global views as the student: dot products reach scale².
    teacher[:b] = student[:b]
    return student, teacher, flags


def test_ctc_matches_the_reference_formula_where_it_is_finite():
    student, teacher, flags = ctc_inputs(scale=1.0)
    student.requires_grad_(True)
    ours = ctc_loss(student, teacher, flags, temp=0.5)
    reference = ctc_reference_formula(student.double(), teacher.double(), flags, 0.5)
    torch.testing.assert_close(ours.double(), reference, rtol=1e-5, atol=0)


def test_ctc_stays_finite_where_the_reference_overflows():
    # Dot products up to 12² = 144; divided by temp 0.5 that is exp(288), beyond float32.
    student, teacher, flags = ctc_inputs(scale=12.0)
    with torch.no_grad():
        assert not torch.isfinite(ctc_reference_formula(student, teacher, flags, 0.5))
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    ours = ctc_loss(student, teacher, flags, temp=0.5)
    ours.backward()
    assert torch.isfinite(ours)
    assert torch.isfinite(student.grad).all() and torch.isfinite(teacher.grad).all()
    # float64 keeps exp(288) finite: the reference formula there is the ground truth.
    reference = ctc_reference_formula(student.detach().double(), teacher.detach().double(),
                                      flags, 0.5)
    assert torch.isfinite(reference)
    torch.testing.assert_close(ours.double(), reference, rtol=1e-4, atol=1e-4)


def test_ctc_checks_row_counts():
    with pytest.raises(ValueError, match="student"):
        ctc_loss(torch.randn(10, 4), torch.randn(4, 4), torch.ones(2, 4))


def seg_inputs(with_background: bool):
    gen = torch.Generator().manual_seed(1)
    pred = torch.randn(2, 4, 6, 6, generator=gen, requires_grad=True)
    label = torch.randint(1, 4, (2, 6, 6), generator=gen)
    label[:, :2] = 255
    if with_background:
        label[0, 3:, :3] = 0
    return pred, label


def test_seg_loss_balances_background_and_foreground():
    pred, label = seg_inputs(with_background=True)
    bg = F.cross_entropy(pred, label.masked_fill(label != 0, 255), ignore_index=255)
    fg = F.cross_entropy(pred, label.masked_fill(label == 0, 255), ignore_index=255)
    torch.testing.assert_close(seg_loss(pred, label), 0.5 * (bg + fg))


def test_seg_loss_empty_group_contributes_zero_not_nan():
    pred, label = seg_inputs(with_background=False)  # no background pixel anywhere
    reference_bg = F.cross_entropy(pred, label.masked_fill(label != 0, 255), ignore_index=255)
    assert torch.isnan(reference_bg)  # the reference's 0/0
    loss = seg_loss(pred, label)
    (grad,) = torch.autograd.grad(loss, pred)
    fg = F.cross_entropy(pred, label, ignore_index=255)
    (expected_grad,) = torch.autograd.grad(0.5 * fg, pred)
    torch.testing.assert_close(loss, 0.5 * fg)
    torch.testing.assert_close(grad, expected_grad)


def test_seg_loss_all_ignored_is_zero_with_zero_gradient():
    pred = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = seg_loss(pred, torch.full((1, 4, 4), 255))
    loss.backward()
    assert loss.item() == 0 and torch.all(pred.grad == 0)


def test_seg_loss_without_background_is_plain_cross_entropy():
    pred, label = seg_inputs(with_background=True)  # label 0 is a real class here
    torch.testing.assert_close(seg_loss(pred, label, has_background=False),
                               F.cross_entropy(pred, label, ignore_index=255))


def test_joint_loss_without_valid_pixels_is_zero():
    fg = torch.randn(1, 3, 4, 4, requires_grad=True)
    seg = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = joint_loss(fg, seg, torch.full((1, 4, 4), 255))
    loss.backward()
    assert loss.item() == 0 and torch.all(fg.grad == 0) and torch.all(seg.grad == 0)


def test_joint_loss_one_pixel_by_hand():
    fg = torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1)
    seg = torch.tensor([0.0, 2.0]).reshape(1, 2, 1, 1)
    joint = torch.sigmoid(torch.tensor([0.0, 2.0])) * torch.softmax(torch.tensor([1.0, 0.0]), 0)
    expected = -math.log(joint[1] / joint.sum())
    assert joint_loss(fg, seg, torch.tensor([[[1]]])).item() == pytest.approx(expected, rel=1e-6)


def test_ptc_loss_of_identical_tokens():
    fmap = torch.ones(1, 4, 2, 2)
    aff = torch.ones(1, 4, 4, dtype=torch.int64)
    aff.diagonal(dim1=1, dim2=2).fill_(255)
    # 12 positive pairs of similarity 1: 0.5·(1 − 12/13), no negative pair.
    assert ptc_loss(fmap, aff).item() == pytest.approx(0.5 / 13, rel=1e-6)
    with pytest.raises(ValueError, match="aff_mask"):
        ptc_loss(fmap, aff[:, :3])


def test_cls_loss_accepts_uint8_labels():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    labels = torch.tensor([[1, 0, 1]], dtype=torch.uint8)
    torch.testing.assert_close(cls_loss(logits, labels),
                               F.multilabel_soft_margin_loss(logits, labels.float()))


def test_joint_loss_takes_channels_last_maps():
    gen = torch.Generator().manual_seed(2)
    fg, seg = torch.randn(2, 2, 5, 4, 4, generator=gen).unbind(0)
    label = torch.randint(0, 5, (2, 4, 4), generator=gen)
    label[0, 0] = 255
    grads = []
    for layout in (torch.contiguous_format, torch.channels_last):
        a = fg.clone(memory_format=layout).requires_grad_(True)
        b = seg.clone(memory_format=layout).requires_grad_(True)
        loss = joint_loss(a, b, label)
        loss.backward()
        grads.append((loss.detach(), a.grad, b.grad))
    for plain, channels_last in zip(*grads, strict=True):
        torch.testing.assert_close(channels_last, plain)
