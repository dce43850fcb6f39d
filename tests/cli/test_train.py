"""`ctfa train`: a short run, resume, and bad inputs with exit codes and one-line messages."""

from __future__ import annotations

import json

import pytest
import torch

from tests.training.helpers import tiny_datadir, tiny_set_options


@pytest.fixture(scope="module")
def datadir(tmp_path_factory):
    return tiny_datadir(tmp_path_factory)


def test_train_then_resume(run_cli, datadir, tmp_path):
    run = tmp_path / "run"
    code, out, err = run_cli("train", "--data", datadir, "--out", run, "--preset", "cpu",
                             "--max-iters", "3", *tiny_set_options(), "--device", "cpu")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["step"] == 3 and summary["skipped"] == 0
    assert summary["best_checkpoint"] == str(run / "checkpoints/best.pt")
    saved = torch.load(run / "checkpoints/last.pt", weights_only=True)
    assert saved["config"]["crop_size"] == 64 and saved["spec"]["name"] == "synthetic"
    # --resume without config options continues with the run's own config.
    code, out, err = run_cli("train", "--data", datadir, "--out", run, "--resume",
                             "--max-iters", "4")
    assert code == 0, err
    assert json.loads(out)["step"] == 4
    # A second fresh run into the same RUN_DIR is refused.
    code, out, err = run_cli("train", "--data", datadir, "--out", run, "--preset", "cpu")
    assert code == 1 and out == ""
    assert err.strip().count("\n") == 0 and f"{run} is not empty" in err and "--resume" in err


def test_missing_data_dir(run_cli, tmp_path):
    code, out, err = run_cli("train", "--data", tmp_path / "nowhere", "--out", tmp_path / "r")
    assert code == 1 and out == ""
    assert err.strip().count("\n") == 0 and "nowhere" in err and "ctfa prepare" in err


def test_config_typo_is_a_usage_error(run_cli, datadir, tmp_path):
    code, out, err = run_cli("train", "--data", datadir, "--out", tmp_path / "r",
                             "--set", "lr_typo=1e-4")
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and "lr_typo" in err and "Extra inputs" in err
    code, _, err = run_cli("train", "--data", datadir, "--out", tmp_path / "r",
                           "--set", "crop_size=-1")
    assert code == 2 and "crop_size" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "r").exists()


def test_a_run_that_applied_no_step_exits_1(run_cli, datadir, tmp_path, monkeypatch):
    import ctfa_cli.training.step as step_module

    def nan_loss(logits, labels):
        return logits.sum() * float("nan")

    monkeypatch.setattr(step_module, "cls_loss", nan_loss)
    run = tmp_path / "run"
    code, out, err = run_cli("train", "--data", datadir, "--out", run, "--preset", "cpu",
                             "--max-iters", "2", *tiny_set_options(), "--device", "cpu")
    assert code == 1
    summary = json.loads(out)
    assert (summary["step"], summary["skipped"], summary["applied_steps"]) == (2, 2, 0)
    assert summary["skipped_fraction"] == 1.0
    assert "all 2 steps were skipped as non-finite" in err and "initial weights" in err
    assert "Traceback" not in err
    log = (run / "train.log").read_text()
    assert "2 of 2 steps (100%) were skipped as non-finite" in log
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["kind"] == "train"]
    assert train_records[-1]["skipped"] == 2 and train_records[-1]["skipped_fraction"] == 1.0


def test_a_skipped_share_under_the_threshold_is_not_warned(run_cli, datadir, tmp_path,
                                                           monkeypatch):
    # 1 skipped step of 3 (33 %) with the threshold raised to 50 %: applied, exit 0, no warning.
    import ctfa_cli.training.loop as loop
    import ctfa_cli.training.step as step_module

    monkeypatch.setattr(loop, "SKIPPED_WARN_FRACTION", 0.5)

    calls = {"n": 0}
    real = step_module.cls_loss

    def nan_once(logits, labels):
        calls["n"] += 1
        loss = real(logits, labels)
        return loss * float("nan") if calls["n"] == 1 else loss

    monkeypatch.setattr(step_module, "cls_loss", nan_once)
    run = tmp_path / "run"
    code, out, err = run_cli("train", "--data", datadir, "--out", run, "--preset", "cpu",
                             "--max-iters", "3", *tiny_set_options(), "--device", "cpu")
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["skipped"], summary["applied_steps"]) == (1, 2)
    assert "were skipped as non-finite" not in (run / "train.log").read_text()
