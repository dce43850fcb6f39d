"""The full CTFA step: every term finite, gradients where they belong, the warm-up gate."""

from __future__ import annotations

import math

import torch

from ctfa_cli.datasets.registry import get_spec
from ctfa_cli.model.network import CTFANetwork
from ctfa_cli.objectives.cam import multi_scale_cams
from ctfa_cli.precision import autocast
from ctfa_cli.training.step import CTFAStep, seg_terms_active
from tests.training.helpers import tiny_config

GATE = 3


def make_step(dataset: str = "synthetic", **overrides) -> CTFAStep:
    spec = get_spec(dataset)
    cfg = tiny_config(seg_gate_iters=GATE, **overrides)
    torch.manual_seed(0)
    return CTFAStep(CTFANetwork.from_config(spec, cfg), spec, cfg)


def make_batch(step: CTFAStep, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b, s, c = 2, step.cfg.crop_size, step.spec.num_cam_classes
    labels = torch.zeros(b, c)
    labels[0, [0, 2]] = 1
    labels[1, [1, c - 1]] = 1
    return {
        "image": torch.randn(b, 3, s, s, generator=g),
        "label": labels,
        # The second crop holds real image only in its lower half (padding above).
        "img_box": torch.tensor([[0, s, 0, s], [s // 2, s, 0, s]], dtype=torch.int16),
        "global_view": torch.randn(b, 3, s, s, generator=g),
        "local_source": torch.randn(b, 3, s, s, generator=g),
    }


def weighted_total(step: CTFAStep, terms: dict[str, torch.Tensor]) -> torch.Tensor:
    cfg = step.cfg
    weights = {"cls": 1.0, "cls_aux": 1.0, "ptc": cfg.w_ptc, "ctc": cfg.w_ctc,
               "seg": cfg.w_seg, "reg": cfg.w_reg, "joint": cfg.w_joint}
    return sum(weights[name] * value for name, value in terms.items())


def test_full_step_forward_backward():
    module = make_step()
    out = module(make_batch(module), step=GATE + 1)
    assert set(out.terms) == {"cls", "cls_aux", "ptc", "ctc", "seg", "reg", "joint"}
    assert all(math.isfinite(float(v)) for v in out.terms.values())
    assert torch.allclose(out.loss, weighted_total(module, out.terms))
    out.loss.backward()
    net = module.network
    for part in ("encoder", "classifier", "aux_classifier", "decoder", "foreground_decoder",
                 "proj_head"):
        grads = [p.grad for p in getattr(net, part).parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), part
        assert any(bool(g.abs().sum() > 0) for g in grads), part
    assert all(p.grad is None and not p.requires_grad for p in net.proj_head_t.parameters())


def test_warmup_gate_boundary():
    # Reference: `n_iter <= gate` gives the seg/reg/joint terms weight 0 (n_iter 0-based).
    assert not seg_terms_active(GATE, GATE) and seg_terms_active(GATE + 1, GATE)
    module = make_step()
    batch = make_batch(module)
    out = module(batch, step=GATE)
    assert set(out.terms) == {"cls", "cls_aux", "ptc", "ctc"}
    assert torch.allclose(out.loss, weighted_total(module, out.terms))
    out.loss.backward()
    # Like the reference's zero weights: the decoders get zero gradients, not none.
    for part in (module.network.decoder, module.network.foreground_decoder):
        assert all(p.grad is not None and not p.grad.any() for p in part.parameters())
    after = module(batch, step=GATE + 1)
    assert {"seg", "reg", "joint"} <= set(after.terms)


def test_ptc_box_is_scaled_to_the_feature_map():
    module = make_step()
    batch = make_batch(module)
    s = module.cfg.crop_size
    cam = torch.ones(2, module.spec.num_cam_classes, s, s)  # confident everywhere
    feature = s // 16
    aff = module._affinity_mask(cam, batch["label"], batch["img_box"], (feature, feature))
    rows = torch.arange(feature * feature) // feature
    counted = (aff[1] != 255).any(dim=0)
    # Image 1 is real in crop rows s/2.. → feature rows feature/2.. (the reference, with the
    # box in crop pixels, would ignore the whole map); the padding rows are ignored.
    assert not counted[rows < feature // 2].any()
    assert bool((aff[1][:, rows >= feature // 2][rows >= feature // 2] != 255).sum() > 0)


def test_step_without_background_class():
    module = make_step("deepglobe")
    assert not module.spec.has_background
    out = module(make_batch(module), step=GATE + 1)
    assert all(math.isfinite(float(v)) for v in out.terms.values())
    out.loss.backward()


def test_step_without_local_crops():
    module = make_step(num_local_crops=0)  # CTC between the two global views only
    out = module(make_batch(module), step=GATE + 1)
    assert all(math.isfinite(float(v)) for v in out.terms.values())


def test_reused_plain_cams_equal_a_fresh_pass():
    # The step takes the crops' own CAMs from its forward pass instead of encoding them again.
    module = make_step()
    net, images = module.network, make_batch(module)["image"]
    with torch.no_grad():
        plain = net.cams(images)
    fresh = multi_scale_cams(net, images, module.cfg.cam_scales)
    reused = multi_scale_cams(net, images, module.cfg.cam_scales, plain=plain)
    for a, b in zip(fresh, reused, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_full_step_under_cpu_bfloat16_autocast():
    module = make_step(amp="bf16")
    with autocast(module.cfg.amp, torch.device("cpu")):
        out = module(make_batch(module), step=GATE + 1)
    assert set(out.terms) == {"cls", "cls_aux", "ptc", "ctc", "seg", "reg", "joint"}
    assert all(math.isfinite(float(v)) for v in out.terms.values())
    out.loss.backward()
    grads = [p.grad for p in module.network.parameters() if p.requires_grad]
    # Parameters and their gradients stay float32; only the computation is bfloat16.
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all()
               for g in grads)
