"""PAR (pixel-adaptive refinement): soft masks propagated between pixels of similar colour.

One public function, :func:`par`, dispatching to one of three implementations with the
same semantics (the official ``model/PAR.py``, see ``shared/parity/FORMAT.md`` §1):

* ``"reference"`` — :mod:`kernels.par.reference`, the official 48-neighbour stack in plain
  PyTorch; any float dtype, any device, differentiable;
* ``"cpu"`` — :mod:`kernels.par.fused_cpu`, shifted views accumulated in place, no stack;
  any float dtype (plain PyTorch, so it also runs on CUDA tensors); the default on CPU;
* ``"triton"`` — :mod:`kernels.par.triton_kernel`, Triton kernels; float32 on CUDA (or on
  CPU tensors when ``TRITON_INTERPRET=1`` was set before the import); the default on CUDA.

The ``path`` argument, else the ``CTFA_KERNEL_PATH_PAR`` environment variable, forces one.
PAR runs under ``torch.no_grad()`` in training; the fast paths have no backward and raise
if asked for one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor

from ctfa_cli.errors import CtfaUsageError
from kernels.par.reference import DEFAULT_DILATIONS, par_reference

__all__ = ["PATHS", "PATH_ENV_VAR", "par"]

#: Implementations :func:`par` can be forced to use.
PATHS: tuple[str, ...] = ("reference", "cpu", "triton")
#: Environment variable that forces a path when ``path`` is not given.
PATH_ENV_VAR = "CTFA_KERNEL_PATH_PAR"


def _choose_path(path: str | None, images: Tensor) -> str:
    source = "path"
    if path is None and os.environ.get(PATH_ENV_VAR):
        path, source = os.environ[PATH_ENV_VAR], PATH_ENV_VAR
    if path is None:
        return "triton" if images.is_cuda else "cpu"
    if path not in PATHS:
        raise CtfaUsageError(f"PAR: {source}={path!r} is not a kernel path; use one of {PATHS}")
    return path


def par(
    images: Tensor,
    masks: Tensor,
    dilations: Sequence[int] = DEFAULT_DILATIONS,
    num_iter: int = 10,
    *,
    path: str | None = None,
) -> Tensor:
    """Refine soft masks with pixel-adaptive refinement (official PAR semantics).

    Args:
        images: ``[B, 3, H, W]`` float32, RGB in [0, 1].
        masks: ``[B, K, h, w]`` float32 soft maps (softmax over K), same device; resized
            bilinearly with ``align_corners=True`` to ``(H, W)`` first.
        dilations: dilation in pixels of each ring of 8 neighbours.
        num_iter: propagation steps.
        path: ``"reference"``, ``"cpu"`` or ``"triton"``; default ``$CTFA_KERNEL_PATH_PAR``,
            else ``"triton"`` for CUDA tensors and ``"cpu"`` otherwise.

    Returns:
        ``[B, K, H, W]`` refined masks, the inputs' dtype and device. The weights of each pixel
        sum to 1.01 (an official quirk), so the channel sum grows by ``1.01**num_iter``.

    Raises:
        ValueError: on inputs of the wrong rank, channel count or batch size, or a dtype the
            chosen path does not take.
        RuntimeError: if a fast path is asked for a gradient (it has none; use
            ``path="reference"`` or call under ``torch.no_grad()``).
        CtfaUsageError: on an unknown path, or ``"triton"`` where Triton cannot run.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"PAR: images must be [B, 3, H, W], got {list(images.shape)}")
    if masks.ndim != 4 or masks.shape[0] != images.shape[0]:
        raise ValueError(
            f"PAR: masks must be [B, K, h, w] with B={images.shape[0]}, got {list(masks.shape)}"
        )
    chosen = _choose_path(path, images)
    if chosen == "reference":
        return par_reference(images, masks, dilations, num_iter)
    if torch.is_grad_enabled() and (images.requires_grad or masks.requires_grad):
        raise RuntimeError(
            f"PAR path {chosen!r} has no backward; call it under torch.no_grad() "
            "or use path='reference' for gradients"
        )
    if chosen == "cpu":
        from kernels.par.fused_cpu import par_fused

        return par_fused(images, masks, dilations, num_iter)
    return _par_triton(images, masks, dilations, num_iter)


def _par_triton(images: Tensor, masks: Tensor, dilations: Sequence[int], num_iter: int) -> Tensor:
    try:
        from kernels.par.triton_kernel import INTERPRETED, par_triton
    except ImportError as error:
        raise CtfaUsageError(
            f"PAR: the 'triton' path needs the triton package ({error}); use path='cpu'"
        ) from error
    if not (images.is_cuda or INTERPRETED):
        raise CtfaUsageError(
            f"PAR: the 'triton' path needs CUDA tensors, got {images.device}; use path='cpu', "
            "or set TRITON_INTERPRET=1 before importing kernels.par.triton_kernel to interpret"
        )
    return par_triton(images, masks, dilations, num_iter)
