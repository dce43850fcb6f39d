"""kernels.launch.launch_device: the context every Triton launch runs in (testable without a GPU).

What cannot be tested here: that entering ``torch.cuda.device(cuda:1)`` really moves a launch
to the second GPU's context and stream (that needs two GPUs); these tests check which context
the helper picks for each device.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from kernels.launch import launch_device


def test_cpu_tensors_launch_in_a_no_op_context():
    context = launch_device(torch.device("cpu"))
    assert isinstance(context, contextlib.nullcontext)
    with context as entered:
        assert entered is None


def test_cuda_without_an_index_is_refused():
    with pytest.raises(ValueError, match=r"cuda:N"):
        launch_device(torch.device("cuda"))


@pytest.mark.parametrize("index", [0, 1, 3])
def test_an_indexed_cuda_device_gives_that_device_context(index):
    # torch.cuda.device only records the index when built (it touches CUDA on __enter__), so
    # it can be constructed on a machine without a GPU.
    context = launch_device(torch.device("cuda", index))
    assert isinstance(context, torch.cuda.device)
    assert context.idx == index
