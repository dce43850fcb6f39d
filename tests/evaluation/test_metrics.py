"""ConfusionMatrix against scikit-learn on random labels with ignore pixels."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    jaccard_score,
    precision_score,
    recall_score,
)

from ctfa_cli.evaluation.metrics import ConfusionMatrix


@pytest.mark.parametrize("num_classes", [6, 16, 7])
def test_matches_sklearn(num_classes):
    rng = np.random.default_rng(num_classes)
    target = rng.integers(0, num_classes, size=(3, 17, 23))
    target[0, :4] = 255
    # Correlated predictions so that the metrics are far from chance.
    noise = rng.integers(0, num_classes, target.shape)
    pred = np.where(rng.random(target.shape) < 0.6, target, noise)
    pred = np.where(target == 255, rng.integers(0, num_classes, target.shape), pred)
    cm = ConfusionMatrix(num_classes)
    for b in range(3):  # accumulated over batches, one matrix for the split
        cm.update(torch.from_numpy(pred[b]), torch.from_numpy(target[b]))
    got = cm.compute()

    valid = target != 255
    t, p = target[valid], pred[valid]
    labels = list(range(num_classes))
    np.testing.assert_array_equal(cm.matrix.numpy(), confusion_matrix(t, p, labels=labels))
    kw = dict(labels=labels, average=None, zero_division=0)
    np.testing.assert_allclose(got["iou"], jaccard_score(t, p, **kw), rtol=1e-12)
    np.testing.assert_allclose(got["f1"], f1_score(t, p, **kw), rtol=1e-12)
    np.testing.assert_allclose(got["precision"], precision_score(t, p, **kw), rtol=1e-12)
    np.testing.assert_allclose(got["recall"], recall_score(t, p, **kw), rtol=1e-12)
    assert got["oa"] == pytest.approx(accuracy_score(t, p))
    assert got["kappa"] == pytest.approx(cohen_kappa_score(t, p))
    assert got["miou"] == pytest.approx(jaccard_score(t, p, labels=labels, average="macro"))
    assert got["pixels"] == valid.sum()


def test_mean_over_present_classes_only():
    cm = ConfusionMatrix(4)
    cm.update(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 0]))
    got = cm.compute()
    assert got["present"] == [True, True, False, False]
    assert math.isnan(got["iou"][2])
    # IoU class 0 = 2/3, class 1 = 1/2; classes 2 and 3 never appear and do not count.
    assert got["miou"] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_official_mf1_leaves_out_classes_never_predicted_right():
    # truth:      0 0 0 1 1 2 2 3
    # prediction: 0 0 1 0 0 3 3 3
    # class 0: TP 2, 3 true, 4 predicted → F1 = 2·2 / (3 + 4) = 4/7
    # class 1: TP 0, predicted once where it is not → F1 0 (NaN in the official code)
    # class 2: TP 0, never predicted → F1 0 (NaN in the official code)
    # class 3: TP 1, 1 true, 3 predicted → F1 = 2·1 / (1 + 3) = 1/2
    cm = ConfusionMatrix(5)
    cm.update(torch.tensor([0, 0, 1, 0, 0, 3, 3, 3]), torch.tensor([0, 0, 0, 1, 1, 2, 2, 3]))
    got = cm.compute()
    assert got["f1"][:4] == pytest.approx([4 / 7, 0, 0, 1 / 2])
    assert got["mf1"] == pytest.approx((4 / 7 + 1 / 2) / 4)  # class 4 is absent: not counted
    assert got["mf1_official"] == pytest.approx((4 / 7 + 1 / 2) / 2)


def test_official_mf1_is_the_reference_formula_on_random_labels():
    # utils/evaluate.py::scores of the official code, typed out in NumPy.
    rng = np.random.default_rng(3)
    target = rng.integers(0, 6, 500)
    pred = np.where(rng.random(500) < 0.5, target, rng.integers(0, 4, 500))  # 4, 5 never
    hist = np.bincount(6 * target + pred, minlength=36).reshape(6, 6).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.diag(hist) / hist.sum(axis=1)
        recall = np.diag(hist) / hist.sum(axis=0)
        f1 = 2 * (precision * recall) / (precision + recall)
    expected = np.nanmean(f1[hist.sum(axis=1) > 0])
    cm = ConfusionMatrix(6)
    cm.update(torch.from_numpy(pred), torch.from_numpy(target))
    assert cm.compute()["mf1_official"] == pytest.approx(expected, rel=1e-12)


def test_undecided_predictions_are_misses():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 255, 1, 1]), torch.tensor([0, 0, 1, 1]))
    got = cm.compute()
    assert got["ignored_predictions"] == 1
    assert got["recall"][0] == pytest.approx(0.5)
    assert got["oa"] == pytest.approx(0.75)


def test_rejects_out_of_range_and_shape_mismatch():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"prediction holds values outside \[0, 3\)"):
        cm.update(torch.tensor([0, 3]), torch.tensor([0, 1]))  # C itself is out of range
    with pytest.raises(ValueError, match=r"target holds values outside \[0, 3\) other than 255"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 3]))  # too large, none negative
    with pytest.raises(ValueError, match=r"target holds values outside"):
        cm.update(torch.tensor([0, 1]), torch.tensor([-1, 1]))  # negative, none too large
    with pytest.raises(ValueError, match=r"pred \(3,\) and target \(2,\) differ"):
        cm.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1]))
    assert int(cm.matrix.sum()) == 0  # a refused batch adds nothing


def test_uint8_label_rasters_with_many_classes():
    # Label rasters are uint8; with 20 classes the packed index t·C + p reaches 399, which
    # wraps in uint8 unless the inputs are widened first.
    pred = torch.tensor([19, 18, 0], dtype=torch.uint8)
    target = torch.tensor([19, 19, 0], dtype=torch.uint8)
    cm = ConfusionMatrix(20)
    cm.update(pred, target)
    expected = torch.zeros(20, 20, dtype=torch.int64)
    expected[19, 19] = expected[19, 18] = expected[0, 0] = 1
    assert torch.equal(cm.matrix, expected)


def test_counts_beyond_float32_precision_stay_exact():
    # A whole Potsdam test split is ~5·10⁸ pixels: past 2²⁴, where float32 counts lose units.
    big = 2**24 + 1
    cm, other = ConfusionMatrix(2), ConfusionMatrix(2)
    other.matrix[0, 0] = big
    other.undecided[1] = big
    cm.update(torch.tensor([255]), torch.tensor([1]))
    cm.merge(other)
    got = cm.compute()
    assert got["pixels"] == 2 * big + 1
    assert got["ignored_predictions"] == big + 1
    assert cm.matrix.dtype == cm.undecided.dtype == torch.int64


def test_empty_matrix_gives_nan_everywhere():
    got = ConfusionMatrix(3).compute()
    for key in ("miou", "mf1", "mf1_official", "oa", "kappa"):
        assert math.isnan(got[key]), key
    assert got["pixels"] == 0 and got["present"] == [False] * 3


def test_one_pixel_split_by_hand():
    # One pixel of class 1, predicted 1: every ratio has a denominator of exactly 1.
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([1]), torch.tensor([1]))
    got = cm.compute()
    assert got["iou"][1] == got["f1"][1] == got["precision"][1] == got["recall"][1] == 1.0
    assert got["miou"] == got["mf1"] == got["mf1_official"] == got["oa"] == 1.0
    assert math.isnan(got["kappa"])  # chance agreement is 1: kappa is 0/0
    # Classes 0 and 2: absent and never predicted, so every per-class figure is undefined.
    for key in ("iou", "f1", "precision", "recall"):
        assert math.isnan(got[key][0]) and math.isnan(got[key][2]), key


def test_per_class_figures_of_absent_and_unpredicted_classes():
    # truth:      0 0 1
    # prediction: 0 2 0
    # class 0: TP 1, 2 true, 2 predicted → P = R = F1 = 1/2, IoU = 1/3
    # class 1: one true pixel, never predicted → P NaN, R 0, F1 0 (counted), IoU 0
    # class 2: absent, predicted once → P 0, R NaN, F1 NaN (not a class of the split), IoU 0
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 2, 0]), torch.tensor([0, 0, 1]))
    got = cm.compute()
    assert got["precision"][0] == got["recall"][0] == got["f1"][0] == pytest.approx(1 / 2)
    assert math.isnan(got["precision"][1]) and got["recall"][1] == 0 and got["f1"][1] == 0
    assert got["precision"][2] == 0 and math.isnan(got["recall"][2])
    assert math.isnan(got["f1"][2])
    assert got["iou"] == pytest.approx([1 / 3, 0, 0])
    assert got["mf1"] == pytest.approx(1 / 4) and got["miou"] == pytest.approx(1 / 6)
    assert got["oa"] == pytest.approx(1 / 3)
    # kappa by hand: rows (2, 1, 0), columns (2, 0, 1), p_e = 4/9, (1/3 − 4/9) / (5/9) = −1/5
    assert got["kappa"] == pytest.approx(-1 / 5)


def test_merge_equals_single_accumulation():
    rng = np.random.default_rng(3)
    t = torch.from_numpy(rng.integers(0, 5, 200))
    p = torch.from_numpy(rng.integers(0, 5, 200))
    whole, a, b = ConfusionMatrix(5), ConfusionMatrix(5), ConfusionMatrix(5)
    whole.update(p, t)
    a.update(p[:120], t[:120])
    b.update(p[120:], t[120:])
    a.merge(b)
    assert torch.equal(a.matrix, whole.matrix)


def test_merge_adds_undecided_counts():
    a, b = ConfusionMatrix(2), ConfusionMatrix(2)
    a.update(torch.tensor([255, 1]), torch.tensor([0, 1]))
    b.update(torch.tensor([255, 255, 0]), torch.tensor([0, 1, 0]))
    a.merge(b)
    assert a.undecided.tolist() == [2, 1]
    assert a.compute()["ignored_predictions"] == 3
