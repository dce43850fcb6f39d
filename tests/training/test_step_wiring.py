"""How CTFAStep composes its parts: which CAM feeds what, where local crops come from, and
that every weighted term is in the total.

Each test gives the parts distinguishable inputs (a final CAM and an auxiliary CAM that are
not equal, a local-crop source that is not the network input) and checks by value which one
reached which consumer, so a step with two wires crossed fails here even where every part
on its own is right. The whole-step parity case (tests/training/step_parity.py) checks the
same wiring against the official numbers; these tests need no reference file.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ctfa_cli.training.step as step_module
from ctfa_cli.objectives.cam import cam_to_label
from tests.training.test_step import GATE, make_batch, make_step

TERMS = ("cls", "cls_aux", "ptc", "ctc", "seg", "reg", "joint")
# The dense-CRF weight of these tests: the official 1e-7 makes w_reg·reg about 1e-6 of the
# total on random images, below what a float32 total can show; 1e-4 makes it about 1e-3.
REG_WEIGHT = 1e-4
F32_EPS = float(np.finfo(np.float32).eps)


def _two_cams(b: int, c: int, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A final and an auxiliary CAM, ``[b, c, s, s]`` in [0, 1], different everywhere: the
    final one rises left to right, the auxiliary one top to bottom."""
    ramp = torch.linspace(0, 1, s)
    final = ramp[None, None, None, :].expand(b, c, s, s).clone()
    aux = ramp[None, None, :, None].expand(b, c, s, s).clone()
    final[:, 1::2] = final[:, 1::2].flip(-1)  # channels differ too
    aux[:, 1::2] = aux[:, 1::2].flip(-2)
    return final, aux


@pytest.fixture(scope="module")
def wired():
    """A tiny step whose multi-scale CAMs are :func:`_two_cams`, with spies on every consumer
    (one step, shared by the tests of this module)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        return _run_wired(monkeypatch)


def _spy_on(monkeypatch, seen: dict[str, tuple], names) -> None:
    """Wrap each named function of the step module so that its last call's ``(args, kwargs)``
    lands in ``seen[name]``."""
    def spy(name, fn):
        def wrapper(*args, **kwargs):
            seen[name] = (args, kwargs)
            return fn(*args, **kwargs)
        return wrapper

    for name in names:
        monkeypatch.setattr(step_module, name, spy(name, getattr(step_module, name)))


def _run_wired(monkeypatch):
    module = make_step(crf_weight=REG_WEIGHT)
    batch = make_batch(module)
    b, _, s, _ = batch["image"].shape
    final, aux = _two_cams(b, module.spec.num_cam_classes, s)
    seen: dict[str, object] = {}

    def fake_cams(net, images, scales, *, plain=None, flip=True):
        assert images is batch["image"]
        return final.clone(), aux.clone()

    monkeypatch.setattr(step_module, "multi_scale_cams", fake_cams)
    _spy_on(monkeypatch, seen, ("roi_mask", "sample_local_crops", "pseudo_label_from_cams",
                                "cam_to_label", "ptc_loss"))
    out = module(batch, step=GATE + 1)
    return module, batch, final, aux, seen, out


def test_roi_mask_comes_from_the_auxiliary_cam(wired):
    _, batch, final, aux, seen, _ = wired
    (cam, labels, *_), _ = seen["roi_mask"]
    assert torch.equal(cam, aux) and not torch.equal(cam, final)
    assert torch.equal(labels, batch["label"])


def test_pseudo_labels_come_from_the_final_cam(wired):
    _, batch, final, aux, seen, _ = wired
    (images, cam, labels, *_), kwargs = seen["pseudo_label_from_cams"]
    assert torch.equal(cam, final) and not torch.equal(cam, aux)
    assert images is batch["image"] and torch.equal(labels, batch["label"])
    assert torch.equal(kwargs["img_box"], batch["img_box"])


def test_ptc_affinities_come_from_the_auxiliary_cam(wired):
    module, batch, final, aux, seen, _ = wired
    (small, labels), kwargs = seen["cam_to_label"]
    size = small.shape[-2:]
    expected = F.interpolate(aux, size=size, mode="bilinear", align_corners=False)
    assert torch.equal(small, expected)
    assert not torch.allclose(small, F.interpolate(final, size=size, mode="bilinear",
                                                   align_corners=False))
    # The affinity mask handed to PTC is the one of that label.
    _, aff = seen["ptc_loss"][0]
    _, label = cam_to_label(expected, labels, **kwargs)
    b = label.shape[0]
    flat = label.reshape(b, -1)
    same = (flat[:, :, None] == flat[:, None, :]).long()
    ignored = (flat == 255)[:, :, None] | (flat == 255)[:, None, :]
    same[ignored] = 255
    same[:, torch.arange(flat.shape[1]), torch.arange(flat.shape[1])] = 255
    assert torch.equal(aff, same)


def test_local_crops_are_cut_from_the_separately_augmented_source(wired):
    module, batch, _, aux, seen, _ = wired
    (source, roi), kwargs = seen["sample_local_crops"]
    assert source is batch["local_source"]
    assert not torch.equal(source, batch["image"])
    cfg = module.cfg
    assert kwargs == {"num_crops": cfg.num_local_crops, "crop_size": cfg.local_crop_size,
                      "neg_ratio": cfg.local_neg_ratio}
    # ... centred by the ROI mask of the auxiliary CAM.
    value = (aux * batch["label"][:, :, None, None]).amax(dim=1)
    expected = torch.ones_like(value, dtype=torch.int16)
    expected[value <= cfg.low_thre] = 0
    expected[value >= cfg.high_thre] = 2
    assert torch.equal(roi, expected)


def test_every_weighted_term_is_in_the_total(wired):
    """Term by term: the total equals the weighted sum to float32 rounding, and every term's
    weighted value is far above that rounding, so a missing or mis-weighted term fails."""
    module, _, _, _, _, out = wired
    cfg = module.cfg
    weights = {"cls": 1.0, "cls_aux": 1.0, "ptc": cfg.w_ptc, "ctc": cfg.w_ctc,
               "seg": cfg.w_seg, "reg": cfg.w_reg, "joint": cfg.w_joint}
    assert set(out.terms) == set(TERMS)
    parts = {t: weights[t] * float(out.terms[t]) for t in TERMS}
    total = float(out.loss.detach())
    rounding = 8 * F32_EPS * sum(abs(v) for v in parts.values())
    assert abs(total - sum(parts.values())) <= rounding
    for t in TERMS:
        assert abs(parts[t]) > 10 * rounding, f"{t}: too small to tell ({parts[t]:.3g})"
        # Without this term, the total would be off by far more than the rounding.
        assert abs(total - (sum(parts.values()) - parts[t])) > 5 * rounding, t


def test_weights_are_the_configured_ones():
    """Doubling one weight in the config moves the total by exactly that weighted term."""
    module = make_step(crf_weight=REG_WEIGHT)
    batch = make_batch(module)
    torch.manual_seed(0)
    base = module(batch, step=GATE + 1)
    for field, term in (("w_reg", "reg"), ("w_ptc", "ptc"), ("w_ctc", "ctc"),
                        ("w_seg", "seg"), ("w_joint", "joint")):
        weight = getattr(base_cfg := module.cfg, field)
        module.cfg = base_cfg.model_copy(update={field: 2 * weight})
        torch.manual_seed(0)
        out = module(batch, step=GATE + 1)
        module.cfg = base_cfg
        assert float(out.terms[term]) == float(base.terms[term])
        delta = float(out.loss.detach()) - float(base.loss.detach())
        part = weight * float(base.terms[term])
        rounding = 8 * F32_EPS * abs(float(base.loss.detach()))  # of the float32 totals
        assert delta == pytest.approx(part, rel=1e-3, abs=rounding), field


def test_config_and_spec_fields_reach_their_consumers(monkeypatch):
    """A DeepGlobe step (no background class) whose CTC temperature and dense-CRF settings all
    differ from the functions' defaults: each consumer gets the run's value, not its default.
    Values typed out from the spec (ImageNet statistics ×255) and the overrides below."""
    module = make_step("deepglobe", ctc_temp=0.3, crf_weight=REG_WEIGHT, crf_sigma_rgb=9.0,
                       crf_sigma_xy=40.0, crf_scale=0.25, energy_filter="exact")
    batch = make_batch(module)
    seen: dict[str, tuple] = {}
    _spy_on(monkeypatch, seen, ("ctc_loss", "cam_to_label", "label_to_aff_mask", "seg_loss",
                                "energy_loss", "joint_loss"))
    module(batch, step=GATE + 1)

    assert seen["ctc_loss"][1] == {"temp": 0.3}
    assert seen["cam_to_label"][1]["has_background"] is False
    assert seen["cam_to_label"][1]["ignore_index"] == 255
    assert seen["label_to_aff_mask"][0][1:] == (255,)
    (_, _, seg_ignore), seg_kwargs = seen["seg_loss"]
    assert seg_ignore == 255 and seg_kwargs == {"has_background": False}
    assert seen["joint_loss"][0][3] == 255
    (images, _, pseudo, box), crf = seen["energy_loss"]
    assert torch.equal(images, batch["image"][:, :3]) and torch.equal(box, batch["img_box"])
    assert crf.pop("mean") == pytest.approx([123.675, 116.28, 103.53])
    assert crf.pop("std") == pytest.approx([58.395, 57.12, 57.375])
    assert crf == {"weight": REG_WEIGHT, "sigma_rgb": 9.0, "sigma_xy": 40.0,
                   "scale_factor": 0.25, "method": "exact"}
