"""The one progress bar of every verb: rich, on stderr, and only where a person watches.

A bar is drawn when the caller enables it, stderr is a terminal (rich's test, so
``TTY_COMPATIBLE=1`` or ``FORCE_COLOR`` force it) and the ``ctfa`` logger is not quietened
(``-q``). Otherwise ``advance`` does nothing, and the verbs' log lines are the record.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

__all__ = ["progress_bar"]


class _MillionsPerSecond(ProgressColumn):
    """Rate in millions of units per second (e.g. ``0.06 Mpx/s``)."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed / 1e6:.2f} M{self.unit}/s")


@contextlib.contextmanager
def progress_bar(description: str, total: int, *, enabled: bool = True, completed: int = 0,
                 unit: str | None = None, transient: bool = False
                 ) -> Iterator[Callable[..., None]]:
    """A progress bar over ``total`` units of work.

    Columns: description, bar, done/total (or, with ``unit``, the percentage and a rate in
    millions, for large counts such as pixels), elapsed time, time remaining, a status text.

    Args:
        description: what is being done, shown first.
        total: units of work.
        enabled: the caller's own condition (e.g. rank 0 only); see the module docstring.
        completed: units already done (a resumed run).
        unit: a unit counted in millions (``"px"`` shows ``1.23 Mpx/s``); None shows
            ``done/total``.
        transient: remove the bar when done.

    Yields:
        ``advance(n=1, status=None)``: count ``n`` more units and, if given, replace the status
        text (e.g. the latest loss terms).
    """
    console = Console(stderr=True)
    if not (enabled and console.is_terminal
            and logging.getLogger("ctfa").isEnabledFor(logging.INFO)):
        yield lambda n=1, status=None: None
        return
    amount = ([MofNCompleteColumn()] if unit is None
              else [TaskProgressColumn(), _MillionsPerSecond(unit)])
    with Progress(TextColumn("{task.description}"), BarColumn(), *amount, TimeElapsedColumn(),
                  TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                  console=console, transient=transient) as bar:
        task = bar.add_task(description, total=total, completed=completed, status="")

        def advance(n: int = 1, status: str | None = None) -> None:
            fields = {} if status is None else {"status": status}
            bar.update(task, advance=n, **fields)

        yield advance
