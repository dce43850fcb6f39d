"""ViTBackbone: the three reference outputs through forward_intermediates, sizes, weights files."""

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import adapt_input_conv

from ctfa_cli.config import TrainConfig
from ctfa_cli.datasets.registry import get_spec
from ctfa_cli.errors import CtfaError, CtfaUsageError
from ctfa_cli.model.backbone import ViTBackbone
from ctfa_cli.model.bundle import save_bundle
from ctfa_cli.model.network import CTFANetwork

# timm's own test ViT (6 blocks, width 64, class token): ~15x cheaper to build than vit_tiny.
TINY = "test_vit"


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return ViTBackbone(TINY, aux_layer=-3).eval()


def test_outputs_match_an_independent_walk_through_the_blocks(backbone):
    vit = backbone.vit
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        feats = backbone(x)
        tokens = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
        for block in vit.blocks[:4]:  # -3 of 6 blocks is block index 3
            tokens = block(tokens)
        aux_tokens = tokens[:, 1:]
        normed = vit.forward_features(x)  # timm's own path: all blocks, then the final norm

    assert feats.final.shape == feats.aux.shape == (2, 64, 4, 6)
    assert feats.cls.shape == (2, 64)
    torch.testing.assert_close(feats.final.flatten(2).transpose(1, 2), normed[:, 1:])
    torch.testing.assert_close(feats.cls, normed[:, 0])
    torch.testing.assert_close(feats.aux.flatten(2).transpose(1, 2), aux_tokens)


def test_partial_patches_are_ignored_like_a_strided_conv(backbone):
    x = torch.randn(1, 3, 70, 100)
    with torch.no_grad():
        ragged = backbone(x)
        cropped = backbone(x[..., :64, :96])
    assert ragged.final.shape == (1, 64, 4, 6)
    torch.testing.assert_close(ragged.final, cropped.final)
    torch.testing.assert_close(ragged.aux, cropped.aux)


def test_last_block_aux_is_the_normed_output_as_in_the_reference():
    torch.manual_seed(0)
    model = ViTBackbone(TINY, aux_layer=-1).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 32, 32))
    assert torch.equal(feats.aux, feats.final)


def test_position_embeddings_frozen_by_default_and_configurable(backbone):
    assert not backbone.vit.pos_embed.requires_grad
    assert backbone.vit.cls_token.requires_grad
    trainable = ViTBackbone(TINY, freeze_pos_embed=False)
    assert trainable.vit.pos_embed.requires_grad


def test_no_imagenet_head():
    model = ViTBackbone(TINY)
    assert not any(name.startswith("head.") for name, _ in model.vit.named_parameters())


@pytest.fixture(scope="module")
def timm_state_dict():
    """A state dict as timm saves it, ImageNet head included."""
    torch.manual_seed(1)
    return timm.create_model(TINY, pretrained=False).state_dict()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_file_is_loaded(tmp_path, timm_state_dict, suffix):
    path = tmp_path / f"tiny{suffix}"
    if suffix == ".safetensors":
        save_file(timm_state_dict, path)
    else:
        torch.save({"model": timm_state_dict}, path)  # DeiT's release layout
    model = ViTBackbone(TINY, weights=path)
    loaded = model.vit.state_dict()
    assert set(loaded) == {k for k in timm_state_dict if not k.startswith("head.")}
    for key, value in loaded.items():
        assert torch.equal(value, timm_state_dict[key]), key


def test_extra_bands_adapt_the_patch_embedding(tmp_path, timm_state_dict):
    path = tmp_path / "tiny.safetensors"
    save_file(timm_state_dict, path)
    model = ViTBackbone(TINY, in_chans=4, weights=path)
    rgb_kernel = timm_state_dict["patch_embed.proj.weight"]
    assert model.vit.patch_embed.proj.weight.shape == (64, 4, 16, 16)
    torch.testing.assert_close(model.vit.patch_embed.proj.weight,
                               adapt_input_conv(4, rgb_kernel.clone()))
    torch.testing.assert_close(model.vit.blocks[2].mlp.fc1.weight,
                               timm_state_dict["blocks.2.mlp.fc1.weight"])
    with torch.no_grad():
        assert model(torch.randn(1, 4, 32, 48)).final.shape == (1, 64, 2, 3)


def test_weights_of_another_architecture_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "wider.pth"
    torch.save(timm.create_model("test_vit3", pretrained=False).state_dict(), path)
    with pytest.raises(CtfaError, match="wider.pth: not loadable as test_vit"):
        ViTBackbone(TINY, weights=path)


def test_weights_under_other_key_names_are_refused_not_silently_skipped(tmp_path,
                                                                       timm_state_dict):
    # timm loads non-strictly once the ImageNet head is dropped: without the coverage check,
    # a file of other key names would leave the whole encoder at its random initialisation.
    path = tmp_path / "prefixed.pth"
    torch.save({f"backbone.{k}": v for k, v in timm_state_dict.items()}, path)
    with pytest.raises(CtfaError, match=r"prefixed.pth: not loadable as test_vit weights "
                                        r"\(78 of the model's 78 tensors are not in the file"):
        ViTBackbone(TINY, weights=path)


def test_a_ctfa_model_bundle_gives_its_encoder(tmp_path):
    spec = get_spec("potsdam")
    cfg = TrainConfig(backbone=TINY, pretrained=False, proj_hidden_dim=32, proj_bottleneck_dim=8,
                      proj_out_dim=16)
    torch.manual_seed(3)
    network = CTFANetwork.from_config(spec, cfg)
    path = tmp_path / "last.pt"
    save_bundle(path, network, spec, cfg)
    torch.manual_seed(4)  # another random initialisation, which the bundle must replace
    loaded = ViTBackbone(TINY, weights=path).vit.state_dict()
    expected = network.encoder.vit.state_dict()
    assert set(loaded) == set(expected)
    for key, value in loaded.items():
        assert torch.equal(value, expected[key]), key


def test_npz_without_a_vit_layout_is_refused(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, something=np.zeros(3, dtype=np.float32))
    with pytest.raises(CtfaError, match="other.npz: not loadable"):
        ViTBackbone(TINY, weights=path)


def test_missing_or_unsupported_weights_file(tmp_path):
    with pytest.raises(CtfaError, match="nope.pth: no such weights file"):
        ViTBackbone(TINY, weights=tmp_path / "nope.pth")
    odd = tmp_path / "weights.txt"
    odd.write_text("not weights")
    with pytest.raises(CtfaError, match="unsupported weights format"):
        ViTBackbone(TINY, weights=odd)


def test_bad_backbone_choices_are_usage_errors():
    with pytest.raises(CtfaUsageError, match="unknown backbone"):
        ViTBackbone("vit_does_not_exist")
    with pytest.raises(CtfaUsageError, match="not a timm ViT"):
        ViTBackbone("resnet18")
    with pytest.raises(CtfaUsageError, match="aux_layer=6"):
        ViTBackbone(TINY, aux_layer=6)
