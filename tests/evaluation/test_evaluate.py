"""evaluate_split, predict_chips and evaluate_checkpoint on a tiny synthetic DATA_DIR."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ctfa_cli.datasets.datadir import DataDir
from ctfa_cli.errors import CtfaError, CtfaUsageError
from ctfa_cli.evaluation.evaluate import (
    EvaluationReport,
    _same_size_batches,
    check_model_fits,
    default_eval_dir,
    evaluate_checkpoint,
    evaluate_split,
    official_seg_logits,
    predict_chips,
)
from ctfa_cli.model.bundle import load_bundle
from ctfa_cli.training.data import normalize
from tests.evaluation.helpers import tiny_bundle, tiny_datadir
from tests.inference.helpers import SPEC

ALL = ("seg", "cam", "aux_cam", "pseudo")


@pytest.fixture(scope="session")
def datadir(tmp_path_factory):
    return tiny_datadir(tmp_path_factory)


@pytest.fixture(scope="session")
def bundle_path(tmp_path_factory, datadir):
    return tiny_bundle(tmp_path_factory, datadir)


@pytest.fixture(scope="module")
def bundle(bundle_path):
    return load_bundle(bundle_path)


@pytest.fixture(scope="module")
def data(datadir):
    return DataDir.open(datadir)


@pytest.fixture(scope="module")
def all_targets(bundle, data):
    """Metrics of every target on the test split and the chips they were computed from."""
    chips = []
    metrics = evaluate_split(bundle.model, bundle.spec, bundle.cfg, data, "test", targets=ALL,
                             batch_size=3, progress=False, on_chip=chips.append)
    return metrics, chips


def _segment(model, image: np.ndarray, spec, size=None) -> torch.Tensor:
    x = normalize(torch.from_numpy(image), spec)[None]
    if size is not None:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    with torch.no_grad():
        return model.segment(x).softmax(1)


def test_metrics_come_from_one_matrix_over_the_split(all_targets, bundle):
    metrics, chips = all_targets
    c, ignore = bundle.spec.num_classes, bundle.spec.ignore_index
    assert len(chips) == 4
    for target in ALL:
        expected = np.zeros((c, c), dtype=np.int64)
        undecided = np.zeros(c, dtype=np.int64)
        for chip in chips:
            pred, mask = chip.predictions[target].ravel(), chip.mask.ravel()
            keep = mask != ignore
            decided = keep & (pred != ignore)
            np.add.at(expected, (mask[decided], pred[decided]), 1)
            np.add.at(undecided, mask[keep & (pred == ignore)], 1)
        m = metrics[target]
        assert m["confusion"] == expected.tolist()
        assert m["undecided"] == undecided.tolist()
        assert m["ignored_predictions"] == undecided.sum()
        actual = expected.sum(1) + undecided
        union = actual + expected.sum(0) - np.diag(expected)
        present = actual > 0
        assert m["miou"] == pytest.approx((np.diag(expected) / union)[present].mean())
        assert m["pixels"] == sum(int((chip.mask != ignore).sum()) for chip in chips)


def test_cams_are_restricted_to_the_image_level_labels(all_targets):
    _, chips = all_targets
    for chip in chips:
        allowed = {0} | {int(k) + 1 for k in np.flatnonzero(chip.labels)}
        for target in ("cam", "aux_cam", "pseudo"):
            values = set(np.unique(chip.predictions[target]).tolist()) - {255}
            assert values <= allowed, (target, chip.chip_id)


def test_pseudo_labels_leave_pixels_undecided(all_targets):
    metrics, chips = all_targets
    # PAR with the high and low background thresholds leaves the band in between undecided.
    assert any((chip.predictions["pseudo"] == 255).any() for chip in chips)
    assert metrics["pseudo"]["ignored_predictions"] > 0
    assert metrics["cam"]["ignored_predictions"] == 0  # a background dataset decides everywhere


def test_seg_is_the_argmax_of_the_segmentation_branch(all_targets, bundle):
    _, chips = all_targets
    for chip in chips:
        probs = _segment(bundle.model, chip.image, bundle.spec)
        assert np.array_equal(chip.predictions["seg"], probs.argmax(1)[0].numpy())


def test_tta_averages_three_scales_and_their_flips(bundle, data):
    chip = next(predict_chips(bundle.model, bundle.spec, bundle.cfg, data, "val", tta=True))
    x = normalize(torch.from_numpy(chip.image), bundle.spec)[None]
    total = 0
    with torch.no_grad():
        for side in (48, 64, 80):  # 0.75, 1.0, 1.25 × 64 px, multiples of the 16-px patch
            scaled = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
            for flip in (False, True):
                logits = bundle.model.segment(scaled.flip(-1) if flip else scaled)
                probs = (logits.flip(-1) if flip else logits).softmax(1)
                total = total + F.interpolate(probs, size=(64, 64), mode="bilinear",
                                              align_corners=False)
    assert np.array_equal(chip.predictions["seg"], total.argmax(1)[0].numpy())


def test_input_size_runs_at_that_size_and_predicts_at_chip_size(bundle, data):
    chip = next(predict_chips(bundle.model, bundle.spec, bundle.cfg, data, "val",
                              input_size=32, keep_cams=True))
    probs = _segment(bundle.model, chip.image, bundle.spec, size=32)
    expected = F.interpolate(probs, size=(64, 64), mode="bilinear", align_corners=False)
    assert np.array_equal(chip.predictions["seg"], expected.argmax(1)[0].numpy())
    assert chip.cams["cam"].shape == (bundle.spec.num_cam_classes, 64, 64)
    absent = np.flatnonzero(chip.labels == 0)
    assert not chip.cams["cam"][absent].any()


def test_ranks_share_the_chips(bundle, data):
    ids = [[c.chip_id for c in predict_chips(bundle.model, bundle.spec, bundle.cfg, data, "val",
                                             rank=r, world_size=2)] for r in (0, 1)]
    assert ids == [["scene_001_r0_c0", "scene_001_r64_c0"],
                   ["scene_001_r0_c64", "scene_001_r64_c64"]]


def test_model_mode_is_restored(bundle, data):
    bundle.model.train()
    evaluate_split(bundle.model, bundle.spec, bundle.cfg, data, "val", progress=False)
    assert bundle.model.training
    bundle.model.eval()


def test_batches_hold_chips_of_one_size():
    rows = [{"height": h, "width": w} for h, w in [(64, 64)] * 3 + [(64, 32)] * 2 + [(64, 64)]]
    sizes = [[(r["height"], r["width"]) for r in b] for b in _same_size_batches(rows, 2)]
    assert sizes == [[(64, 64)] * 2, [(64, 64)], [(64, 32)] * 2, [(64, 64)]]


def test_split_without_masks_is_refused(bundle, datadir):
    data = DataDir.open(datadir)
    data.chips.loc[data.chips["split"] == "test", "mask"] = None
    with pytest.raises(CtfaError, match="no mask.*choose a split with masks"):
        evaluate_split(bundle.model, bundle.spec, bundle.cfg, data, "test", progress=False)


def test_unknown_target_and_class_mismatch(bundle, data):
    with pytest.raises(CtfaUsageError, match="unknown target 'crf'"):
        evaluate_split(bundle.model, bundle.spec, bundle.cfg, data, "test", targets=("crf",))
    other = bundle.spec.model_copy(update={"classes": bundle.spec.classes[:4],
                                           "palette": bundle.spec.palette[:4]})
    with pytest.raises(CtfaError, match="has 4 classes .* has 6"):
        check_model_fits(other, data)


def test_evaluate_checkpoint_writes_its_folder(tmp_path, bundle_path, datadir):
    run = tmp_path / "run"
    shutil.copytree(bundle_path.parent.parent / "checkpoints", run / "checkpoints")
    model = run / "checkpoints" / "last.pt"
    report = evaluate_checkpoint(model, datadir, target="cam", num_overlays=2, progress=False)
    assert report.out == default_eval_dir(model, "test", "cam", False) == run / "eval_test_cam"
    names = sorted(p.relative_to(report.out).as_posix() for p in report.out.rglob("*.png"))
    assert names == ["confusion.png", "overlays/scene_002_r0_c0.png",
                     "overlays/scene_002_r64_c64.png"]
    saved = json.loads((report.out / "metrics.json").read_text())
    assert saved["metrics"]["miou"] == pytest.approx(report.metrics["miou"])
    assert saved["classes"][1] == "building" and saved["metrics"]["iou"][1] is None  # NaN→null
    with pytest.raises(CtfaError, match="not empty; pass --overwrite"):
        evaluate_checkpoint(model, datadir, target="cam", progress=False)


@pytest.mark.parametrize(("model", "options", "expected"), [
    ("runs/a/checkpoints/best.pt", ("test", "seg", False), "runs/a/eval_test_seg"),
    ("runs/a/checkpoints/best.pt", ("val", "cam", False), "runs/a/eval_val_cam"),
    ("runs/a/checkpoints/best.pt", ("test", "seg", True), "runs/a/eval_test_seg_tta"),
    ("runs/a/checkpoints/best.pt", ("test", "seg", False, "official"),
     "runs/a/eval_test_seg_official"),
    ("runs/a/checkpoints/best.pt", ("test", "seg", False, "ctfa", True),
     "runs/a/eval_test_seg_crf"),
    ("runs/a/checkpoints/best.pt", ("test", "seg", True, "official", True),
     "runs/a/eval_test_seg_tta_official_crf"),
    ("models/potsdam.pt", ("test", "seg", False), "models/eval_test_seg"),  # no checkpoints/
])
def test_default_eval_dir_names(model, options, expected):
    assert default_eval_dir(Path(model), *options) == Path(expected)


def test_report_json_has_every_field_and_nan_as_null():
    metrics = {"miou": 0.5, "iou": [0.5, float("nan")]}
    crf = {"miou": 0.75, "iou": [float("nan"), 1.0]}
    report = EvaluationReport(model=Path("r/checkpoints/best.pt"), data=Path("d"), split="val",
                              target="seg", tta=True, amp="bf16", spec=SPEC, metrics=metrics,
                              out=Path("r/eval"), files=[Path("r/eval/metrics.json")],
                              protocol="official", crf_metrics=crf)
    assert report.to_json() == {
        "model": "r/checkpoints/best.pt", "data": "d", "split": "val", "target": "seg",
        "tta": True, "amp": "bf16", "protocol": "official", "classes": list(SPEC.classes),
        "metrics": {"miou": 0.5, "iou": [0.5, None]},
        "metrics_crf": {"miou": 0.75, "iou": [None, 1.0]},
        "out": "r/eval", "files": ["r/eval/metrics.json"],
    }


def _official_loop_logits(model, x: torch.Tensor, size) -> torch.Tensor:
    """``_validate`` of the official ``tools/infer_seg_potsdam.py``, typed out: per scale the
    chip and its flip through the network, the decoder's logits resized to the mask size and
    added (flip flipped back), the maximum over the scales (1.0, 1.5, 1.25)."""
    h, w = x.shape[-2:]
    seg_list = []
    with torch.no_grad():
        for sc in (1.0, 1.5, 1.25):
            inputs = F.interpolate(x, size=[int(h * sc), int(w * sc)], mode="bilinear",
                                   align_corners=False)
            inputs_cat = torch.cat([inputs, inputs.flip(-1)], dim=0)
            segs = model.decoder(model.features(inputs_cat).final)  # the network's [1]
            segs = F.interpolate(segs, size=size, mode="bilinear", align_corners=False)
            seg_list.append(segs[:1] + segs[1:].flip(-1))
    return torch.max(torch.stack(seg_list, dim=0), dim=0)[0]


def test_official_protocol_is_the_official_scripts_loop(bundle, data):
    chip = next(predict_chips(bundle.model, bundle.spec, bundle.cfg, data, "test"))
    x = normalize(torch.from_numpy(chip.image), bundle.spec)[None]
    expected = _official_loop_logits(bundle.model.eval(), x, (64, 64))
    got = official_seg_logits(bundle.model, x, (64, 64))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    official = next(predict_chips(bundle.model, bundle.spec, bundle.cfg, data, "test",
                                  protocol="official", batch_size=1))
    assert np.array_equal(official.predictions["seg"], expected.argmax(1)[0].numpy())
    with pytest.raises(CtfaUsageError, match="--tta does not apply to --protocol official"):
        next(predict_chips(bundle.model, bundle.spec, bundle.cfg, data, "test", tta=True,
                           protocol="official"))


def test_seg_crf_is_pydensecrf_on_the_official_probabilities(bundle, data):
    dcrf = pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 (dev extra) is not "
                               "installed: pip install pydensecrf2")
    utils = pytest.importorskip("pydensecrf.utils")
    chips = list(predict_chips(bundle.model, bundle.spec, bundle.cfg, data, "test",
                               targets=("seg_crf",), protocol="official", batch_size=2))
    agreement = []
    for chip in chips:
        x = normalize(torch.from_numpy(chip.image), bundle.spec)[None]
        prob = _official_loop_logits(bundle.model.eval(), x, (64, 64)).softmax(1)[0].numpy()
        # crf_proc of the official script: DenseCRF(10, pos 1/1, bilateral 4/121/5) on uint8
        crf = dcrf.DenseCRF2D(64, 64, prob.shape[0])
        crf.setUnaryEnergy(np.ascontiguousarray(utils.unary_from_softmax(prob)))
        crf.addPairwiseGaussian(sxy=1, compat=1)
        crf.addPairwiseBilateral(sxy=121, srgb=5, compat=4, rgbim=np.ascontiguousarray(
            chip.image[:3].transpose(1, 2, 0)))
        expected = np.array(crf.inference(10)).reshape(prob.shape).argmax(0)
        agreement.append((chip.predictions["seg_crf"] == expected).mean())
    assert min(agreement) >= 0.995
