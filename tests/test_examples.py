"""The files of examples/: preset YAMLs that spell the presets out, and the jq pipeline."""

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
