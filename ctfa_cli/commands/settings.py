"""`ctfa settings`: show and change the workspace's default places."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ctfa_cli.options import JsonOpt, current_workspace

app = typer.Typer(
    help="Show the workspace folders (raw releases, DATA_DIRs, runs, predictions) and where "
         "each value comes from; `set` and `reset` change the settings file.",
    invoke_without_command=True,
)

KeyArg = Annotated[str, typer.Argument(
    help="home (all four folders below it), raw, data, runs or predictions.",
    show_default=False)]


@app.callback()
def show(context: typer.Context, json_output: JsonOpt = False) -> None:
    """Print each folder and its source: flag, environment, settings file or default."""
    if context.invoked_subcommand is not None:
        return
    report(json_output)


def report(json_output: bool) -> None:
    """Print the resolved workspace on stdout: a table, or JSON."""
    workspace = current_workspace()
    if json_output:
        typer.echo(json.dumps(workspace.to_json(), indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("folder", "path", "source", title=f"settings file: {workspace.settings_file}")
    for root in workspace.roots.values():
        table.add_row(root.name, str(root.path), root.source)
    console = Console()
    if not console.is_terminal:  # piped: whole paths, never cut to 80 columns
        console.width = max(console.width, *(len(str(r.path)) + len(r.source) + 24
                                             for r in workspace.roots.values()))
    console.print(table)


@app.command("set")
def set_(
    key: KeyArg,
    value: Annotated[Path, typer.Argument(help="The folder (need not exist yet).",
                                          show_default=False)],
    json_output: JsonOpt = False,
) -> None:
    """Store one folder in the settings file, then show the workspace."""
    from ctfa_cli.workspace import settings_path, write_setting

    write_setting(settings_path(), key, value)
    report(json_output)


@app.command("reset")
def reset(
    key: Annotated[str | None, typer.Argument(
        help="The key to remove (default: every key: the settings file is deleted).",
        show_default=False)] = None,
    json_output: JsonOpt = False,
) -> None:
    """Remove one key (or the whole settings file), then show the workspace."""
    from ctfa_cli.workspace import settings_path, write_setting

    path = settings_path()
    if key is None:
        path.unlink(missing_ok=True)
    else:
        write_setting(path, key, None)
    report(json_output)
