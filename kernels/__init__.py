"""Compute kernels for CTFA: one folder per op, a readable reference, fast CPU/GPU paths."""
