"""`ctfa pseudolabel`."""

from __future__ import annotations

from ctfa_cli.commands import not_available

HELP = "Write refined pseudo labels (GeoTIFF) for a split of DATA_DIR."


def pseudolabel() -> None:
    raise not_available("pseudolabel")
