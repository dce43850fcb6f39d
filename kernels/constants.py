"""Small tensors of host values (sizes, statistics, offsets) on the device, made once.

``torch.tensor(values, device=cuda)`` copies host memory to the GPU without ``non_blocking``,
which PyTorch follows with a stream synchronisation: the host waits for every kernel queued
before it. Made in every training step (crop-box scaling, normalisation statistics, PAR's
neighbour offsets, the lattice's scales), such constants would stall the GPU several times a
step; :func:`device_constant` makes each one once per device and hands the same tensor back.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor


def device_constant(values: float | int | Sequence, *, dtype: torch.dtype,
                    device: torch.device | str) -> Tensor:
    """``torch.tensor(values, dtype=dtype, device=device)``, made once per device.

    Args:
        values: a number or a (nested) sequence of numbers.
        dtype: the tensor's dtype.
        device: where it lives. On CPU a fresh tensor is made at every call (nothing to wait
            for there); elsewhere the tensor is cached and shared, so callers must not modify
            it in place.

    Returns:
        The tensor (0-d for a number).
    """
    device = torch.device(device)
    if device.type == "cpu":
        return torch.tensor(values, dtype=dtype)
    return _cached(_frozen(values), dtype, device)


@functools.lru_cache(maxsize=512)
def _cached(values, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.tensor(values, dtype=dtype, device=device)


def _frozen(values):
    """``values`` with every list made a tuple (hashable, for the cache key)."""
    if isinstance(values, (list, tuple)):
        return tuple(_frozen(v) for v in values)
    return values
