"""The training-step benchmark runs and reports every phase (a smoke test, not a timing)."""

from __future__ import annotations

from ctfa_cli.training.bench import STEP_PHASES, run
from tests.training.helpers import tiny_config


def test_bench_reports_every_phase():
    result = run(tiny_config(), steps=1, warmup=0, clock="cpu")
    assert set(result["phases"]) == {*STEP_PHASES, "backward+step"}
    assert all(ms > 0 for ms in result["phases"].values())
    assert result["s_per_step"] > 0 and result["config"]["crop_size"] == 64
    # The encoder passes and the backward pass do matrix products; the crops do none.
    assert set(result["gflop"]) == set(result["phases"])
    assert result["gflop"]["forward"] > 0 and result["gflop"]["cams"] > 0
    assert result["gflop"]["backward+step"] > result["gflop"]["forward"] / 2
    assert result["gflop"]["crops"] == 0
