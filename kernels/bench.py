"""Kernel benchmark driver: ``python -m kernels.bench [--device cpu|cuda] [--repeats N] [--json]``.

Collects rows from ``kernels.par.bench``, ``kernels.bilateral.bench`` and
``kernels.dense_crf.bench``; every op module exposes ``run(device, repeats, *, quick=False)``
returning rows ``{"op", "path", "device", "shape", "ms", "peak_mb", "speedup", "agreement"}``
where ``speedup`` is the reference path's time over this path's, measured in the same process,
and ``agreement`` the share of output labels equal to the reference row's (ops that output
labels, such as the CRF; None elsewhere).
The measuring helpers below are shared by those modules, so every row means the same:

* ``ms`` — the minimum wall time over ``repeats`` calls (the minimum is the least disturbed
  by other processes), CUDA synchronised before and after each call;
* ``peak_mb`` — peak memory allocated by one call beyond what was allocated before it,
  in MiB: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the running sum of the
  allocation and free events that ``torch.profiler`` (``profile_memory=True``) records
  from PyTorch's CPU allocator, so it counts tensor memory only, not Python objects or
  allocator caching (None for a row timing code outside PyTorch, such as the official C++
  extension in ``kernels.bilateral.bench``).

Without ``--json`` a table goes to stdout with, per row, the time and memory relative to
the reference row of the same op and shape.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from ctfa_cli.errors import CtfaError, CtfaUsageError


class Op(str, enum.Enum):
    """An op with a benchmark: module ``kernels.<value>.bench`` gives its rows."""

    par = "par"
    bilateral = "bilateral"
    dense_crf = "dense_crf"


ROW_KEYS: tuple[str, ...] = ("op", "path", "device", "shape", "ms", "peak_mb", "speedup",
                             "agreement")


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], Any], device: str, repeats: int) -> float:
    """Minimum wall time of ``fn()`` over ``repeats`` (≥ 1) calls, in milliseconds."""
    best = float("inf")
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        fn()
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best * 1e3


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2: the profiler's C++ side logs its start and stop there."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_extra_mb(fn: Callable[[], Any], device: str) -> float:
    """Peak tensor memory allocated by one ``fn()`` call beyond the memory held before, in MiB.

    CUDA: ``torch.cuda.max_memory_allocated`` after a reset. CPU: the profiler's allocation
    events (see the module docstring). The call's result counts while it is alive.
    """
    import torch

    if device.startswith("cuda"):
        _synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        _synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20

    from torch.profiler import ProfilerActivity, profile

    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        with (
            _quiet_stderr(),
            profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
        ):
            fn()
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    allocations = sorted(
        (event for event in events if event.get("name") == "[memory]"),
        key=lambda event: event["ts"],
    )
    live = peak = 0
    for event in allocations:
        live += event["args"]["Bytes"]
        peak = max(peak, live)
    return peak / 2**20


def collect(device: str, repeats: int, ops: list[Op], quick: bool = False) -> list[dict]:
    """Rows of every op in ``ops``, in that order.

    Raises:
        CtfaUsageError: on a device other than ``cpu``/``cuda[:N]``, or ``cuda`` without a GPU.
        ValueError: if an op module returns a row whose keys are not :data:`ROW_KEYS`.
    """
    import importlib

    import torch

    if device != "cpu" and not device.startswith("cuda"):
        raise CtfaUsageError(f"--device must be cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CtfaUsageError("--device cuda: no CUDA device is visible; use --device cpu")
    rows: list[dict] = []
    for op in ops:
        module = f"kernels.{op.value}.bench"
        for row in importlib.import_module(module).run(device, repeats, quick=quick):
            if set(row) != set(ROW_KEYS):
                raise ValueError(f"{module}.run gave a row with keys {sorted(row)}, not {ROW_KEYS}")
            rows.append(row)
    return rows


def _ratio_text(value: float | None, reference: float | None) -> str:
    return "—" if reference is None or not value else f"{reference / value:.2f}×"


def print_table(rows: list[dict]) -> None:
    """Print ``rows`` as a rich table on stdout, with ratios to each op's reference row."""
    from rich.console import Console
    from rich.table import Table

    reference = {
        (row["op"], row["device"], row["shape"]): row for row in rows if row["path"] == "reference"
    }
    table = Table(
        title="CTFA kernels",
        caption="ms: min over repeats; peak MB: extra memory of one call; "
        "speedup: reference ms / path ms; memory: reference peak / path peak; agreement: "
        "labels equal to the reference's",
    )
    for column in ("op", "path", "device", "shape"):
        table.add_column(column, overflow="fold")
    for column in ("ms", "peak MB", "speedup", "memory", "agreement"):
        table.add_column(column, justify="right", overflow="fold")
    for row in rows:
        ref = reference.get((row["op"], row["device"], row["shape"]))
        table.add_row(
            row["op"],
            row["path"],
            row["device"],
            str(row["shape"]),
            f"{row['ms']:.1f}",
            "—" if row["peak_mb"] is None else f"{row['peak_mb']:.1f}",
            f"{row['speedup']:.2f}×" if row["speedup"] is not None else "—",
            _ratio_text(row["peak_mb"], ref["peak_mb"] if ref else None),
            "—" if row["agreement"] is None else f"{row['agreement']:.2%}",
        )
    console = Console()
    if not console.is_terminal:
        console.width = 160  # a file or pipe has no width to respect: keep one row per line
    console.print(table)


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


@app.command()
def bench(
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    repeats: Annotated[
        int, typer.Option("--repeats", min=1, help="Timed calls per path (min kept).")
    ] = 3,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON list of rows instead of a table.")
    ] = False,
    ops: Annotated[
        list[Op] | None, typer.Option("--op", help="Op to run (repeatable); default: all.")
    ] = None,
    quick: Annotated[bool, typer.Option("--quick", hidden=True)] = False,
) -> None:
    """Time and peak memory of every kernel path on realistic training shapes."""
    import torch

    # Benchmarks only: use every core this process may run on.
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    rows = collect(device, repeats, ops or list(Op), quick=quick)
    if as_json:
        typer.echo(json.dumps(rows))
    else:
        print_table(rows)


def main() -> None:
    """Entry point: run the driver, turn expected errors into one line + exit code."""
    try:
        app()
    except CtfaError as exc:
        typer.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
