"""Device discipline without a GPU: which CUDA device each process makes current.

``torch.cuda.set_device`` and ``torch.cuda.is_available`` are replaced by recorders, so these
tests check the decisions (which index, and that it is selected before the model reaches the
device); that a kernel then really runs on the second GPU needs two GPUs.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ctfa_cli.inference import predict
from ctfa_cli.inference.predict import BundlePredictor, current_index, make_current
from ctfa_cli.training import loop


@pytest.fixture
def selected(monkeypatch):
    """Pretend CUDA is available; record every ``torch.cuda.set_device`` argument."""
    calls: list = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    return calls


@pytest.mark.parametrize(("device", "index"), [
    ("cpu", None), ("cuda", 0), ("cuda:0", 0), ("cuda:1", 1), ("cuda:7", 7),
])
def test_current_index(device, index):
    assert current_index(torch.device(device)) == index


def test_cpu_selects_nothing(selected):
    make_current("cpu")
    assert selected == []


def test_single_process_training_on_cuda_1_makes_it_current(selected):
    proc = loop._start_process("cuda:1")
    assert (proc.rank, proc.world_size, proc.device) == (0, 1, torch.device("cuda", 1))
    assert selected == [1]


def test_single_process_training_on_cpu_selects_nothing(selected):
    proc = loop._start_process("cpu")
    assert proc.device == torch.device("cpu")
    assert selected == []


def test_every_torchrun_training_rank_makes_its_local_gpu_current(selected, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")  # second node, second GPU
    monkeypatch.setattr(loop.dist, "is_initialized", lambda: True)  # no process group here
    proc = loop._start_process("cuda")
    assert (proc.rank, proc.world_size, proc.device) == (3, 4, torch.device("cuda", 1))
    assert [torch.device(d).index for d in selected] == [1]


def test_predict_under_torchrun_resolves_and_selects_the_local_gpu(selected, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    device = predict.resolve_device("auto")
    assert device == torch.device("cuda", 1)
    make_current(device)
    assert selected == [1]


class _Selected(Exception):
    pass


def test_the_predictor_selects_its_gpu_before_moving_the_model(monkeypatch):
    # set_device raises: had the model been moved first, .to("cuda:1") would fail with a
    # different (CUDA) error on this machine.
    def refuse(index):
        raise _Selected(index)

    monkeypatch.setattr(torch.cuda, "set_device", refuse)
    bundle = SimpleNamespace(spec=None, model=torch.nn.Linear(1, 1))
    with pytest.raises(_Selected) as raised:
        BundlePredictor(bundle, "cuda:1")
    assert raised.value.args == (1,)


def test_loading_a_checkpoint_selects_its_gpu_before_loading(monkeypatch, tmp_path):
    def refuse(index):
        raise _Selected(index)

    monkeypatch.setattr(torch.cuda, "set_device", refuse)
    with pytest.raises(_Selected) as raised:
        BundlePredictor.from_checkpoint(tmp_path / "absent.pt", "cuda:2")
    assert raised.value.args == (2,)
