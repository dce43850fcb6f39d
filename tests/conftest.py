"""Shared test set-up: tests are small, seeded, offline."""

import os

import pytest

# Two cores on CI: keep torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def _seeded():
    import numpy as np
    import torch

    torch.manual_seed(0)
    np.random.seed(0)
