"""evaluate_split, predict_chips and evaluate_checkpoint on a tiny synthetic DATA_DIR."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from ctfa_cli.config import TrainConfig
from ctfa_cli.datasets.datadir import DataDir
from ctfa_cli.datasets.registry import get_spec
from ctfa_cli.errors import CtfaError, CtfaUsageError
from ctfa_cli.evaluation import evaluate as evaluate_module
from ctfa_cli.evaluation.evaluate import (
    ChipPrediction,
    EvaluationReport,
    _cam_labels,
    _resize,
    _same_size_batches,
    check_model_fits,
    crf_colours,
    default_eval_dir,
    evaluate_checkpoint,
    evaluate_split,
    official_seg_logits,
    predict_chips,
)
from ctfa_cli.evaluation.metrics import ConfusionMatrix
from ctfa_cli.model.bundle import load_bundle
from ctfa_cli.training.data import normalize
from kernels.dense_crf import CRFParams
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


def test_crf_colours_are_the_first_three_bands_or_the_first_band_thrice():
    def chip(bands):
        image = (np.arange(bands * 4, dtype=np.uint8).reshape(bands, 2, 2) * 10)
        return ChipPrediction(row={}, image=image, mask=None, labels=np.ones(5, np.float32))

    colours = crf_colours([chip(1), chip(2), chip(3), chip(4)])
    assert colours.shape == (4, 3, 2, 2) and colours.dtype == torch.float32
    first = [[0.0, 10.0], [20.0, 30.0]]
    assert colours[0].tolist() == [first] * 3
    assert colours[1].tolist() == [first] * 3  # two bands: still the first one, repeated
    expected = [first, [[40.0, 50.0], [60.0, 70.0]], [[80.0, 90.0], [100.0, 110.0]]]
    assert colours[2].tolist() == colours[3].tolist() == expected  # a fourth band is left out


def test_labels_are_resized_by_nearest_neighbour_and_scores_bilinearly():
    labels = torch.tensor([[[[1.0, 2.0], [3.0, 255.0]]]])
    assert _resize(labels, (4, 4), mode="nearest")[0, 0].tolist() == [
        [1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 255, 255], [3, 3, 255, 255]]
    scores = torch.tensor([[[[0.0, 1.0]]]])
    # align_corners=False: output pixel centres at 0.25 and 0.75 of the input's first pixel …
    assert _resize(scores, (1, 4))[0, 0, 0].tolist() == [0.0, 0.25, 0.75, 1.0]
    assert _resize(scores, (1, 2)) is scores  # already that size


def test_cam_labels_follow_the_dataset_background_policy():
    cam = torch.tensor([[[[0.9, 0.2, 0.1]], [[0.3, 0.4, 0.1]]]])  # [1, 2, 1, 3]
    labels = torch.ones(1, 2)
    cfg = TrainConfig(bkg_thre=0.35)
    potsdam, deepglobe = get_spec("potsdam"), get_spec("deepglobe")
    # With a background: channel k is class k + 1, background where the best score <= 0.35.
    assert _cam_labels(cam, labels, potsdam, cfg).tolist() == [[[1, 2, 0]]]
    # Without one: the arg-max class itself, everywhere (the tie at 0.1 goes to channel 0).
    assert _cam_labels(cam, labels, deepglobe, cfg).tolist() == [[[0, 1, 0]]]
    no_class = _cam_labels(cam, torch.zeros(1, 2), deepglobe.model_copy(
        update={"ignore_index": 254}), cfg)
    assert no_class.tolist() == [[[254, 254, 254]]]  # the spec's ignore index


def test_check_model_fits_messages_and_warning(caplog):
    spec = get_spec("potsdam")
    data = SimpleNamespace(spec=spec, root=Path("/data/potsdam"))
    fewer = spec.model_copy(update={"classes": spec.classes[:4], "palette": spec.palette[:4]})
    with pytest.raises(CtfaError, match=r"^/m/best.pt: checkpoint has 4 classes \(potsdam\) but "
                       r"DATA_DIR /data/potsdam has 6 \(potsdam\); use a checkpoint trained "
                       r"on this dataset$"):
        check_model_fits(fewer, data, Path("/m/best.pt"))
    rgbir = spec.model_copy(update={"bands": ["r", "g", "b", "ir"], "mean": [0.5] * 4,
                                    "std": [0.2] * 4})
    with pytest.raises(CtfaError, match=r"^the model reads 4 bands \['r', 'g', 'b', 'ir'\] but "
                       r"DATA_DIR /data/potsdam has 3 \['ir', 'r', 'g'\]; use a checkpoint "
                       r"trained on this dataset$"):
        check_model_fits(rgbir, data)
    renamed_classes = spec.model_copy(update={"classes": [f"c{i}" for i in range(6)]})
    renamed_bands = spec.model_copy(update={"bands": ["r", "g", "b"]})
    for other in (renamed_classes, renamed_bands):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ctfa"):
            check_model_fits(other, data)
        assert [r.getMessage() for r in caplog.records] == [
            f"the model was trained on classes {other.classes} / bands {other.bands}, DATA_DIR "
            f"/data/potsdam has {spec.classes} / {spec.bands}; scoring class i against class i"]
    caplog.clear()
    check_model_fits(spec, data)
    assert caplog.records == []


@pytest.mark.parametrize("rank, world_size", [(0, 1), (0, 2), (1, 3)])
def test_evaluate_split_hands_every_setting_to_predict_chips(monkeypatch, rank, world_size):
    spec = get_spec("potsdam").model_copy(update={"ignore_index": 254})
    data = SimpleNamespace(root=Path("/data"), split=lambda _: pd.DataFrame(
        {"chip_id": ["a"], "mask": ["chips/test/masks/a.tif"]}))
    seen, reduced = {}, []
    chip = ChipPrediction(row={}, image=np.zeros((3, 2, 2), np.uint8),
                          mask=np.array([[0, 1], [254, 2]], np.uint8), labels=np.ones(5),
                          predictions={"seg": np.array([[0, 1], [1, 254]], np.uint8)})

    def fake_predict_chips(*args, **kwargs):
        seen["args"], seen["kwargs"] = args, kwargs
        return iter([chip])

    monkeypatch.setattr(evaluate_module, "predict_chips", fake_predict_chips)
    monkeypatch.setattr(evaluate_module, "_distributed_share", lambda: (rank, world_size))
    monkeypatch.setattr(ConfusionMatrix, "all_reduce", lambda self: reduced.append(self))
    model, cfg, crf = object(), TrainConfig(), CRFParams(iterations=3, bi_w=5.0)
    metrics = evaluate_split(model, spec, cfg, data, "test", targets=("seg",), tta=True,
                             device="cpu", batch_size=3, progress=True, input_size=48,
                             amp="bf16", protocol="official", crf=crf)
    assert seen["args"] == (model, spec, cfg, data, "test")
    assert seen["kwargs"] == {
        "targets": ("seg",), "tta": True, "device": "cpu", "batch_size": 3, "input_size": 48,
        "rank": rank, "world_size": world_size, "progress": rank == 0, "amp": "bf16",
        "protocol": "official", "crf": crf}
    assert len(reduced) == (world_size > 1)  # matrices are summed over ranks only under torchrun
    # By hand, with the spec's ignore index 254: (0, 0) and (1, 1) right, the 254 of the mask
    # skipped, and class 2's pixel left undecided by the prediction.
    confusion = np.zeros((6, 6), int)
    confusion[0, 0] = confusion[1, 1] = 1
    assert metrics["seg"]["confusion"] == confusion.tolist()
    assert metrics["seg"]["undecided"] == [0, 0, 1, 0, 0, 0]


def test_evaluate_checkpoint_hands_every_setting_on(monkeypatch, tmp_path, bundle_path, datadir,
                                                    data):
    run = tmp_path / "run"
    shutil.copytree(bundle_path.parent.parent / "checkpoints", run / "checkpoints")
    model_path = run / "checkpoints" / "last.pt"
    seen: dict = {"overlays": []}
    chip = ChipPrediction(row={"chip_id": "c1"}, image=np.zeros((3, 4, 4), np.uint8),
                          mask=np.ones((4, 4), np.uint8), labels=np.ones(5),
                          predictions={"seg": np.zeros((4, 4), np.uint8),
                                       "seg_crf": np.full((4, 4), 2, np.uint8)})

    def scores(pred):
        matrix = ConfusionMatrix(6, 255)
        matrix.update(torch.tensor(pred), torch.tensor([0, 1, 1]))
        return {**matrix.compute(), "confusion": matrix.matrix.tolist(),
                "undecided": matrix.undecided.tolist()}

    def fake_evaluate_split(*args, **kwargs):
        seen["split"] = (args, kwargs)
        kwargs["on_chip"](chip)
        return {"seg": scores([0, 1, 2]), "seg_crf": scores([0, 1, 1])}

    def first_call_recorded(name, real):
        def call(*args):
            seen.setdefault(name, args)
            return real(*args)
        return call

    monkeypatch.setattr(evaluate_module, "evaluate_split", fake_evaluate_split)
    monkeypatch.setattr(evaluate_module, "load_bundle",
                        first_call_recorded("load", evaluate_module.load_bundle))
    monkeypatch.setattr(evaluate_module, "check_model_fits",
                        first_call_recorded("fits", evaluate_module.check_model_fits))
    monkeypatch.setattr(evaluate_module.report, "write_overlay_png",
                        lambda *a, **k: seen["overlays"].append((a, k)))
    crf = CRFParams(iterations=2)
    result = evaluate_checkpoint(model_path, datadir, tta=True, device="cpu", batch_size=3,
                                 num_overlays=1, progress=False, amp="bf16", crf=crf)
    args, kwargs = seen["split"]
    assert args[4] == "test" and args[3].root == data.root
    assert {k: v for k, v in kwargs.items() if k != "on_chip"} == {
        "targets": ("seg", "seg_crf"), "tta": True, "device": torch.device("cpu"),
        "batch_size": 3, "progress": False, "amp": "bf16", "protocol": "ctfa", "crf": crf}
    assert seen["load"] == (model_path, torch.device("cpu"))
    assert seen["fits"][2] == model_path
    assert result.out == default_eval_dir(model_path, "test", "seg", True, "ctfa", True)
    assert (result.model, result.data) == (model_path, data.root)
    assert result.metrics["pixels"] == 3 and result.crf_metrics["miou"] != result.metrics["miou"]
    (overlay_args, overlay_kwargs), = seen["overlays"]
    path, image, mask, prediction, spec = overlay_args
    assert path == result.out / "overlays" / "c1.png" and path in result.files
    assert mask is chip.mask and prediction is chip.predictions["seg_crf"]  # the CRF's labels
    assert overlay_kwargs == {"prediction_title": "seg_crf"}
    saved = json.loads((result.out / "metrics.json").read_text())
    assert saved["metrics_crf"]["miou"] == pytest.approx(result.crf_metrics["miou"])
    with pytest.raises(CtfaError, match="pass --overwrite"):
        evaluate_checkpoint(model_path, datadir, tta=True, device="cpu", num_overlays=0,
                            progress=False, crf=crf)
    again = evaluate_checkpoint(model_path, datadir, tta=True, device="cpu", num_overlays=0,
                                progress=False, crf=crf, overwrite=True)
    assert again.out == result.out
    # Without --crf only the plain target is scored.
    evaluate_checkpoint(model_path, datadir, out=tmp_path / "plain", device="cpu",
                        num_overlays=0, progress=False)
    assert seen["split"][1]["targets"] == ("seg",)


def test_predict_chips_hands_its_settings_to_the_predictors(monkeypatch, bundle, data):
    made, official, batches = [], [], []
    real_predictor = evaluate_module.BundlePredictor
    real_official = evaluate_module.official_seg_logits
    real_batch = evaluate_module._predict_batch

    def predictor(wrapped, device, **kwargs):
        made.append((wrapped.model, wrapped.spec, wrapped.cfg, device, kwargs))
        return real_predictor(wrapped, device, **kwargs)

    def official_logits(*args, **kwargs):
        official.append(kwargs)
        return real_official(*args, **kwargs)

    def predict_batch(model, spec, cfg, chips, *rest):
        batches.append(len(chips))
        return real_batch(model, spec, cfg, chips, *rest)

    monkeypatch.setattr(evaluate_module, "BundlePredictor", predictor)
    monkeypatch.setattr(evaluate_module, "official_seg_logits", official_logits)
    monkeypatch.setattr(evaluate_module, "_predict_batch", predict_batch)
    chips = list(predict_chips(bundle.model, bundle.spec, bundle.cfg, data, "test", tta=True,
                               device="cpu", batch_size=3, amp="bf16"))
    assert made == [(bundle.model, bundle.spec, bundle.cfg, torch.device("cpu"),
                     {"tta": True, "amp": "bf16"})]
    sizes = {(int(r["height"]), int(r["width"])) for _, r in data.split("test").iterrows()}
    assert len(sizes) == 1 and len(chips) == 4 and batches == [3, 1]  # at most batch_size
    list(predict_chips(bundle.model, bundle.spec, bundle.cfg, data, "test", batch_size=4,
                       amp="bf16", protocol="official"))
    assert official == [{"amp": "bf16"}] and batches[2:] == [4]
