"""The training loop: RUN_DIR contents, exact resume, skipped steps, refusals."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import yaml

import ctfa_cli.training.step as step_module
from ctfa_cli.errors import CtfaError, CtfaUsageError
from ctfa_cli.training.loop import run_config, train
from tests.training.helpers import tiny_config


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_continues_exactly(datadir, tmp_path):
    cfg = tiny_config()
    straight = train(datadir, tmp_path / "straight", cfg, max_iters=4, device="cpu")
    train(datadir, tmp_path / "split", cfg, max_iters=2, device="cpu")
    resumed = train(datadir, tmp_path / "split", None, resume=True, max_iters=4, device="cpu")
    assert straight.step == resumed.step == 4
    a, b = load(straight.last_checkpoint), load(resumed.last_checkpoint)
    # Model (EMA teacher included) and optimiser state, bit for bit; steps 2-3 are past the
    # warm-up gate, so the seg/reg/joint terms took part.
    assert_same_state(a["state_dict"], b["state_dict"])
    opt_a, opt_b = a["extra"]["optimizer"], b["extra"]["optimizer"]
    assert opt_a["global_step"] == opt_b["global_step"] == 4
    for index, state in opt_a["state"].items():
        for name, value in state.items():
            assert torch.equal(value, opt_b["state"][index][name]), (index, name)
    # metrics.jsonl holds each step once, the resumed half appended.
    steps = [r["step"] for r in map(json.loads, (tmp_path / "split/metrics.jsonl")
                                    .read_text().splitlines()) if r["kind"] == "train"]
    assert steps == [2, 4]


def test_run_dir_contents(datadir, tmp_path):
    cfg = tiny_config(log_every=1)
    run = tmp_path / "run"
    result = train(datadir, run, cfg, max_iters=3, device="cpu")
    written = yaml.safe_load((run / "config.yaml").read_text())
    assert written["train"]["crop_size"] == cfg.crop_size
    assert written["dataset"]["classes"][1] == "building"
    # The written config reproduces the run's config through --config.
    assert run_config(datadir, preset="cpu", config_file=run / "config.yaml") == cfg
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train_records] == [1, 2, 3]
    assert {"lr", "img_per_s", "skipped", "loss", "cls", "cls_aux", "ptc", "ctc"} \
        <= set(train_records[0])
    assert {"seg", "reg", "joint"} <= set(train_records[-1])  # step 3 is past the gate (1)
    (evaluation,) = [r for r in records if r["kind"] == "eval"]
    assert evaluation["split"] == "val" and evaluation["step"] == 3
    assert evaluation["selected_on_test"] is False
    for target in ("cam", "aux_cam", "seg"):
        assert 0 <= evaluation[target]["miou"] <= 1
    assert "step 3" in (run / "train.log").read_text()
    last, best = load(result.last_checkpoint), load(result.best_checkpoint)
    assert last["extra"]["step"] == 3 and last["extra"]["skipped"] == 0
    assert last["extra"]["best_miou"] == pytest.approx(evaluation["seg"]["miou"])
    assert_same_state(last["state_dict"], best["state_dict"])


def test_non_finite_step_is_skipped(datadir, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_cls_loss = step_module.cls_loss

    def cls_loss_nan_once(logits, labels):
        calls["n"] += 1
        loss = real_cls_loss(logits, labels)
        return loss * float("nan") if calls["n"] == 3 else loss  # step 1, main classifier

    monkeypatch.setattr(step_module, "cls_loss", cls_loss_nan_once)
    result = train(datadir, tmp_path / "run", tiny_config(log_every=1), max_iters=3,
                   device="cpu")
    assert result.skipped == 1
    assert all(torch.isfinite(p).all() for p in result.model.state_dict().values())
    saved = load(result.last_checkpoint)
    assert saved["extra"]["skipped"] == 1
    # No optimiser step for the skipped one: Adam counted 2 steps of 3.
    adam_steps = {float(s["step"]) for s in saved["extra"]["optimizer"]["state"].values()}
    assert adam_steps == {2.0}
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text()
               .splitlines() if '"train"' in line]
    assert [r["skipped"] for r in records] == [0, 1, 1]
    # Loss means cover finished steps only: none for step 2, finite otherwise.
    assert "loss" not in records[1]
    assert math.isfinite(records[0]["loss"]) and math.isfinite(records[2]["loss"])


def test_refusals(datadir, tmp_path):
    cfg = tiny_config()
    with pytest.raises(CtfaError, match="no such DATA_DIR"):
        train(tmp_path / "missing", tmp_path / "run", cfg)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(CtfaError, match=re.escape(f"{busy} is not empty")):
        train(datadir, busy, cfg)
    with pytest.raises(CtfaError, match="no checkpoint to resume"):
        train(datadir, busy, cfg, resume=True)
    with pytest.raises(CtfaUsageError, match="exclude each other"):
        train(datadir, busy, cfg, resume=True, overwrite=True)
    with pytest.raises(CtfaUsageError, match="past the schedule"):
        train(datadir, tmp_path / "new", cfg, max_iters=cfg.max_iters + 1)
    assert (busy / "notes.txt").read_text() == "mine"


def test_selecting_on_the_test_split_is_warned_and_flagged(datadir, tmp_path):
    import shutil

    import geopandas
    import pyogrio

    from ctfa_cli.datasets.datadir import CHIPS_GPKG

    # The tiny DATA_DIR without its val split: what --val-fraction 0 / --paper-split give.
    copy = tmp_path / "data"
    shutil.copytree(datadir, copy)
    chips = geopandas.read_file(copy / CHIPS_GPKG)
    pyogrio.write_dataframe(chips[chips["split"] != "val"], copy / CHIPS_GPKG)
    run = tmp_path / "run"
    train(copy, run, tiny_config(max_iters=1, eval_every=1), device="cpu")
    (evaluation,) = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                     if r["kind"] == "eval"]
    assert evaluation["split"] == "test" and evaluation["selected_on_test"] is True
    log = " ".join((run / "train.log").read_text().split())
    assert "has no val split: best.pt is chosen on the test split" in log
