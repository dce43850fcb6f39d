"""The mixed-precision switch shared by training and prediction."""

from __future__ import annotations

import pytest
import torch

from ctfa_cli.errors import CtfaUsageError
from ctfa_cli.precision import autocast, check_amp


def test_bf16_runs_matrix_products_in_bfloat16_on_cpu_and_none_in_float32():
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with autocast("bf16", torch.device("cpu")):
        assert layer(x).dtype == torch.bfloat16
    with autocast("none", torch.device("cpu")):
        assert layer(x).dtype == torch.float32


def test_unknown_mode_is_refused():
    assert check_amp("bf16") == "bf16"
    for call in (lambda: check_amp("fp16"), lambda: autocast("fp16", torch.device("cpu"))):
        with pytest.raises(CtfaUsageError, match="unknown amp 'fp16'; choose one of none, bf16"):
            call()
