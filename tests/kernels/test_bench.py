"""The kernel benchmark driver: JSON schema, table, errors and the memory measure."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import kernels.bench as bench
from ctfa_cli.errors import CtfaUsageError


@pytest.fixture(scope="module")
def quick_rows() -> list[dict]:
    """Rows of ``python -m kernels.bench --quick --repeats 1 --json`` (every op, tiny shapes)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in list(env):
        if name.startswith("CTFA_KERNEL_PATH"):
            del env[name]
    result = subprocess.run(
        [sys.executable, "-m", "kernels.bench", "--quick", "--repeats", "1", "--json"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def par_rows(quick_rows) -> list[dict]:
    return [row for row in quick_rows if row["op"] == "par"]


def test_every_op_gives_rows_in_the_schema(quick_rows):
    assert {row["op"] for row in quick_rows} >= {"par", "bilateral_filter", "energy_loss"}
    for row in quick_rows:
        assert set(row) == set(bench.ROW_KEYS)
        assert row["device"] == "cpu" and isinstance(row["shape"], str)
        assert row["ms"] > 0 and row["peak_mb"] >= 0 and row["speedup"] > 0


def test_par_rows(par_rows):
    assert [row["path"] for row in par_rows] == ["reference", "cpu"]
    for row in par_rows:
        assert row["shape"] == "1x2x24x24" and row["peak_mb"] > 0
    reference, fused = par_rows
    assert reference["speedup"] == 1.0
    assert fused["speedup"] == pytest.approx(reference["ms"] / fused["ms"])


def test_table_shows_every_row_and_ratio(par_rows, capsys):
    bench.print_table(par_rows)
    out = capsys.readouterr().out
    assert "reference" in out and "1x2x24x24" in out
    memory_ratio = par_rows[0]["peak_mb"] / par_rows[1]["peak_mb"]
    assert f"{memory_ratio:.2f}×" in out and f"{par_rows[1]['speedup']:.2f}×" in out


def test_peak_extra_mb_counts_live_tensors_on_cpu():
    def two_live_megabytes() -> torch.Tensor:
        a = torch.ones(2**18)  # 1 MiB
        b = a * 2  # 1 MiB, both alive here
        del a
        return b + 1  # b and the result alive: still 2 MiB at most

    assert bench.peak_extra_mb(two_live_megabytes, "cpu") == pytest.approx(2.0, abs=0.01)


def test_usage_errors(monkeypatch):
    with pytest.raises(CtfaUsageError, match="--device"):
        bench.collect("tpu", 1, [bench.Op.par])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CtfaUsageError, match="no CUDA device"):
        bench.collect("cuda", 1, [bench.Op.par])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "tpu"], "Error: --device must be cpu or cuda, got 'tpu'"),
        (["--op", "nope"], "Invalid value for '--op'"),
        (["--repeats", "0"], "Invalid value for '--repeats'"),
    ],
)
def test_cli_usage_errors_exit_2(args, message, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["kernels.bench", *args])
    with pytest.raises(SystemExit) as exit_info:
        bench.main()
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2 and out == ""
    assert message in err
