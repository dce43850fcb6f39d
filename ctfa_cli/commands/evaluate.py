"""`ctfa evaluate`."""

from __future__ import annotations

from ctfa_cli.commands import not_available

HELP = "Report mIoU, F1, OA and kappa on a split of DATA_DIR."


def evaluate() -> None:
    raise not_available("evaluate")
