"""`ctfa demo`."""

from __future__ import annotations

from ctfa_cli.commands import not_available

HELP = "Run prepare, train, evaluate, pseudolabel and predict on synthetic scenes."


def demo() -> None:
    raise not_available("demo")
