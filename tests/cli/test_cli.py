"""Root CLI: help, version, exit codes."""

import subprocess
import sys

from typer.testing import CliRunner

from ctfa_cli.cli import app

runner = CliRunner()


def test_help_lists_every_verb():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for verb in ("prepare", "train", "pseudolabel", "evaluate", "predict", "demo"):
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
