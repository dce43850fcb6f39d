"""Bilateral (5-D Gaussian over position and colour) filtering of K channels per image.

Two methods, several implementations (paths), one public function:

* ``method="lattice"``: the reference code's permutohedral-lattice approximation, reproduced
  to float rounding (:mod:`kernels.bilateral.lattice`; path ``"lattice"``, CPU and GPU).
* ``method="exact"``: the dense Gaussian sum ``out_i = Σ_j exp(-|f_i - f_j|²/2) v_j``, self term
  included, unnormalised (the sum the lattice approximates). Paths: ``"reference"`` (float64,
  materialises N×N; small images only), ``"torch"`` (chunked, any device; the CPU default) and
  ``"triton"`` (tiled kernel; the CUDA default).
"""

from __future__ import annotations

import os

from torch import Tensor

from ctfa_cli.errors import CtfaUsageError

PATH_ENV_VAR = "CTFA_KERNEL_PATH_BILATERAL"
METHOD_PATHS = {"lattice": ("lattice",), "exact": ("reference", "torch", "triton")}


def bilateral_filter(
    images: Tensor,
    values: Tensor,
    sigma_rgb: float,
    sigma_xy: float,
    *,
    method: str = "lattice",
    path: str | None = None,
) -> Tensor:
    """Filter ``values`` with Gaussian weights over pixel position and colour.

    The feature of pixel (row j, column i) is ``[i/σxy, j/σxy, R/σrgb, G/σrgb, B/σrgb]``.

    Args:
        images: ``[N, 3, H, W]`` float32 RGB, 0..255 (not clamped: any real values work).
        values: ``[N, K, H, W]`` float32, same device.
        sigma_rgb: colour bandwidth, in grey levels.
        sigma_xy: spatial bandwidth, in pixels.
        method: ``"lattice"`` (the reference's approximation) or ``"exact"``.
        path: force an implementation of ``method`` (see the module docstring). When None, the
            environment variable ``CTFA_KERNEL_PATH_BILATERAL`` is used if it names a path of
            ``method`` (it is meant for tests and benchmarks, and does not turn a lattice call
            into an exact one); otherwise the device decides.

    Returns:
        ``[N, K, H, W]`` float32 on the inputs' device.

    Raises:
        ValueError: bad shapes, devices or dtypes.
        CtfaUsageError: an unknown method or path (argument or environment variable), a path
            that does not implement ``method``, the triton path without CUDA (or its
            interpreter).
        CtfaError: bandwidths so small that the lattice keys overflow (lattice only).
    """
    _check_inputs(images, values)
    if method not in METHOD_PATHS:
        raise CtfaUsageError(
            f"bilateral filter: method must be one of {sorted(METHOD_PATHS)}, not {method!r}"
        )
    chosen = path if path is not None else _path_from_environment(method)
    if chosen is None:
        on_cuda = images.device.type == "cuda"
        chosen = "lattice" if method == "lattice" else ("triton" if on_cuda else "torch")
    if chosen not in METHOD_PATHS[method]:
        raise CtfaUsageError(
            f"bilateral filter: path {chosen!r} does not implement method {method!r}; "
            f"choose one of {METHOD_PATHS[method]}"
        )

    if chosen == "lattice":
        from kernels.bilateral.lattice import lattice_bilateral_filter

        return lattice_bilateral_filter(images, values, sigma_rgb, sigma_xy)
    if chosen == "reference":
        from kernels.bilateral.reference import bilateral_filter_reference

        return bilateral_filter_reference(images, values, sigma_rgb, sigma_xy).float()
    if chosen == "torch":
        from kernels.bilateral.exact import exact_bilateral_filter

        return exact_bilateral_filter(images, values, sigma_rgb, sigma_xy)
    from kernels.bilateral.exact_triton import triton_bilateral_filter  # imports triton

    return triton_bilateral_filter(images, values, sigma_rgb, sigma_xy)


def _path_from_environment(method: str) -> str | None:
    value = os.environ.get(PATH_ENV_VAR, "").strip()
    if not value:
        return None
    known = {p for paths in METHOD_PATHS.values() for p in paths}
    if value not in known:
        raise CtfaUsageError(
            f"{PATH_ENV_VAR}={value!r} is not a bilateral filter path; use one of "
            f"{sorted(known)} or unset it"
        )
    return value if value in METHOD_PATHS[method] else None


def _check_inputs(images: Tensor, values: Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"bilateral_filter: images must be [N, 3, H, W], got {list(images.shape)}")
    if (
        values.dim() != 4
        or values.shape[0] != images.shape[0]
        or values.shape[2:] != images.shape[2:]
    ):
        raise ValueError(
            f"bilateral_filter: values must be [N, K, H, W] matching images "
            f"{list(images.shape)}, got {list(values.shape)}"
        )
    if images.device != values.device:
        raise ValueError(
            f"bilateral_filter: images on {images.device} but values on "
            f"{values.device}; move them to one device"
        )
    if not (images.is_floating_point() and values.is_floating_point()):
        raise ValueError("bilateral_filter: images and values must be floating point")
