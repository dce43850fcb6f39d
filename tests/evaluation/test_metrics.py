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
