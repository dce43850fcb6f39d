"""Shared test set-up: tests are small, seeded, offline."""

import logging
import os
import shutil

import pytest

# Two cores on CI: keep torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session", autouse=True)
def _remove_temporary_folders_under_mutmut(tmp_path_factory):
    """Under mutmut, remove this session's temporary folders when it ends.

    mutmut runs one pytest session per mutant in a forked child that exits without releasing
    pytest's lock on its numbered temporary folder, so pytest never prunes them: a whole run
    (~3,900 sessions of ~40 MB of bundles and DATA_DIRs) would fill ~150 GB of /tmp.
    """
    yield
    if os.environ.get("MUTANT_UNDER_TEST"):
        shutil.rmtree(tmp_path_factory.getbasetemp(), ignore_errors=True)


@pytest.fixture(autouse=True)
def _seeded():
    import numpy as np
    import torch

    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(autouse=True)
def _restore_ctfa_logger():
    """In-process CLI runs configure the "ctfa" logger (stderr handler, no propagation).

    Restore it after each test so that later tests' ``caplog`` sees ctfa's records again.
    """
    logger = logging.getLogger("ctfa")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


@pytest.fixture(autouse=True)
def workspace_home(tmp_path, monkeypatch):
    """A temporary workspace and settings folder for every test: no test reads or writes the
    real ``~/ctfa`` or ``~/.config/ctfa``. Returns the workspace home."""
    from ctfa_cli.workspace import HOME_ENV, ROOT_ENV

    home = tmp_path / "ctfa-home"
    for variable in ROOT_ENV.values():
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv(HOME_ENV, str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    return home
