"""`ctfa predict`."""

from __future__ import annotations

from ctfa_cli.commands import not_available

HELP = "Map whole scenes into a georeferenced class COG (and polygons)."


def predict() -> None:
    raise not_available("predict")
