"""`ctfa train`."""

from __future__ import annotations

from ctfa_cli.commands import not_available

HELP = "Train the CTFA model from image-level labels (single stage)."


def train() -> None:
    raise not_available("train")
