"""The ``ctfa`` Typer application: root options and the registered verbs.

Commands import torch lazily, inside their functions, so that ``ctfa --help`` stays fast.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from ctfa_cli import __version__
from ctfa_cli.commands import demo, evaluate, predict, prepare, pseudolabel, train
from ctfa_cli.errors import CtfaError

app = typer.Typer(
    name="ctfa",
    help="Weakly supervised semantic segmentation of remote-sensing imagery with CTFA.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

app.add_typer(prepare.app, name="prepare")
app.command("train", help=train.HELP)(train.train)
app.command("pseudolabel", help=pseudolabel.HELP)(pseudolabel.pseudolabel)
app.command("evaluate", help=evaluate.HELP)(evaluate.evaluate)
app.command("predict", help=predict.HELP)(predict.predict)
app.command("demo", help=demo.HELP)(demo.demo)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ctfa {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logs.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Weakly supervised semantic segmentation of remote-sensing imagery with CTFA."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    configure_logging(level)


def configure_logging(level: int) -> None:
    """Send ``ctfa`` logs to stderr through rich (stdout is kept for data)."""
    from rich.console import Console
    from rich.logging import RichHandler

    logger = logging.getLogger("ctfa")
    logger.handlers.clear()
    handler = RichHandler(console=Console(stderr=True), show_path=False, markup=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def main() -> None:
    """Console-script entry point: run the app, turn expected errors into one line + exit code."""
    try:
        app()
    except CtfaError as exc:
        typer.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("Interrupted.", err=True)
        sys.exit(130)
