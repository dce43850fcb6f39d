"""The shared progress bar: drawn only on a terminal and unless the ctfa logger is quietened."""

import logging

import pytest

from ctfa_cli.progress import progress_bar


@pytest.fixture
def ctfa_level():
    logger = logging.getLogger("ctfa")
    saved = logger.level
    yield logger.setLevel
    logger.setLevel(saved)


def _run(**kwargs):
    with progress_bar("tiling scenes", 3, **kwargs) as advance:
        advance()
        advance(2, status="loss 0.123")


def test_bar_is_drawn_on_a_terminal(monkeypatch, capsys, ctfa_level):
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    ctfa_level(logging.INFO)
    _run()
    captured = capsys.readouterr()
    assert captured.out == ""  # stdout is for data
    assert "tiling scenes" in captured.err and "3/3" in captured.err
    assert "loss 0.123" in captured.err


def test_bar_shows_a_rate_in_millions_with_a_unit(monkeypatch, capsys, ctfa_level):
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    ctfa_level(logging.INFO)
    _run(unit="px")
    err = capsys.readouterr().err
    assert "100%" in err and "Mpx/s" in err and "3/3" not in err


@pytest.mark.parametrize("terminal,level,enabled", [
    ("0", logging.INFO, True),  # not a terminal: log lines only
    ("1", logging.WARNING, True),  # ctfa -q
    ("1", logging.INFO, False),  # the caller's condition (e.g. not rank 0)
])
def test_bar_is_silent_otherwise(monkeypatch, capsys, ctfa_level, terminal, level, enabled):
    monkeypatch.setenv("TTY_COMPATIBLE", terminal)
    ctfa_level(level)
    _run(enabled=enabled)
    assert capsys.readouterr() == ("", "")
