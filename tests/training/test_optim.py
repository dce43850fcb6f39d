"""Parameter groups, the poly-with-warm-up schedule and the checkpointable optimiser."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ctfa_cli.config import TrainConfig
from ctfa_cli.model.network import CTFANetwork
from ctfa_cli.training.optim import PolyWarmupAdamW, build_optimizer, param_groups, poly_lr

PARITY = Path(__file__).parents[1] / "data" / "parity"
SMALL_PROJ = {"proj_hidden_dim": 32, "proj_bottleneck_dim": 8, "proj_out_dim": 16}
DEFAULTS = {"warmup_iters": 1500, "warmup_ratio": 1e-6, "max_iters": 20000, "power": 0.9}


@pytest.mark.parametrize("case", sorted(PARITY.glob("poly_lr__*.npz")), ids=lambda p: p.stem)
def test_poly_lr_matches_the_reference_optimizer(case):
    ref = np.load(case)
    meta = json.loads(str(ref["meta"]))
    for row, step in enumerate(ref["in_steps"].tolist()):
        for group, mult in enumerate(meta["group_lr_mult"]):
            lr = poly_lr(step, meta["lr"] * mult, warmup_iters=meta["warmup_iter"],
                         warmup_ratio=meta["warmup_ratio"], max_iters=meta["max_iter"],
                         power=meta["power"])
            assert lr == pytest.approx(ref["out_lr"][row, group], rel=1e-12)


def test_poly_lr_ramps_jumps_and_freezes():
    assert poly_lr(0, 1.0, **DEFAULTS) == pytest.approx(1e-6)
    assert poly_lr(750, 1.0, **DEFAULTS) == pytest.approx(0.5 + 0.5e-6)
    # Not re-based after the warm-up: the documented jump of the reference.
    assert poly_lr(1499, 1.0, **DEFAULTS) == pytest.approx(0.999333, abs=1e-6)
    assert poly_lr(1500, 1.0, **DEFAULTS) == pytest.approx(0.932240, abs=1e-6)
    last = poly_lr(19999, 1.0, **DEFAULTS)
    assert 0 < last < 1e-3
    assert poly_lr(20000, 1.0, **DEFAULTS) == last == poly_lr(50000, 1.0, **DEFAULTS)
    no_warmup = {**DEFAULTS, "warmup_iters": 0}
    assert poly_lr(0, 2.0, **no_warmup) == 2.0


def test_groups_match_the_reference_sizes():
    ref = np.load(PARITY / "param_counts__a1_deit_base_c6.npz")
    with torch.device("meta"):
        model = CTFANetwork(5, 6, backbone="deit_base_patch16_224")
    groups = param_groups(model)
    sizes = [sum(p.numel() for p in group) for group in groups]
    counts = [len(group) for group in groups]
    # The reference's group 0 also holds its unused ImageNet head (weight + bias).
    sizes[0] += int(ref["out_encoder_unused_head_numel"])
    counts[0] += 2
    assert sizes == ref["out_param_group_numel"].tolist()
    assert counts == ref["out_param_group_ntensors"].tolist()


@pytest.fixture
def model():
    torch.manual_seed(0)
    return CTFANetwork(5, 6, backbone="test_vit", **SMALL_PROJ)


def test_groups_cover_every_parameter_once_except_the_teacher(model):
    grouped = [id(p) for group in param_groups(model) for p in group]
    assert len(grouped) == len(set(grouped))
    teacher = {id(p) for p in model.proj_head_t.parameters()}
    everything = {id(p) for p in model.parameters()}
    assert set(grouped) == everything - teacher
    norms = {id(p) for n, p in model.encoder.named_parameters() if "norm" in n}
    assert {id(p) for p in param_groups(model)[1]} == norms


def test_optimizer_groups_use_the_head_multiplier_and_the_schedule(model):
    cfg = TrainConfig(lr=1e-3, head_lr_mult=10.0, warmup_iters=2, max_iters=6, warmup_ratio=0.1,
                      weight_decay=0.05, betas=(0.8, 0.9))
    optimizer = build_optimizer(model, cfg)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [g["initial_lr"] for g in optimizer.param_groups] == [1e-3, 1e-3, 1e-2, 1e-2]
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.05}
    assert {tuple(g["betas"]) for g in optimizer.param_groups} == {(0.8, 0.9)}
    schedule = {"warmup_iters": 2, "warmup_ratio": 0.1, "max_iters": 6, "power": 0.9}
    for step in range(8):
        optimizer.step()  # no gradients yet: only the schedule moves
        for group, base in zip(optimizer.param_groups, [1e-3, 1e-3, 1e-2, 1e-2], strict=True):
            assert group["lr"] == poly_lr(step, base, **schedule)


def test_frozen_parameters_are_never_updated(model):
    optimizer = build_optimizer(model, TrainConfig(lr=1e-2, warmup_iters=0))
    pos_embed = model.encoder.vit.pos_embed.detach().clone()
    gain = model.proj_head.last_layer.parametrizations.weight.original0.detach().clone()
    feats = model.features(torch.randn(2, 3, 32, 32))
    _, student = model.project_views(feats.cls, torch.randn(2, 3, 16, 16))
    (model.segment(torch.randn(1, 3, 32, 32)).mean() + student.sum()).backward()
    optimizer.step()
    assert torch.equal(model.encoder.vit.pos_embed, pos_embed)
    assert torch.equal(model.proj_head.last_layer.parametrizations.weight.original0, gain)


def train_steps(model: CTFANetwork, optimizer: PolyWarmupAdamW, steps: range) -> None:
    for step in steps:
        generator = torch.Generator().manual_seed(step)
        x = torch.randn(2, 3, 32, 32, generator=generator)
        optimizer.zero_grad()
        # Encoder and head groups only: the dilated decoder convolutions are slow on CPU.
        logits, aux_logits = model.classify(model.features(x))
        (logits.square().mean() + aux_logits.mean()).backward()
        optimizer.step()


def test_state_dict_resumes_exactly():
    cfg = TrainConfig(lr=1e-3, warmup_iters=2, max_iters=5)

    def fresh():
        torch.manual_seed(0)
        model = CTFANetwork(5, 6, backbone="test_vit", **SMALL_PROJ)
        return model, build_optimizer(model, cfg)

    straight, straight_opt = fresh()
    train_steps(straight, straight_opt, range(4))

    first, first_opt = fresh()
    train_steps(first, first_opt, range(2))
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "optim": first_opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed, resumed_opt = fresh()
    resumed.load_state_dict(saved["model"])
    resumed_opt.load_state_dict(saved["optim"])
    assert resumed_opt.global_step == 2
    train_steps(resumed, resumed_opt, range(2, 4))

    assert [g["lr"] for g in resumed_opt.param_groups] == [
        g["lr"] for g in straight_opt.param_groups]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
