"""Where a Triton kernel runs: every launch in ``kernels/`` goes through :func:`launch_device`.

Triton launches on the *current* CUDA device and its current stream, not on the device of the
tensors it is given. A process that trains on ``cuda:1`` without making it current would run the
kernels in cuda:0's context on cuda:1 pointers (an illegal address, or silent wrong results
under unified addressing). Entering the tensors' device around each launch makes the launch
independent of what the caller made current.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch


def launch_device(device: torch.device) -> AbstractContextManager:
    """The context to launch a Triton kernel in for tensors on ``device``.

    Args:
        device: the device of the kernel's tensors; a CUDA device must carry its index (every
            CUDA tensor's ``.device`` does).

    Returns:
        ``torch.cuda.device(device)`` for a CUDA device (current device, hence current stream,
        switched for the ``with`` block and restored after); a no-op context otherwise (CPU
        tensors under ``TRITON_INTERPRET=1``).

    Raises:
        ValueError: a CUDA device without an index (it would mean "whatever is current",
            which is what this helper exists to avoid).
    """
    if device.type != "cuda":
        return contextlib.nullcontext()
    if device.index is None:
        raise ValueError(f"launch_device needs an indexed CUDA device (cuda:N), got {device}")
    return torch.cuda.device(device)
