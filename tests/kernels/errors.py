"""Named error report for kernel tests: max-abs and max-relative error of a result."""

from __future__ import annotations

import numpy as np
import torch


def _as_float64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def report_errors(actual, expected) -> tuple[float, float]:
    """Return ``(max_abs, max_rel)``: the largest ``|a - e|`` and ``|a - e| / |e|`` (0/0 = 0).

    Args:
        actual, expected: tensors or arrays of the same shape.

    Raises:
        AssertionError: if the shapes differ.
    """
    a, e = _as_float64(actual), _as_float64(expected)
    assert a.shape == e.shape, f"shape {a.shape} != expected {e.shape}"
    if a.size == 0:
        return 0.0, 0.0
    diff = np.abs(a - e)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(diff == 0, 0.0, diff / np.abs(e))
    return float(diff.max()), float(rel.max())


def assert_close_report(actual, expected, rtol: float, atol: float, name: str) -> None:
    """Assert ``|a - e| <= atol + rtol·|e|`` everywhere; the message names the case and errors.

    Raises:
        AssertionError: naming ``name``, the count of failing elements, max-abs and max-rel errors.
    """
    a, e = _as_float64(actual), _as_float64(expected)
    max_abs, max_rel = report_errors(a, e)
    bad = ~(np.abs(a - e) <= atol + rtol * np.abs(e))
    assert not bad.any(), (
        f"{name}: {int(bad.sum())}/{bad.size} elements off "
        f"(max_abs={max_abs:.3g}, max_rel={max_rel:.3g}, rtol={rtol}, atol={atol})"
    )
