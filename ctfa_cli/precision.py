"""Mixed precision: the one switch shared by training (``amp`` in the config) and the inference
verbs (``--amp`` of ``predict``, ``evaluate`` and ``pseudolabel``), and TF32 for the float32
matrix products and convolutions of a CUDA training run (``tf32`` in the config)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager

import torch

from ctfa_cli.errors import CtfaUsageError

#: Values of ``amp``: ``none`` (float32) or ``bf16`` (bfloat16 autocast).
AMP_MODES = ("none", "bf16")


def autocast(amp: str, device: torch.device) -> AbstractContextManager:
    """The context the network's forward runs in.

    ``amp="bf16"`` runs matrix products and convolutions in bfloat16 (``torch.autocast``) on
    CUDA and on CPU alike; callers turn what must stay exact back to float32 (CAMs, losses,
    probabilities). On a CPU with native bfloat16 (AVX512-BF16 or AMX: AMD Zen 4, Intel
    Sapphire Rapids and later) this is faster: on the 2-core development machine a training
    step took 0.57 instead of 0.77 s, and a ViT-Tiny forward 1.7× less time. On other CPUs
    PyTorch emulates bfloat16, which is slower than float32. ``amp="none"``: float32.

    Args:
        amp: one of :data:`AMP_MODES`.
        device: where the forward runs; autocast applies to ``cuda`` and ``cpu`` devices.

    Raises:
        CtfaUsageError: an unknown ``amp`` (see :func:`check_amp`).
    """
    check_amp(amp)
    if amp == "bf16" and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def check_amp(amp: str) -> str:
    """Return ``amp`` if it is one of :data:`AMP_MODES`.

    Raises:
        CtfaUsageError: an unknown value (the verbs' ``--amp``).
    """
    if amp not in AMP_MODES:
        raise CtfaUsageError(f"unknown amp {amp!r}; choose one of {', '.join(AMP_MODES)}")
    return amp


def tf32_flags(tf32: bool, device: torch.device) -> bool | None:
    """What ``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32``
    are set to for a training run on ``device`` (None: left alone).

    TF32 (10-bit mantissa inputs, float32 accumulation) is a CUDA feature of Ampere and later
    GPUs; it changes nothing elsewhere, so a CPU run leaves the flags as they are and its
    results do not depend on ``tf32``. Under ``amp: bf16`` the flag concerns only the products
    autocast keeps in float32.

    Args:
        tf32: the config's ``tf32``: True allows TF32, False is strict IEEE float32 (also for
            convolutions, which PyTorch otherwise runs in TF32 by default).
        device: the training device.
    """
    return tf32 if device.type == "cuda" else None


@contextlib.contextmanager
def tf32_mode(tf32: bool, device: torch.device) -> Iterator[None]:
    """Set the TF32 flags :func:`tf32_flags` decides for the ``with`` block, restore them after.

    Uses the ``allow_tf32`` flags only (PyTorch refuses a mix of them and the newer
    ``fp32_precision`` settings in one process).
    """
    flag = tf32_flags(tf32, device)
    if flag is None:
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = flag
    torch.backends.cudnn.allow_tf32 = flag
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
