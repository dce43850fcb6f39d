"""`ctfa prepare <dataset>`: tile raw scenes into a DATA_DIR of chips with image-level labels."""

from __future__ import annotations

import typer

from ctfa_cli.commands import not_available

app = typer.Typer(
    help="Tile a benchmark, your own scenes or synthetic scenes into a DATA_DIR of chips.",
    no_args_is_help=True,
)


@app.command("synthetic")
def synthetic() -> None:
    """Generate synthetic georeferenced aerial scenes (the embedded default data set)."""
    raise not_available("prepare synthetic")
