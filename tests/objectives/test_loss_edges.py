"""Edges of the losses that the parity cases do not reach, with expected values from the
reference cases (tests/data/parity) or by hand.

Added for mutants that survived ``mutmut run "ctfa_cli.objectives.losses*"`` (docs/testing.md).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ctfa_cli.objectives.losses import ctc_loss, ptc_loss

PARITY = Path(__file__).resolve().parents[1] / "data" / "parity"


def _case(name: str):
    with np.load(PARITY / name) as z:
        return {k: z[k] for k in z.files if k != "meta"}, json.loads(str(z["meta"]))


def test_ptc_is_a_cosine_loss_of_tokens_of_any_norm():
    """The reference normalises each token (eps 1e-8): scaling the feature map by 0.01 (token
    norms ~0.1, below 1) gives the reference's loss of the unscaled map."""
    arrays, _ = _case("ptc_loss__a1_b2_d128_8x8.npz")
    fmap = torch.from_numpy(arrays["in_fmap"]) * 0.01
    loss = ptc_loss(fmap, torch.from_numpy(arrays["in_aff_mask"]))
    np.testing.assert_allclose(float(loss), float(arrays["out_loss"]), rtol=1e-5)


def test_ctc_default_temperature_is_the_reference_one():
    arrays, meta = _case("ctc_loss__a1_b2_d1024.npz")
    assert meta["temp"] == 0.5
    student, teacher = (torch.from_numpy(arrays[k]) for k in ("in_student_out", "in_teacher_out"))
    loss = ctc_loss(student, teacher, torch.from_numpy(arrays["in_flags"]))  # no temp given
    np.testing.assert_allclose(float(loss), float(arrays["out_loss"]), rtol=1e-5)


def test_ctc_row_count_mismatch_names_both_counts():
    student, teacher = torch.randn(19, 8), torch.randn(4, 8)
    flags = torch.ones(2, 10)
    message = "expected 20 student and 4 teacher rows for flags (2, 10), got 19 and 4"
    with pytest.raises(ValueError, match=re.escape(message)):
        ctc_loss(student, teacher, flags, temp=0.5)


def test_seg_loss_group_of_one_pixel_is_that_pixels_cross_entropy():
    from ctfa_cli.objectives.losses import seg_loss

    # 1×3 image, 2 classes: logits (0, ln 3) everywhere; labels background, class 1, class 1.
    pred = torch.tensor([0.0, np.log(3.0)]).view(1, 2, 1, 1).expand(1, 2, 1, 3).contiguous()
    label = torch.tensor([[[0, 1, 1]]])
    # softmax = (1/4, 3/4): background CE = ln 4, foreground CE = ln(4/3) (mean of two equal)
    expected = 0.5 * (np.log(4.0) + np.log(4.0 / 3.0))
    np.testing.assert_allclose(float(seg_loss(pred, label, 255)), expected, rtol=1e-6)


def test_joint_loss_clamps_probabilities_to_1e7_and_1_minus_1e7():
    from ctfa_cli.objectives.losses import joint_loss

    # Two pixels, 2 classes. Pixel 0: the labelled channel's foreground softmax is ~e^-40, so
    # p < 1e-7 and the clamp gives -log(1e-7). Pixel 1: p ~ 1 - e^-40, clamped to 1 - 1e-7.
    fg = torch.tensor([[[[-40.0, 40.0]], [[0.0, 0.0]]]])  # [1, 2, 1, 2]
    seg = torch.zeros(1, 2, 1, 2)  # sigmoid 1/2 on both channels
    lo = float(torch.log(torch.tensor(1e-7)))
    hi = float(torch.log(torch.tensor(1 - 1e-7, dtype=torch.float32)))
    # pixel 0, label 0: fg softmax (e^-40, ~1) → p0 ~ e^-40 → clamped
    np.testing.assert_allclose(float(joint_loss(fg[..., :1], seg[..., :1], torch.tensor([[[0]]]))),
                               -lo, rtol=1e-6)
    # pixel 1, label 0: fg softmax (~1, e^-40) → p0 ~ 1 → clamped to 1 - 1e-7
    loss = joint_loss(fg[..., 1:], seg[..., 1:], torch.tensor([[[0]]]))
    np.testing.assert_allclose(float(loss), -hi, rtol=1e-3)
    assert float(loss) > 1e-8
