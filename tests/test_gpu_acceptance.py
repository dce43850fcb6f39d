"""scripts/gpu_acceptance.py without a GPU: its arguments, its report, its exit codes, and its
train → evaluate → predict wiring run on CPU with a tiny configuration."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from tests.training.helpers import TINY

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_acceptance.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_acceptance", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_acceptance"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


acceptance = _load()


def test_defaults(tmp_path):
    args = acceptance.parse_args(["--work", str(tmp_path)])
    assert (args.work, args.report) == (tmp_path, tmp_path / "gpu_acceptance.json")
    assert (args.train_steps, args.bench_steps, args.only) == (300, 10, None)
    fresh = acceptance.parse_args([])
    assert fresh.work.is_dir() and fresh.work.name.startswith("ctfa-gpu-acceptance-")
    fresh.work.rmdir()


def test_options(tmp_path):
    args = acceptance.parse_args(["--work", str(tmp_path), "--report", str(tmp_path / "r.json"),
                                  "--train-steps", "40", "--bench-steps", "3",
                                  "--only", "step_bench", "--only", "torchrun_nccl"])
    assert (args.report, args.train_steps, args.bench_steps) == (tmp_path / "r.json", 40, 3)
    assert args.only == ["step_bench", "torchrun_nccl"]


@pytest.mark.parametrize("argv", [["--train-steps", "0"], ["--bench-steps", "-2"],
                                  ["--only", "nothing"], ["--unknown"]])
def test_bad_usage_exits_2(argv):
    with pytest.raises(SystemExit) as raised:
        acceptance.parse_args(argv)
    assert raised.value.code == 2


def test_the_stages_run_in_the_documented_order():
    assert [s.name for s in acceptance.stages()] == [
        "environment", "gpu_tests", "kernels_bench", "step_bench", "train", "evaluate",
        "predict", "torchrun_nccl"]


def test_a_failure_stops_the_run_writes_the_report_and_exits_1(tmp_path):
    ran = []

    def ok(context):
        ran.append("first")
        context.setdefault("environment", {})["gpu"] = "Fake GPU"
        return {"value": 1.5}

    def broken(context):
        ran.append("second")
        raise RuntimeError("out of memory")

    def never(context):
        ran.append("third")
        return {}

    report_path = tmp_path / "deep" / "report.json"
    stages = [acceptance.Stage("first", ok), acceptance.Stage("second", broken),
              acceptance.Stage("third", never)]
    code = acceptance.run_stages(stages, report_path, {"argv": ["--x"]})
    assert code == 1 and ran == ["first", "second"]
    report = json.loads(report_path.read_text())
    assert (report["format"], report["ok"], report["failed_stage"]) == \
        ("ctfa-gpu-acceptance/1", False, "second")
    assert report["environment"] == {"gpu": "Fake GPU"} and report["argv"] == ["--x"]
    first, second = report["stages"]
    assert (first["name"], first["ok"], first["figures"]) == ("first", True, {"value": 1.5})
    assert (second["name"], second["ok"]) == ("second", False)
    assert second["error"] == "RuntimeError: out of memory"
    assert report["finished_utc"] >= report["started_utc"]


def test_every_stage_passing_exits_0(tmp_path):
    stages = [acceptance.Stage(name, lambda context, n=n: {"n": n})
              for n, name in enumerate(("a", "b"))]
    assert acceptance.run_stages(stages, tmp_path / "r.json", {}) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["ok"] is True and report["failed_stage"] is None
    assert [(s["name"], s["figures"]) for s in report["stages"]] == [("a", {"n": 0}),
                                                                    ("b", {"n": 1})]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_without_a_gpu_the_run_fails_at_the_environment_with_the_versions(tmp_path):
    code = acceptance.main(["--work", str(tmp_path)])
    assert code == 1
    report = json.loads((tmp_path / "gpu_acceptance.json").read_text())
    assert report["failed_stage"] == "environment"
    assert "no CUDA GPU here" in report["stages"][0]["error"]
    assert report["environment"]["torch"] == torch.__version__
    assert len(report["stages"]) == 1


def test_pytest_counts():
    assert acceptance.pytest_counts("....\n12 passed, 3 skipped, 2 warnings in 4.1s\n") == \
        {"passed": 12, "skipped": 3}
    assert acceptance.pytest_counts("1 failed, 30 passed, 1 error in 9.00s") == \
        {"failed": 1, "passed": 30, "error": 1}
    assert acceptance.pytest_counts("no tests ran") == {}


def test_train_evaluate_predict_wiring_on_cpu(tmp_path):
    # The GPU stages' command lines and result parsing, run on CPU with the tiny config: what
    # the first GPU session must not discover by failing.
    sets = {k: v for k, v in TINY.items() if k != "max_iters"}
    context = {"work": tmp_path, "train_steps": 3, "device": "cpu", "synthetic": (3, 256),
               "train_sets": sets, "scene_px": 192}
    trained = acceptance.train(context)
    assert (trained["steps"], trained["skipped"]) == (3, 0)
    assert Path(context["checkpoint"]).is_file()
    evaluated = acceptance.evaluate(context)
    assert 0 <= evaluated["miou"] <= 1 and evaluated["report"]["split"] == "test"
    predicted = acceptance.predict(context)
    assert predicted["scene_px"] == 192 and (tmp_path / "prediction" / "scene.tif").is_file()


def test_step_bench_on_cpu():
    # The paper preset's step with the tiny network, one timed step per precision (bf16 runs
    # under CPU autocast): the figures the GPU run reports, from the same code path.
    sets = {k: v for k, v in TINY.items() if k not in ("max_iters", "seg_gate_iters")}
    figures = acceptance.step_bench({"device": "cpu", "bench_steps": 1, "bench_warmup": 0,
                                     "bench_sets": sets})
    assert figures["config"]["backbone"] == TINY["backbone"]
    assert figures["config"]["crop_size"] == TINY["crop_size"]
    for name in ("float32", "tf32", "bf16"):
        assert figures[name]["s_per_step"] > 0 and figures[name]["peak_memory_gib"] is None
        assert figures[name]["img_per_s"] == pytest.approx(
            TINY["batch_size"] / figures[name]["s_per_step"], rel=0.01)


def test_torchrun_smoke_on_cpu(tmp_path):
    # The same torchrun command line and process, with gloo on CPU instead of NCCL.
    figures = acceptance.torchrun_nccl({"work": tmp_path, "device": "cpu"})
    assert figures["output"].split()[:3] == ["gloo", "ok", "1"]
