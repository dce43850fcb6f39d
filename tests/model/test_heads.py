"""Heads: reference parameter counts and the computations they stand for."""

import pytest
import torch
import torch.nn.functional as F

from ctfa_cli.model.heads import LargeFOV, MaxPoolClassifier, ProjectionHead


def numel(module, *, trainable=None):
    return sum(p.numel() for p in module.parameters()
               if trainable is None or p.requires_grad == trainable)


@pytest.mark.parametrize(("num_classes", "expected"), [(6, 5_901_312), (16, 5_906_432)])
def test_largefov_has_the_reference_parameter_count(num_classes, expected):
    with torch.device("meta"):
        decoder = LargeFOV(768, num_classes)
    assert numel(decoder) == expected  # param_counts parity cases
    assert all(conv.bias is None for conv in (decoder.conv6, decoder.conv7, decoder.conv8))


def test_largefov_keeps_the_size_and_applies_dilated_convolutions():
    decoder = LargeFOV(8, 3, hidden_dim=4)
    x = torch.randn(2, 8, 7, 9)
    out = decoder(x)
    assert out.shape == (2, 3, 7, 9)
    hidden = F.relu(F.conv2d(x, decoder.conv6.weight, padding=5, dilation=5))
    hidden = F.relu(F.conv2d(hidden, decoder.conv7.weight, padding=5, dilation=5))
    torch.testing.assert_close(out, F.conv2d(hidden, decoder.conv8.weight))


def test_projection_head_has_the_reference_counts_and_a_frozen_unit_gain():
    with torch.device("meta"):
        head = ProjectionHead(768, 1024)
    assert numel(head) == 6_558_976
    assert numel(head, trainable=False) == 1024
    small = ProjectionHead(8, 5, hidden_dim=16, bottleneck_dim=4)
    gain = small.last_layer.parametrizations.weight.original0
    assert not gain.requires_grad
    assert torch.equal(gain, torch.ones(5, 1))


def test_projection_head_is_cosine_to_prototypes():
    head = ProjectionHead(8, 5, hidden_dim=16, bottleneck_dim=4)
    x = torch.randn(3, 8)
    out = head(x)
    bottleneck = F.normalize(head.mlp(x), dim=-1)
    prototypes = F.normalize(head.last_layer.parametrizations.weight.original1, dim=1)
    torch.testing.assert_close(out, bottleneck @ prototypes.T)
    assert out.abs().max() <= 1 + 1e-6
    out.sum().backward()
    assert head.last_layer.parametrizations.weight.original1.grad is not None
    assert head.last_layer.parametrizations.weight.original0.grad is None


def test_classifier_max_pools_then_projects_and_cam_projects_every_pixel():
    classifier = MaxPoolClassifier(6, 4)
    assert classifier.bias is None
    feats = torch.randn(2, 6, 3, 5)
    weight = classifier.weight[:, :, 0, 0]
    torch.testing.assert_close(classifier(feats), feats.amax(dim=(2, 3)) @ weight.T)
    torch.testing.assert_close(classifier.cam(feats), torch.einsum("bdhw,cd->bchw", feats, weight))
