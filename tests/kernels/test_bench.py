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
    assert {row["op"] for row in quick_rows} >= {"par", "bilateral_filter", "energy_loss",
                                                 "crf_inference"}
    for row in quick_rows:
        assert set(row) == set(bench.ROW_KEYS)
        assert row["device"] == "cpu" and isinstance(row["shape"], str)
        assert row["ms"] > 0 and row["speedup"] > 0
        # memory is measured for PyTorch code only (pydensecrf is C++)
        assert row["peak_mb"] is None if row["path"] == "pydensecrf" else row["peak_mb"] >= 0


def test_crf_rows_compare_with_pydensecrf(quick_rows):
    pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 (dev extra) not installed")
    official, lattice = (row for row in quick_rows if row["op"] == "crf_inference")
    assert (official["path"], lattice["path"]) == ("pydensecrf", "lattice")
    assert lattice["speedup"] == pytest.approx(official["ms"] / lattice["ms"])
    assert lattice["agreement"] >= 0.995 and official["agreement"] == 1.0


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


class _FakeOfficialExtension:
    """Stands in for the official ``bilateralfilter`` SWIG module: records its calls and fills
    ``outs`` with the lattice (which reproduces the extension bit for bit, see the parity tests).
    """

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def bilateralfilter_batch(self, images, ins, outs, n, k, h, w, sigma_rgb, sigma_xy):
        from kernels.bilateral.lattice import lattice_bilateral_filter

        self.calls.append((images, ins, outs, n, k, h, w, sigma_rgb, sigma_xy))
        filtered = lattice_bilateral_filter(
            torch.from_numpy(images).view(n, 3, h, w), torch.from_numpy(ins).view(n, k, h, w),
            sigma_rgb, sigma_xy,
        )  # fmt: skip
        outs[:] = filtered.numpy().ravel()


def test_official_row_calls_the_extension_like_the_official_energy_loss():
    from kernels.bilateral.bench import SIGMA_RGB, SIGMA_XY, official_row, synthetic_inputs

    fake = _FakeOfficialExtension()
    images, values = synthetic_inputs((2, 3, 9, 7), "cpu")
    row = official_row(fake.bilateralfilter_batch, images, values, repeats=2)
    assert set(row) == set(bench.ROW_KEYS)
    assert row["path"] == "official-cpp" and row["shape"] == "2x3x9x7" and row["ms"] > 0
    assert row["peak_mb"] is None  # memory outside PyTorch is not counted
    assert len(fake.calls) == 3  # warm-up, then the timed calls
    flat_images, flat_values, out, *dims = fake.calls[-1]
    assert dims == [2, 3, 9, 7, SIGMA_RGB, SIGMA_XY]
    for array, expected in ((flat_images, images), (flat_values, values), (out, values)):
        assert array.dtype == "float32" and array.ndim == 1 and array.size == expected.numel()
    assert torch.equal(torch.from_numpy(flat_images), images.flatten())
    assert fake.calls[0][2] is not out  # a new output array per call, as the official code does


@pytest.mark.parametrize("installed", [True, False])
def test_training_shape_row_compares_with_the_official_extension_when_installed(
    installed, monkeypatch, capsys
):
    import kernels.bilateral.bench as bilateral_bench

    fake = _FakeOfficialExtension()
    monkeypatch.setitem(sys.modules, "bilateralfilter", fake if installed else None)
    monkeypatch.setattr(bilateral_bench, "SHAPE", (2, 2, 11, 13))
    monkeypatch.setattr(bilateral_bench, "REFERENCE_SHAPE", (1, 2, 6, 5))
    rows = [row for row in bilateral_bench.run("cpu", 1) if row["shape"] == "2x2x11x13"]
    if not installed:
        assert [row["path"] for row in rows] == ["lattice"] and rows[0]["speedup"] is None
        return
    official, lattice = rows
    assert (official["path"], lattice["path"]) == ("official-cpp", "lattice")
    assert official["speedup"] == 1.0
    assert lattice["speedup"] == pytest.approx(official["ms"] / lattice["ms"])
    bench.print_table(rows)
    official_line = next(line for line in capsys.readouterr().out.splitlines()
                         if "official-cpp" in line)
    assert "—" in official_line and "1.00×" in official_line  # no peak memory: a dash
