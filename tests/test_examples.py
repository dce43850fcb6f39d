"""examples/: preset YAMLs that spell the presets out, the jq pipeline, the ablation script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ctfa_cli.config import PAPER_OVERRIDES, TrainConfig, resolve_train_config
from tests.training.helpers import TINY

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# (file, dataset, preset it spells out)
PRESET_FILES = [(f"paper_{name}.yaml", name, "paper") for name in PAPER_OVERRIDES]
PRESET_FILES.append(("cpu.yaml", "synthetic", "cpu"))


def test_every_example_yaml_is_covered():
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(f for f, _, _ in
                                                                      PRESET_FILES)


@pytest.mark.parametrize(("name", "dataset", "preset"), PRESET_FILES)
def test_example_yaml_spells_out_its_preset(name, dataset, preset):
    path = EXAMPLES / name
    fields = yaml.safe_load(path.read_text())
    # every field written out (a field added to TrainConfig means regenerating the file) …
    assert list(fields) == list(TrainConfig.model_fields)
    # … equal to the preset, through the loader `ctfa train --config` uses …
    expected = resolve_train_config(dataset, preset)
    assert resolve_train_config(dataset, preset, path) == expected
    # … and self-contained: it gives the same config whatever preset it is applied to.
    other = "cpu" if preset == "paper" else "paper"
    assert resolve_train_config(dataset, other, path) == expected
    header = path.read_text().splitlines()[:2]
    assert header[0].startswith("# ") and preset in header[0]
    assert header[1] == f"# Use: ctfa train --data DATA_DIR --out RUN_DIR --config examples/{name}"


@pytest.fixture(scope="module")
def pipeline_env(tmp_path_factory):
    """Environment of a tiny pipeline run: three one-chip scenes, one tiny training step."""
    if shutil.which("jq") is None:
        pytest.skip("examples/pipeline.sh needs jq, which is not installed here")
    tiny = {**TINY, "warmup_iters": 0, "cam_scales": "[1.0]", "par_iters": 2}
    env = dict(os.environ)
    env.update({
        # the `ctfa` of this interpreter's environment
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "CTFA_WORK": str(tmp_path_factory.mktemp("pipeline") / "work"),
        "CTFA_SCENES": "3",
        "CTFA_SIZE": "160",
        "CTFA_ITERS": "1",
        "CTFA_SET": " ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                             for k, v in tiny.items() if k != "max_iters"),
        "CTFA_DEVICE": "cpu",
    })
    return env


def run_pipeline(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(EXAMPLES / "pipeline.sh"), *args], env=env,
                          capture_output=True, text=True, timeout=600)


def test_pipeline_gates_on_the_test_miou(pipeline_env):
    work = Path(pipeline_env["CTFA_WORK"])
    passed = run_pipeline(pipeline_env, "0")
    assert passed.returncode == 0, passed.stderr
    verdict = json.loads(passed.stdout)
    assert verdict["pass"] is True and 0 <= verdict["miou"] <= 1 and verdict["min_miou"] == 0
    assert json.loads((work / "train.json").read_text())["step"] == 1
    evaluation = json.loads((work / "evaluate.json").read_text())
    assert evaluation["split"] == "test" and evaluation["metrics"]["miou"] == verdict["miou"]
    assert Path(verdict["model"]).is_file()

    # A re-run with a threshold no model reaches fails the gate without recomputing anything.
    failed = run_pipeline(pipeline_env, "1.01")
    assert failed.returncode == 1
    assert json.loads(failed.stdout)["pass"] is False
    assert failed.stderr.count("skipping") == 3 and "is below 1.01: fail" in failed.stderr

    bad = run_pipeline(pipeline_env, "high")
    assert bad.returncode == 2 and bad.stdout == "" and "must be a number" in bad.stderr


@pytest.fixture(scope="module")
def ablation_env(pipeline_env, tmp_path_factory):
    """The pipeline's tiny environment, with one-step runs, and a DATA_DIR of three scenes."""
    data = tmp_path_factory.mktemp("ablation") / "data"
    subprocess.run(["ctfa", "prepare", "synthetic", "--out", str(data), "--scenes", "3",
                    "--size", "160"], env=pipeline_env, check=True, capture_output=True)
    env = dict(pipeline_env)
    env["CTFA_SET"] = f"{pipeline_env['CTFA_SET']} max_iters=1"
    env["CTFA_TARGETS"] = "cam"  # one score per run: each `ctfa` call costs ~5 s of start-up
    return env, data


def run_ablation(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(EXAMPLES / "ablation.sh"), *args], env=env,
                          capture_output=True, text=True, timeout=600)


def test_ablation_trains_every_row_and_tabulates_the_scores(ablation_env, tmp_path):
    env, data = ablation_env
    out = tmp_path / "ablation"
    first = run_ablation(env, str(data), str(out), "0")
    assert first.returncode == 0, first.stderr
    table = first.stdout.splitlines()
    assert table[:2] == ["| model | CAM |", "| --- | --- |"]
    assert [line.split(" | ")[0] for line in table[2:]] == [
        "| CTFA (CTC + foreground branch)", "| without CTC", "| without the foreground branch",
        "| without both"]
    # Each row ablates its terms and nothing else, and its cells are the scores written.
    weights = {"full": (1.0, 1.0), "no_ctc": (0, 1.0), "no_fg": (1.0, 0), "no_both": (0, 0)}
    preset = resolve_train_config("synthetic", "cpu")
    for line, (row, (ctc, joint)) in zip(table[2:], weights.items(), strict=True):
        config = yaml.safe_load((out / f"{row}_s0" / "config.yaml").read_text())["train"]
        assert (config["w_ctc"], config["w_joint"]) == (ctc * preset.w_ctc,
                                                         joint * preset.w_joint)
        assert config["seed"] == 0 and config["max_iters"] == 1
        miou = json.loads((out / f"{row}_s0.test.cam.json").read_text())["metrics"]["miou"]
        assert line.split(" | ")[1] == f"{miou:.3f} · {miou:.3f} |"

    # A re-run recomputes nothing (4 trainings and 4 scores skipped) and gives the same table.
    again = run_ablation(env, str(data), str(out), "0")
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("skipping") == 4 * 2 and again.stdout == first.stdout

    # Other chips scored with the same runs (here the train split, through another name of the
    # DATA_DIR): no training, one new score per run, named after the scored DATA_DIR.
    other_data = tmp_path / "unseen"
    other_data.symlink_to(data, target_is_directory=True)
    other = run_ablation({**env, "CTFA_EVAL_DATA": str(other_data), "CTFA_SPLIT": "train"},
                         str(data), str(out), "0")
    assert other.returncode == 0, other.stderr
    assert other.stderr.count("skipping") == 4 and "ctfa train" not in other.stderr
    assert other.stdout.splitlines()[:2] == table[:2]
    for row in weights:
        report = json.loads((out / f"{row}_s0.unseen_train.cam.json").read_text())
        assert report["split"] == "train"
        assert (out / f"{row}_s0" / "eval_unseen_train_cam" / "metrics.json").is_file()


def test_ablation_usage_errors(ablation_env, tmp_path):
    env, data = ablation_env
    assert run_ablation(env, str(data)).returncode == 2
    bad_seed = run_ablation(env, str(data), str(tmp_path), "first")
    assert bad_seed.returncode == 2 and "seed 'first'" in bad_seed.stderr
    bad_target = run_ablation({**env, "CTFA_TARGETS": "seg miou"}, str(data), str(tmp_path))
    assert bad_target.returncode == 2 and "unknown target 'miou'" in bad_target.stderr
    assert not any(tmp_path.iterdir())  # refused before anything was written
