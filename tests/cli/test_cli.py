"""Root CLI: help, version, exit codes."""

import subprocess
import sys

from typer.testing import CliRunner

from ctfa_cli import __version__
from ctfa_cli.cli import app

runner = CliRunner()


def test_help_lists_every_verb():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for verb in ("prepare", "train", "pseudolabel", "evaluate", "predict", "demo", "settings"):
        assert verb in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("ctfa ")


def test_unknown_option_is_usage_error():
    result = runner.invoke(app, ["train", "--no-such-flag"])
    assert result.exit_code == 2


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "ctfa_cli", "--help"], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0
    assert "prepare" in proc.stdout


def test_an_unexpected_error_is_a_bug_report_line_with_exit_3(run_cli, monkeypatch):
    import ctfa_cli.workspace as workspace

    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(workspace, "resolve_workspace", broken)
    code, out, err = run_cli("settings")
    assert (code, out) == (3, "")
    assert err == ("Error: internal error (ZeroDivisionError: division by zero); this is a bug "
                   f"in ctfa {__version__}: please report it with the command line and the "
                   "traceback that `ctfa -v …` prints\n")
    code, _, err = run_cli("-v", "settings")
    assert code == 3 and "Traceback (most recent call last)" in err
    assert 'raise ZeroDivisionError("division by zero")' in err
