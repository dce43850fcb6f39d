"""Model bundles: self-contained, weights_only-loadable, atomic, clear errors on bad files."""

import pickle

import numpy as np
import pytest
import torch

from ctfa_cli.config import TrainConfig
from ctfa_cli.datasets.registry import get_spec
from ctfa_cli.errors import CtfaError
from ctfa_cli.model.bundle import BUNDLE_FORMAT, load_bundle, save_bundle
from ctfa_cli.model.network import CTFANetwork

SMALL_PROJ = {"proj_hidden_dim": 32, "proj_bottleneck_dim": 8, "proj_out_dim": 16}


@pytest.fixture(scope="module")
def spec():
    return get_spec("potsdam")


@pytest.fixture(scope="module")
def cfg():
    return TrainConfig(backbone="test_vit", pretrained=False, bkg_thre=0.45, **SMALL_PROJ)


@pytest.fixture(scope="module")
def model(spec, cfg):
    torch.manual_seed(0)
    return CTFANetwork.from_config(spec, cfg)


def test_round_trip_restores_model_spec_config_and_extra(tmp_path, model, spec, cfg):
    path = tmp_path / "best.pt"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.segment(torch.randn(1, 3, 32, 32)).mean().backward()
    optimizer.step()
    extra = {"step": 7, "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()}
    save_bundle(path, model, spec, cfg, extra=extra)

    bundle = load_bundle(path)
    assert not bundle.model.training
    assert bundle.spec == spec and bundle.cfg == cfg
    assert bundle.extra["step"] == 7
    assert torch.equal(bundle.extra["rng"], extra["rng"])
    restored = torch.optim.AdamW(bundle.model.parameters(), lr=1e-3)
    restored.load_state_dict(bundle.extra["optimizer"])
    saved_state, loaded_state = model.state_dict(), bundle.model.state_dict()
    assert saved_state.keys() == loaded_state.keys()
    assert all(torch.equal(saved_state[k], loaded_state[k]) for k in saved_state)
    assert not bundle.model.encoder.vit.pos_embed.requires_grad
    assert not any(p.requires_grad for p in bundle.model.proj_head_t.parameters())
    x = torch.randn(1, 3, 48, 32)
    with torch.no_grad():
        torch.testing.assert_close(bundle.model.segment(x), model.eval().segment(x))
    model.train()


def test_file_is_plain_data_with_a_readable_summary(tmp_path, model, spec, cfg):
    path = tmp_path / "b.pt"
    save_bundle(path, model, spec, cfg)
    payload = torch.load(path, weights_only=True)  # never executes code
    assert payload["format"] == BUNDLE_FORMAT
    assert payload["backbone"] == "test_vit"
    assert payload["bands"] == ["ir", "r", "g"]
    assert payload["classes"] == spec.classes
    assert payload["palette"][1] == [0, 0, 255]
    assert payload["tile_size"] == spec.tile_size
    assert payload["mean"] == list(spec.mean) and payload["std"] == list(spec.std)
    assert payload["extra"] == {}


def test_architecture_fields_come_from_the_model(tmp_path, model, spec):
    path = tmp_path / "b.pt"
    save_bundle(path, model, spec, TrainConfig())  # default config says deit_base
    bundle = load_bundle(path)
    assert bundle.cfg.backbone == "test_vit"
    assert bundle.cfg.proj_out_dim == 16


def test_overwrites_atomically_without_leftovers(tmp_path, model, spec, cfg):
    path = tmp_path / "checkpoints" / "last.pt"
    save_bundle(path, model, spec, cfg, extra={"step": 1})
    save_bundle(path, model, spec, cfg, extra={"step": 2})
    assert load_bundle(path).extra["step"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_extra_that_weights_only_cannot_read_is_refused_before_writing(tmp_path, model, spec,
                                                                        cfg):
    path = tmp_path / "b.pt"
    with pytest.raises(TypeError, match=r"extra\['rng'\]\[1\] is a ndarray"):
        save_bundle(path, model, spec, cfg, extra={"rng": ("MT19937", np.zeros(3))})
    with pytest.raises(TypeError, match="float64"):
        save_bundle(path, model, spec, cfg, extra={"best": np.float64(0.5)})
    assert not list(tmp_path.iterdir())


def test_model_and_spec_must_agree(tmp_path, model, cfg):
    with pytest.raises(ValueError, match="does not match the dataset spec 'isaid'"):
        save_bundle(tmp_path / "b.pt", model, get_spec("isaid"), cfg)


def test_missing_corrupt_and_foreign_files_are_one_line_errors(tmp_path, model, spec, cfg):
    with pytest.raises(CtfaError, match="nothing.pt: no such checkpoint"):
        load_bundle(tmp_path / "nothing.pt")

    corrupt = tmp_path / "corrupt.pt"
    save_bundle(corrupt, model, spec, cfg)
    corrupt.write_bytes(corrupt.read_bytes()[:1000])
    with pytest.raises(CtfaError, match="corrupt.pt: not a readable ctfa checkpoint"):
        load_bundle(corrupt)

    code = tmp_path / "code.pt"
    code.write_bytes(pickle.dumps({"format": BUNDLE_FORMAT, "x": pickle.PickleError()},
                                  protocol=2))
    with pytest.raises(CtfaError, match="code.pt: not a readable ctfa checkpoint"):
        load_bundle(code)

    foreign = tmp_path / "foreign.pt"
    torch.save({"model": model.state_dict()}, foreign)
    with pytest.raises(CtfaError, match="foreign.pt: not a ctfa model bundle"):
        load_bundle(foreign)

    future = tmp_path / "future.pt"
    torch.save({"format": "ctfa-bundle/9"}, future)
    with pytest.raises(CtfaError, match="future.pt: bundle format 'ctfa-bundle/9'"):
        load_bundle(future)


def test_weights_that_do_not_fit_the_described_network(tmp_path, model, spec, cfg):
    path = tmp_path / "b.pt"
    save_bundle(path, model, spec, cfg)
    payload = torch.load(path, weights_only=True)
    del payload["state_dict"]["decoder.conv8.weight"]
    torch.save(payload, path)
    with pytest.raises(CtfaError, match="b.pt: weights do not fit"):
        load_bundle(path)

    payload["config"]["no_such_field"] = 1
    torch.save(payload, path)
    with pytest.raises(CtfaError, match="b.pt: invalid spec or config"):
        load_bundle(path)
