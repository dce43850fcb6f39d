"""The ``ctfa`` Typer application: root options and the registered verbs.

Commands import torch lazily, inside their functions, so that ``ctfa --help`` stays fast.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from ctfa_cli import __version__
from ctfa_cli.commands import demo, evaluate, export, predict, prepare, pseudolabel, settings, train
from ctfa_cli.errors import CtfaError
from ctfa_cli.options import set_home_flag

# Root options users also type after the verb (`ctfa prepare synthetic -q`).
ROOT_FLAGS = ("-q", "--quiet", "--verbose")

EPILOG = (
    "Default places (one workspace): raw releases in ~/ctfa/raw/<dataset>, DATA_DIRs in "
    "~/ctfa/data/<dataset>, runs in ~/ctfa/runs/<dataset>/train, train2 …, predictions in "
    "~/ctfa/predictions/<dataset>/<run>. Move them all with --home or CTFA_HOME, one with "
    "CTFA_RAW_DIR, CTFA_DATA_DIR, CTFA_RUNS_DIR or CTFA_PREDICTIONS_DIR, or for good with "
    "`ctfa settings set home FOLDER`; `ctfa settings` shows where each comes from. "
    "Start with `ctfa demo`, or: ctfa prepare potsdam; ctfa train --dataset potsdam; "
    "ctfa predict scene.tif"
)


def _is_root_flag(token: str) -> bool:
    return token in ROOT_FLAGS or (len(token) > 1 and token[0] == "-" and token[1] != "-"
                                   and set(token[1:]) == {"v"})


class RootFlagsAnywhere(TyperGroup):
    """Accept ``-v``/``-q`` after the verb too: they are moved before it (never past ``--``)."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        end = args.index("--") if "--" in args else len(args)
        hoisted = [token for token in args[1:end] if _is_root_flag(token)]
        rest = [token for token in args[1:end] if not _is_root_flag(token)]
        if args and hoisted:
            args = [*hoisted, args[0], *rest, *args[end:]]
        return super().parse_args(ctx, args)


app = typer.Typer(
    name="ctfa",
    cls=RootFlagsAnywhere,
    help="Weakly supervised semantic segmentation of remote-sensing imagery with CTFA.",
    epilog=EPILOG,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

app.add_typer(prepare.app, name="prepare")
app.add_typer(settings.app, name="settings")
app.command("train", help=train.HELP)(train.train)
app.command("pseudolabel", help=pseudolabel.HELP)(pseudolabel.pseudolabel)
app.command("evaluate", help=evaluate.HELP)(evaluate.evaluate)
app.command("predict", help=predict.HELP)(predict.predict)
app.command("export", help=export.HELP)(export.export)
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
    home: Annotated[
        Path | None,
        typer.Option("--home", help="Workspace folder for this command: raw/, data/, runs/ "
                     "and predictions/ below it (beats CTFA_HOME, the CTFA_*_DIR variables "
                     "and the settings file).", show_default=False),
    ] = None,
) -> None:
    """Weakly supervised semantic segmentation of remote-sensing imagery with CTFA."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    configure_logging(level)
    set_home_flag(home)


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


#: Exit status of an unexpected error (a bug), distinct from 1 (runtime/domain) and 2 (usage).
INTERNAL_ERROR = 3


def main() -> None:
    """Console-script entry point: run the app, turn expected errors into one line + exit code.

    An unexpected exception is a bug: one line asking for a report, exit
    :data:`INTERNAL_ERROR`, and the traceback only with ``-v``.
    """
    try:
        app()
    except CtfaError as exc:
        typer.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("Interrupted.", err=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the last resort: every other error is a bug
        if logging.getLogger("ctfa").isEnabledFor(logging.DEBUG):
            import traceback

            traceback.print_exc()
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        typer.echo(f"Error: internal error ({reason}); this is a bug in ctfa {__version__}: "
                   "please report it with the command line and the traceback that `ctfa -v …` "
                   "prints", err=True)
        sys.exit(INTERNAL_ERROR)
