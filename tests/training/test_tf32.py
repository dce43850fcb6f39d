"""TF32 on CUDA training runs (the ``tf32`` config field): the decision and the flags it sets.

The flags are process-wide booleans that can be set and read without a GPU; whether cuBLAS then
really uses TF32 needs an Ampere or later GPU (scripts/gpu_acceptance.py times it).
"""

from __future__ import annotations

import pytest
import torch
import yaml

from ctfa_cli.config import TrainConfig, resolve_train_config
from ctfa_cli.precision import tf32_flags, tf32_mode

CUDA = torch.device("cuda", 0)
CPU = torch.device("cpu")


def _flags() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.fixture
def default_flags():
    """PyTorch's own defaults (matmul strict, cuDNN convolutions TF32), restored after."""
    saved = _flags()
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_tf32_is_on_by_default_in_both_presets():
    assert TrainConfig().tf32 is True
    assert resolve_train_config("potsdam", "paper").tf32 is True
    assert resolve_train_config("synthetic", "cpu").tf32 is True


def test_tf32_can_be_turned_off_and_is_recorded_in_the_run_config():
    cfg = resolve_train_config("potsdam", "paper", None, {"tf32": "false"})
    assert cfg.tf32 is False
    dumped = yaml.safe_load(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert dumped["tf32"] is False
    assert TrainConfig.model_validate(dumped) == cfg


@pytest.mark.parametrize(("tf32", "device", "expected"), [
    (True, CUDA, True), (False, CUDA, False), (True, CPU, None), (False, CPU, None),
])
def test_tf32_flags(tf32, device, expected):
    assert tf32_flags(tf32, device) is expected


@pytest.mark.parametrize("tf32", [True, False])
def test_a_cuda_run_sets_both_flags_and_restores_them(default_flags, tf32):
    with tf32_mode(tf32, CUDA):
        assert _flags() == (tf32, tf32)
    assert _flags() == (False, True)


def test_a_cpu_run_leaves_the_flags_alone(default_flags):
    with tf32_mode(False, CPU):
        assert _flags() == (False, True)
    with tf32_mode(True, CPU):
        assert _flags() == (False, True)
    assert _flags() == (False, True)


def test_the_flags_are_restored_after_an_error(default_flags):
    with pytest.raises(KeyError), tf32_mode(True, CUDA):
        raise KeyError("step failed")
    assert _flags() == (False, True)
