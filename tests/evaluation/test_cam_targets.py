"""evaluate's CAM targets on a hand-computed case: which CAM each target scores, and the
background threshold it uses.

The multi-scale CAMs are replaced by two hand-made maps that differ: the final CAM is strong in
the chip's left quarter, the auxiliary one in its top quarter, and both hold a middle band
(0.5) that is above ``low_thre`` (0.25) but below ``bkg_thre`` (0.6): background for the official
CAM evaluation, foreground for a threshold mixed up with ``low_thre``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ctfa_cli.evaluation.evaluate as evaluate
from ctfa_cli.datasets.datadir import DataDir
from ctfa_cli.model.bundle import load_bundle
from tests.evaluation.helpers import tiny_bundle, tiny_datadir

STRONG, MIDDLE, WEAK = 0.9, 0.5, 0.1


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    datadir = tiny_datadir(tmp_path_factory)
    bundle = load_bundle(tiny_bundle(tmp_path_factory, datadir))
    return bundle, DataDir.open(datadir)


def _maps(b: int, c: int, h: int, w: int, axis: int) -> torch.Tensor:
    """STRONG on the first quarter along ``axis`` (2 rows, 3 columns), MIDDLE on the second,
    WEAK elsewhere; channel k scaled by (1 - 0.01 k), so the lowest present channel wins."""
    size = (h, w)[axis - 2]
    profile = torch.full((size,), WEAK)
    profile[: size // 4] = STRONG
    profile[size // 4 : size // 2] = MIDDLE
    shape = [1, 1, 1, 1]
    shape[axis] = size
    scale = 1 - 0.01 * torch.arange(c, dtype=torch.float32)
    return (profile.view(shape) * scale.view(1, c, 1, 1)).expand(b, c, h, w).clone()


def _expected(labels: np.ndarray, h: int, w: int, axis: int) -> np.ndarray:
    """Hand rule: the lowest present class (+1, background is 0) on the STRONG quarter,
    background (0) elsewhere — the MIDDLE band is below bkg_thre."""
    out = np.zeros((h, w), dtype=np.uint8)
    present = np.flatnonzero(labels)
    if present.size:
        if axis == 3:
            out[:, : w // 4] = present[0] + 1
        else:
            out[: h // 4, :] = present[0] + 1
    return out


def test_cam_and_aux_cam_targets(setting, monkeypatch):
    bundle, data = setting
    cfg = bundle.cfg
    assert (cfg.bkg_thre, cfg.low_thre) == (0.6, 0.25)  # the band lies between them
    assert bundle.spec.has_background

    def fake_cams(model, images, scales, **kwargs):
        b, _, h, w = images.shape
        c = bundle.spec.num_cam_classes
        return _maps(b, c, h, w, axis=3), _maps(b, c, h, w, axis=2)

    monkeypatch.setattr(evaluate, "multi_scale_cams", fake_cams)
    chips = list(evaluate.predict_chips(bundle.model, bundle.spec, cfg, data, "test",
                                        targets=("cam", "aux_cam"), batch_size=2))
    assert chips and any(c.labels.any() for c in chips)
    for chip in chips:
        h, w = chip.mask.shape
        np.testing.assert_array_equal(chip.predictions["cam"],
                                      _expected(chip.labels, h, w, axis=3))
        np.testing.assert_array_equal(chip.predictions["aux_cam"],
                                      _expected(chip.labels, h, w, axis=2))


def test_scores_count_those_predictions(setting, monkeypatch):
    """evaluate_split's confusion matrix of ``cam`` is the one of the hand-made prediction."""
    bundle, data = setting

    def fake_cams(model, images, scales, **kwargs):
        b, _, h, w = images.shape
        c = bundle.spec.num_cam_classes
        return _maps(b, c, h, w, axis=3), _maps(b, c, h, w, axis=2)

    monkeypatch.setattr(evaluate, "multi_scale_cams", fake_cams)
    metrics = evaluate.evaluate_split(bundle.model, bundle.spec, bundle.cfg, data, "test",
                                      targets=("cam",), progress=False)
    n = bundle.spec.num_classes
    confusion = np.zeros((n, n), dtype=np.int64)
    for row in data.split("test").to_dict("records"):
        _, mask = data.read_chip(row)
        pred = _expected(data.multi_hot(row), *mask.shape, axis=3)
        valid = mask != bundle.spec.ignore_index
        np.add.at(confusion, (mask[valid].astype(int), pred[valid].astype(int)), 1)
    np.testing.assert_array_equal(np.array(metrics["cam"]["confusion"]), confusion)
