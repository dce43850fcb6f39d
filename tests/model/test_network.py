"""CTFANetwork: reference parameter counts, the methods other modules code against, EMA teacher."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ctfa_cli.config import TrainConfig
from ctfa_cli.datasets.registry import get_spec
from ctfa_cli.model.network import CTFANetwork

PARITY = Path(__file__).parents[1] / "data" / "parity"
SUBMODULES = ["encoder", "proj_head", "proj_head_t", "decoder", "foreground_decoder",
              "classifier", "aux_classifier"]
SMALL_PROJ = {"proj_hidden_dim": 32, "proj_bottleneck_dim": 8, "proj_out_dim": 16}


def tiny_network(**kwargs) -> CTFANetwork:
    torch.manual_seed(0)
    return CTFANetwork(5, 6, backbone="test_vit", **{**SMALL_PROJ, **kwargs})


@pytest.fixture(scope="module")
def net():
    return tiny_network()


@pytest.mark.parametrize("case", sorted(PARITY.glob("param_counts__*.npz")), ids=lambda p: p.stem)
def test_parameter_counts_equal_the_reference(case):
    ref = np.load(case)
    num_classes = int(json.loads(str(ref["meta"]))["num_classes"])
    with torch.device("meta"):
        model = CTFANetwork(num_classes - 1, num_classes, backbone="deit_base_patch16_224")
    head = int(ref["out_encoder_unused_head_numel"])  # built but unused by the reference
    totals, trainable, frozen = [], [], []
    for name in SUBMODULES:
        params = list(getattr(model, name).parameters())
        totals.append(sum(p.numel() for p in params))
        trainable.append(sum(p.numel() for p in params if p.requires_grad))
        frozen.append(sum(p.numel() for p in params if not p.requires_grad))
    totals[0] += head
    trainable[0] += head
    assert totals == ref["out_numel_total"].tolist()
    assert trainable == ref["out_numel_trainable"].tolist()
    assert frozen == ref["out_numel_frozen"].tolist()
    assert len(list(model.parameters())) + 2 == int(ref["out_num_tensors"])


def test_method_shapes(net):
    x = torch.randn(2, 3, 64, 80)
    feats = net.features(x)
    assert feats.final.shape == feats.aux.shape == (2, 64, 4, 5)
    logits, aux_logits = net.classify(feats)
    assert logits.shape == aux_logits.shape == (2, 5)
    seg, fg = net.decode(feats.final)
    assert seg.shape == fg.shape == (2, 6, 4, 5)
    assert net.segment(x).shape == (2, 6, 64, 80)


def test_cams_are_the_classifier_weights_applied_to_each_feature(net):
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        feats = net.features(x)
        cam, aux_cam = net.cams(x)
    torch.testing.assert_close(cam, F.conv2d(feats.final, net.classifier.weight))
    torch.testing.assert_close(aux_cam, F.conv2d(feats.aux, net.aux_classifier.weight))
    assert (cam < 0).any()  # raw: the ReLU belongs to the multi-scale CAM helper


def test_segment_is_the_decoder_upsampled(net):
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        seg = net.decoder(net.features(x).final)
        expected = F.interpolate(seg, size=(40, 56), mode="bilinear", align_corners=False)
        torch.testing.assert_close(net.segment(x), expected)


def test_project_views_reuses_the_global_pass_and_keeps_crop_major_rows(net):
    b = 2
    globals_ = torch.randn(2 * b, 3, 32, 32)
    locals_ = torch.randn(3 * b, 3, 16, 16)
    global_cls = net.features(globals_).cls
    teacher, student = net.project_views(global_cls, locals_)
    assert teacher.shape == (2 * b, 16) and student.shape == (5 * b, 16)
    with torch.no_grad():
        torch.testing.assert_close(teacher, net.proj_head_t(global_cls))
        torch.testing.assert_close(student[: 2 * b], net.proj_head(global_cls))
        torch.testing.assert_close(student[2 * b:], net.proj_head(net.features(locals_).cls))
    assert not teacher.requires_grad  # teacher input detached and teacher frozen

    net.zero_grad()
    student.square().sum().backward()
    assert net.encoder.vit.patch_embed.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.proj_head.parameters() if p.requires_grad)
    assert all(p.grad is None for p in net.proj_head_t.parameters())


def test_project_views_without_local_crops(net):
    global_cls = torch.randn(4, 64)
    teacher, student = net.project_views(global_cls, torch.empty(0, 3, 16, 16))
    assert teacher.shape == student.shape == (4, 16)


def test_gradients_reach_every_trained_part_and_never_the_teacher(net):
    net.zero_grad()
    x = torch.randn(2, 3, 32, 32)
    feats = net.features(x)
    logits, aux_logits = net.classify(feats)
    seg, fg = net.decode(feats.final)
    _, student = net.project_views(feats.cls, torch.randn(2, 3, 16, 16))
    (logits.sum() + aux_logits.sum() + seg.mean() + fg.mean() + student.sum()).backward()
    for name in ["encoder", "proj_head", "decoder", "foreground_decoder", "classifier",
                 "aux_classifier"]:
        missing = [n for n, p in getattr(net, name).named_parameters()
                   if p.requires_grad and p.grad is None]
        assert not missing, (name, missing)
    assert not net.encoder.vit.pos_embed.requires_grad
    assert all(p.grad is None for p in net.proj_head_t.parameters())


def test_teacher_starts_equal_then_follows_the_ema_rule():
    net = tiny_network(ema_momentum=0.9)
    for teacher, student in zip(net.proj_head_t.parameters(), net.proj_head.parameters(),
                                strict=True):
        assert torch.equal(teacher, student) and not teacher.requires_grad
        assert teacher.data_ptr() != student.data_ptr()
    with torch.no_grad():
        for p in net.proj_head.parameters():
            p.add_(torch.randn_like(p))
    before = [t.clone() for t in net.proj_head_t.parameters()]
    net.ema_update()
    for old, teacher, student in zip(before, net.proj_head_t.parameters(),
                                     net.proj_head.parameters(), strict=True):
        torch.testing.assert_close(teacher, 0.9 * old + 0.1 * student)


def test_from_config_follows_the_background_policy_and_bands(caplog):
    cfg = TrainConfig(backbone="test_vit", pretrained=False, **SMALL_PROJ)
    with caplog.at_level(logging.WARNING, logger="ctfa"):
        potsdam = CTFANetwork.from_config(get_spec("potsdam"), cfg)
    assert "RANDOM weights" in caplog.text
    assert (potsdam.num_cam_classes, potsdam.num_classes) == (5, 6)
    deepglobe = CTFANetwork.from_config(get_spec("deepglobe"), cfg)
    assert (deepglobe.num_cam_classes, deepglobe.num_classes) == (7, 7)
    assert deepglobe.classifier.weight.shape[0] == 7
    four_bands = get_spec("potsdam").model_copy(
        update={"bands": ["ir", "r", "g", "dsm"], "mean": [0.5] * 4, "std": [0.2] * 4})
    model = CTFANetwork.from_config(four_bands, cfg)
    assert model.encoder.vit.patch_embed.proj.weight.shape[1] == 4


def test_from_config_loads_the_weights_file_and_can_be_forced_random(tmp_path, caplog):
    source = tiny_network()
    weights = tmp_path / "vit.pth"
    torch.save(source.encoder.vit.state_dict(), weights)
    cfg = TrainConfig(backbone="test_vit", pretrained=False, weights=weights, **SMALL_PROJ)
    with caplog.at_level(logging.WARNING, logger="ctfa"):
        loaded = CTFANetwork.from_config(get_spec("potsdam"), cfg)
        random = CTFANetwork.from_config(get_spec("potsdam"), cfg, pretrained=False)
    assert "RANDOM" not in caplog.text  # a file was given; forcing random is deliberate
    sample = "blocks.1.attn.qkv.weight"
    assert torch.equal(loaded.encoder.vit.state_dict()[sample],
                       source.encoder.vit.state_dict()[sample])
    assert not torch.equal(random.encoder.vit.state_dict()[sample],
                           source.encoder.vit.state_dict()[sample])
