"""The prediction benchmark: its rows on a tiny scene, in both precisions."""

from __future__ import annotations

import json

import pytest

from ctfa_cli.inference import bench


@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_rows_compare_each_pipeline_with_the_bare_forward(amp):
    rows = bench.run(size=80, tile=48, batch_size=2, device="cpu", repeats=1, amp=amp)
    assert [row["config"] for row in rows] == ["forward", "predict", "predict + vector"]
    for row in rows:
        assert row["amp"] == amp and row["scene"] == "80x80" and row["tile"] == 48
        assert row["mpx_per_s"] > 0 and row["ratio"] > 0
    assert rows[0]["ratio"] == 1.0
    assert rows[2]["polygons"] >= 1


def test_main_prints_json_rows(capsys):
    bench.main(["--size", "64", "--tile", "32", "--batch-size", "2", "--device", "cpu",
                "--repeats", "1", "--amp", "bf16", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert {row["amp"] for row in rows} == {"bf16"} and len(rows) == 3
