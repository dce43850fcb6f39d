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
