"""Bilateral-filter benchmark rows for ``python -m kernels.bench``.

Inputs are seeded synthetic "aerial-like" images (a smooth random colour field plus pixel noise
of 5 grey levels) and softmax values, with the energy loss's bandwidths (σ_rgb 15, σ_xy 50).

Rows, per device:

* ``REFERENCE_SHAPE`` (small enough for the float64 N×N reference): every path, ``speedup`` =
  reference ms / path ms. The lattice row compares an approximation with the exact sum.
* ``SHAPE`` = 8×6×160×160, the training shape (half of a 320 crop). The float64 reference
  would need B·N² = 5.2 G weights here, so on CUDA the exact ``torch`` path is the comparison
  point (``speedup`` = its ms / path ms). On CPU the exact sum takes seconds per image, so the
  comparison point is the official code's own compiled lattice when it is installed (the
  ``bilateralfilter`` module that CTFA and ToCo users build by hand with SWIG): row
  ``official-cpp``, timed on the same inputs in the same process through its Python API
  (flat float32 arrays, output array allocated per call, as the official energy loss does),
  ``speedup`` = its ms / path ms and ``peak_mb`` None (its memory is not PyTorch's to count).
  Without it the lattice row has ``speedup`` None.

``triton`` rows appear on CUDA only (on CPU they would time Triton's interpreter).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kernels.bench import peak_extra_mb, time_ms

SHAPE: tuple[int, int, int, int] = (8, 6, 160, 160)
REFERENCE_SHAPE: tuple[int, int, int, int] = (2, 6, 40, 40)
#: Tiny shape for a smoke run of the driver (``--quick``).
QUICK_SHAPE: tuple[int, int, int, int] = (2, 2, 12, 12)
SIGMA_RGB, SIGMA_XY = 15.0, 50.0


def synthetic_inputs(
    shape: tuple[int, int, int, int], device: str, seed: int = 0, *, smooth: bool = True
):
    """Seeded ``[B, 3, H, W]`` image and ``[B, K, H, W]`` softmax values.

    The image is a smooth random colour field (0..255) plus noise of 5 grey levels, or, with
    ``smooth=False``, uniform random colours (the lattice's worst case).
    """
    import torch
    import torch.nn.functional as F

    batch, channels, height, width = shape
    generator = torch.Generator().manual_seed(seed)
    if smooth:
        field = torch.rand(batch, 3, max(2, height // 8), max(2, width // 8), generator=generator)
        images = F.interpolate(
            field * 255, size=(height, width), mode="bilinear", align_corners=False
        )
        images = images + 5 * torch.randn(batch, 3, height, width, generator=generator)
    else:
        images = 255 * torch.rand(batch, 3, height, width, generator=generator)
    values = torch.softmax(
        3 * torch.randn(batch, channels, height, width, generator=generator), dim=1
    )
    return images.to(device), values.to(device)


def run(device: str, repeats: int, *, quick: bool = False) -> list[dict]:
    """Time and peak extra memory of each bilateral path on ``device``.

    Args:
        device: ``"cpu"`` or ``"cuda"`` (or ``"cuda:N"``).
        repeats: timed calls per path (the minimum is kept).
        quick: only the first group, on a tiny shape (a smoke test of the driver).

    Returns:
        Rows ``{"op": "bilateral_filter", "path", "device", "shape", "ms", "peak_mb",
        "speedup"}`` (see the module docstring for what ``speedup`` compares).
    """
    from kernels.bilateral import bilateral_filter

    on_cuda = device.startswith("cuda")
    exact_paths = ["torch"] + (["triton"] if on_cuda else [])
    rows: list[dict] = []

    def measure(path: str, images, values, times: int) -> dict:
        method = "lattice" if path == "lattice" else "exact"

        def call():
            return bilateral_filter(images, values, SIGMA_RGB, SIGMA_XY, method=method, path=path)

        peak_mb = peak_extra_mb(call, device)  # also the warm-up (Triton compiles here)
        return _row(path, device, values, time_ms(call, device, times), peak_mb)

    images, values = synthetic_inputs(QUICK_SHAPE if quick else REFERENCE_SHAPE, device)
    group = [
        measure(path, images, values, repeats) for path in ["reference", *exact_paths, "lattice"]
    ]
    _speedups(group, baseline=group[0])
    rows += group

    if quick:
        return rows
    images, values = synthetic_inputs(SHAPE, device)
    if on_cuda:
        group = [measure(path, images, values, repeats) for path in [*exact_paths, "lattice"]]
        _speedups(group, baseline=group[0])
        rows += group
    else:
        group = [measure("lattice", images, values, repeats)]
        official = official_extension()
        if official is not None:
            group.insert(0, official_row(official, images, values, repeats))
            _speedups(group, baseline=group[0])
        rows += group
    return rows


def official_extension() -> Callable[..., Any] | None:
    """``bilateralfilter_batch`` of the official code's compiled extension, or None.

    The official code imports it as ``from bilateralfilter import bilateralfilter_batch``
    (a SWIG module built from its ``wrapper/bilateralfilter``); it is not a dependency of ctfa.
    """
    try:
        from bilateralfilter import bilateralfilter_batch
    except ImportError:
        return None
    return bilateralfilter_batch


def official_row(batch_filter: Callable[..., Any], images, values, repeats: int) -> dict:
    """Time the official extension on CPU tensors ``[B, 3, H, W]`` and ``[B, K, H, W]``.

    Called as the official energy loss calls it: ``batch_filter(images, values, out, B, K, H,
    W, sigma_rgb, sigma_xy)`` with flat float32 arrays, ``out`` a new zeroed array per call.
    """
    import numpy as np

    batch, channels, height, width = values.shape
    flat_images = images.numpy().astype(np.float32).ravel()
    flat_values = values.numpy().astype(np.float32).ravel()

    def call():
        out = np.zeros(flat_values.shape, dtype=np.float32)
        batch_filter(
            flat_images, flat_values, out, batch, channels, height, width, SIGMA_RGB, SIGMA_XY
        )
        return out

    call()  # warm-up
    return _row("official-cpp", "cpu", values, time_ms(call, "cpu", repeats), peak_mb=None)


def _row(path: str, device: str, values, ms: float, peak_mb: float | None) -> dict:
    """One filter row of :func:`run` (``speedup`` filled in by :func:`_speedups`)."""
    return {"op": "bilateral_filter", "path": path, "device": device,
            "shape": "x".join(map(str, values.shape)), "ms": ms, "peak_mb": peak_mb,
            "speedup": None, "agreement": None}


def _speedups(group: list[dict], baseline: dict) -> None:
    for row in group:
        row["speedup"] = baseline["ms"] / row["ms"]


def lattice_error(shape: tuple[int, int, int, int], seed: int = 0, *, smooth: bool = True) -> dict:
    """How far the lattice is from the exact Gaussian sum (float64 reference), on CPU.

    Returns:
        ``{"ratio_mean", "ratio_p01", "ratio_p99"}`` of lattice/exact per output element,
        ``"scale"`` (least-squares factor ``s`` minimising ``|lattice - s·exact|``) and
        ``"rel_l2_scaled"`` = ``|lattice - s·exact| / |s·exact|``, ``"rel_l2"`` =
        ``|lattice - exact| / |exact|``.
    """
    from kernels.bilateral import bilateral_filter
    from kernels.bilateral.reference import bilateral_filter_reference

    images, values = synthetic_inputs(shape, "cpu", seed, smooth=smooth)
    lattice = bilateral_filter(images, values, SIGMA_RGB, SIGMA_XY).double()
    exact = bilateral_filter_reference(images, values, SIGMA_RGB, SIGMA_XY)
    ratio = (lattice / exact).flatten()
    scale = (lattice * exact).sum() / (exact * exact).sum()
    return {
        "ratio_mean": float(ratio.mean()),
        "ratio_p01": float(ratio.quantile(0.01)),
        "ratio_p99": float(ratio.quantile(0.99)),
        "scale": float(scale),
        "rel_l2_scaled": float((lattice - scale * exact).norm() / (scale * exact).norm()),
        "rel_l2": float((lattice - exact).norm() / exact.norm()),
    }
