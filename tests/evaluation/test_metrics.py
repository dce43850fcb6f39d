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
    with pytest.raises(ValueError):
        cm.update(torch.tensor([0, 5]), torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        cm.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1]))


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
