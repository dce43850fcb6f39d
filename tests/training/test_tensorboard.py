"""TensorBoard logs of a training run: scalars equal to metrics.jsonl, a chip grid per eval."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ctfa_cli.training import tensorboard as board
from ctfa_cli.training.loop import train
from tests.training.helpers import tiny_config


def _events(folder):
    accumulator = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def test_training_writes_every_metric_and_a_chip_grid(datadir, tmp_path):
    run = tmp_path / "run"
    train(datadir, run, tiny_config(log_every=1, eval_every=2), max_iters=2, device="cpu")
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    events = _events(run / "tensorboard")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["kind"] == "train"]
    (evaluation,) = [r for r in records if r["kind"] == "eval"]
    scalars = set(events.Tags()["scalars"])
    # Every number of every train record, read back at its step (float32 in the event file).
    for record in train_records:
        for key, value in record.items():
            if key in ("kind", "step"):
                continue
            (event,) = [e for e in events.Scalars(f"train/{key}") if e.step == record["step"]]
            assert event.value == pytest.approx(value, rel=1e-6, abs=1e-12), key
    assert {"train/lr", "train/img_per_s", "train/skipped", "train/loss", "train/cls"} <= scalars
    # Validation mIoU per target and IoU per class, at the evaluation step.
    classes = ["impervious_surfaces", "building", "low_vegetation", "tree", "car", "clutter"]
    for target in ("cam", "aux_cam", "seg"):
        (miou,) = events.Scalars(f"val/{target}/miou")
        assert miou.step == 2 and miou.value == pytest.approx(evaluation[target]["miou"])
        for name, value in zip(classes, evaluation[target]["iou"], strict=True):
            if not np.isnan(value):
                (event,) = events.Scalars(f"val/{target}/iou/{name}")
                assert event.value == pytest.approx(value)
    # The chip grid: one image at step 2, one row of six 160-px panels per chip.
    (image,) = events.Images("val/chips")
    assert image.step == 2
    picture = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)))
    assert picture.shape[2] == 3
    chips = board.GRID_CHIPS
    assert picture.shape[1] >= 6 * 160 and picture.shape[0] >= chips * 160
    assert picture.std() > 0  # not a blank canvas


def test_config_turns_tensorboard_off_and_says_so(datadir, tmp_path, caplog):
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="ctfa"):
        train(datadir, run, tiny_config(tensorboard=False), max_iters=1, device="cpu")
    assert not (run / "tensorboard").exists()
    assert [r.message for r in caplog.records if "TensorBoard" in r.message] == [
        "TensorBoard logs are off (tensorboard: false in the training config)"]


def test_without_the_package_training_says_once_why(monkeypatch, caplog, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "tensorboard" or name.startswith("tensorboard."):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with caplog.at_level(logging.INFO, logger="ctfa"):
        writer = board.open_writer(tmp_path, None, tiny_config())
    assert writer is None
    (message,) = [r.message for r in caplog.records]
    assert "tensorboard package is not installed" in message
    assert "pip install 'ctfa[tensorboard]'" in message


def test_eval_scalars_by_hand():
    record = {"kind": "eval", "step": 5, "split": "val",
              "seg": {"miou": 0.5, "mf1": 0.6, "oa": 0.9, "kappa": 0.4, "iou": [0.25, 0.75],
                      "f1": [0.4, 0.8], "present": [True, True], "pixels": 10}}
    assert board.eval_scalars(record, ["a", "b c"]) == {
        "val/seg/miou": 0.5, "val/seg/mf1": 0.6, "val/seg/oa": 0.9, "val/seg/kappa": 0.4,
        "val/seg/iou/a": 0.25, "val/seg/iou/b_c": 0.75, "val/seg/f1/a": 0.4,
        "val/seg/f1/b_c": 0.8}
    assert board.train_scalars({"kind": "train", "step": 3, "lr": 1e-4, "loss": 2.0,
                                "skipped": 1}) == {
        "train/lr": 1e-4, "train/loss": 2.0, "train/skipped": 1.0}


def test_resume_keeps_the_steps_of_the_checkpoint_and_redoes_the_rest(datadir, tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config(log_every=1, eval_every=2)
    train(datadir, run, cfg, max_iters=3, device="cpu")  # checkpoints at steps 2 and 3
    train(datadir, run, None, resume=True, max_iters=4, device="cpu")  # from step 3
    events = _events(run / "tensorboard")
    assert [e.step for e in events.Scalars("train/lr")] == [1, 2, 3, 4]
    assert [e.step for e in events.Images("val/chips")] == [2, 3, 4]
