"""Fixtures of the training tests."""

from __future__ import annotations

import pytest

from tests.training.helpers import tiny_datadir


@pytest.fixture(scope="session")
def datadir(tmp_path_factory):
    """The session's tiny synthetic DATA_DIR (see :func:`tests.training.helpers.tiny_datadir`)."""
    return tiny_datadir(tmp_path_factory)
