"""CLI test helpers: run the real console entry point in-process and capture what it prints."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest

from ctfa_cli.cli import main


@pytest.fixture
def run_cli(capsys, monkeypatch) -> Callable[..., tuple[int, str, str]]:
    """Return ``run_cli(*args) -> (exit_code, stdout, stderr)``.

    It calls :func:`ctfa_cli.cli.main` (the console script), so expected errors come back as
    exit codes 1/2 with their one-line message on stderr, exactly as a user sees them.
    Arguments are converted with ``str`` so that paths can be passed directly.
    """

    def run(*args) -> tuple[int, str, str]:
        capsys.readouterr()  # drop anything printed before this call
        monkeypatch.setattr(sys, "argv", ["ctfa", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return run
