"""Host synchronisation of a training step, and the device-side skip of a non-finite step.

On a GPU every read of a tensor's value on the host (``.item()``, ``float(t)``, ``bool(t)``,
``.tolist()``, a data-dependent output size such as ``nonzero``) waits for every kernel queued
before it, so a step that reads values stalls the GPU that many times. These tests count such
reads in one step on CPU, where the same code runs the same ops: :class:`SyncCounter` sees
every aten op (a ``TorchDispatchMode``) and ``.tolist()`` (patched, as it does not dispatch).

What cannot be seen on CPU: a device-to-host copy (``.cpu()``) is free there; none is made in
the step (``grep -n "\\.cpu()" ctfa_cli/training ctfa_cli/objectives`` finds none).
"""

from __future__ import annotations

import copy
import math
import traceback
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import default_collate

import ctfa_cli.training.step as step_module
from ctfa_cli.datasets.datadir import DataDir
from ctfa_cli.model.network import CTFANetwork
from ctfa_cli.objectives.cam import (
    _multinomial_without_replacement,
    box_mask,
    checked_boxes,
    scale_box,
)
from ctfa_cli.training.data import TrainChips, check_crop_box
from ctfa_cli.training.loop import _Meter, train_step
from ctfa_cli.training.optim import build_optimizer
from ctfa_cli.training.step import CTFAStep
from kernels.bilateral import lattice
from kernels.constants import device_constant
from tests.training.helpers import tiny_config

REPO = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
GATE = 1  # steps 0 and 1 are warm-up; step 2 is past the gate
# Ops that read a value on the host: directly, or inside their kernel (multinomial checks its
# input, unique/masked_select/nonzero have data-dependent sizes, is_nonzero is bool(t)).
SYNC_OPS = {"aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::nonzero",
            "aten::masked_select", "aten::multinomial", "aten::_unique", "aten::_unique2",
            "aten::unique_dim", "aten::unique_consecutive"}


class SyncCounter(TorchDispatchMode):
    """Record ``(op, file:line)`` of every host read made inside the ``with`` block."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[str, str]] = []
        self.made: set[tuple[str, str]] = set()  # (file, function) making host-data tensors

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name == "aten::lift_fresh":  # torch.tensor(host data)
            self.made.add(_caller(function=True))
        # x[bool_mask] is aten::index with a bool index: a nonzero inside.
        boolean_index = name == "aten::index" and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1])
        if name in SYNC_OPS or boolean_index:
            self.reads.append((name, _caller()))
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        real = torch.Tensor.tolist
        counter = self

        def tolist(tensor):
            counter.reads.append(("Tensor.tolist", _caller()))
            return real(tensor)

        self._real_tolist = real
        torch.Tensor.tolist = tolist
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._real_tolist
        return super().__exit__(*exc)


def _caller(*, function: bool = False):
    """The innermost project frame of the current stack: ``path:line``, or with ``function``
    ``(path, function name)``."""
    for frame in reversed(traceback.extract_stack()):
        path = Path(frame.filename)
        if path.is_relative_to(REPO) and path.name != Path(__file__).name:
            where = str(path.relative_to(REPO))
            return (where, frame.name) if function else f"{where}:{frame.lineno}"
    return ("?", "?") if function else "?"


# Where the step may make tensors from host data. On a GPU, torch.tensor(values, device=cuda)
# is a synchronous copy (PyTorch synchronises the stream after a non-pinned copy), which the
# reads above cannot show on CPU; these three make none per step there:
ALLOWED_HOST_TENSORS = {
    ("kernels/constants.py", "device_constant"),  # cached per device off CPU
    ("kernels/bilateral/lattice.py", "filter_on_lattice"),  # a 0-d CPU scalar multiplier
    ("kernels/par/reference.py", "position_softmax"),  # CPU PAR; CUDA copies it once
}


class Run:
    """The pieces :func:`ctfa_cli.training.loop._train` builds, on a tiny model."""

    def __init__(self, datadir: Path, **overrides) -> None:
        data = DataDir.open(datadir)
        self.cfg = tiny_config(seg_gate_iters=GATE, **overrides)
        torch.manual_seed(0)
        self.model = CTFANetwork.from_config(data.spec, self.cfg).train()
        self.forward = CTFAStep(self.model, data.spec, self.cfg)
        self.optimizer = build_optimizer(self.model, self.cfg)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.meter = _Meter(0, 0, CPU)
        chips = TrainChips(data, self.cfg)
        self.batch = default_collate([chips[(0, i)] for i in range(self.cfg.batch_size)])

    def step(self, step: int) -> None:
        torch.manual_seed(step)
        train_step(self.forward, self.batch, step, model=self.model, optimizer=self.optimizer,
                   params=self.params, meter=self.meter, cfg=self.cfg, world_size=1,
                   device=CPU)


@pytest.fixture(scope="module")
def warm(datadir):
    """A run after two steps (the optimiser has its state), for each energy filter."""
    runs = {}
    for energy_filter in ("exact", "lattice"):
        run = Run(datadir, energy_filter=energy_filter)
        run.step(0)
        run.step(1)
        runs[energy_filter] = run
    return runs


def test_a_step_past_the_gate_reads_nothing_on_the_host_with_the_exact_filter(warm):
    # Budget 0: the whole step — forward with the CAMs, local crops, PAR refinement and the
    # dense-CRF energy (exact filter: the Triton kernel on CUDA), backward, clipping, the
    # finite check, the optimiser, the EMA teacher and the meter — is queued without a read.
    run = warm["exact"]
    with SyncCounter() as counter:
        run.step(GATE + 1)
    assert counter.reads == []
    assert counter.made <= ALLOWED_HOST_TENSORS, counter.made - ALLOWED_HOST_TENSORS
    assert set(run.forward(run.batch, GATE + 1).terms) >= {"seg", "reg", "joint"}  # past it


def test_the_lattice_filter_reads_two_sizes_per_call_as_on_a_gpu(warm, monkeypatch):
    # Budget 2, both in the permutohedral lattice, whose size depends on the data: one
    # .tolist() of the features' range (whether the packed keys fit in 63 bits, an error
    # otherwise) and the number of distinct keys (torch.unique's output size). This is the
    # vertex numbering a GPU runs (sorting); on a GPU the batch is one lattice, as here (the
    # 32×32 energy maps of 2 images).
    monkeypatch.setattr(lattice, "_number_vertices", lattice._sorted_vertices)
    run = warm["lattice"]
    with SyncCounter() as counter:
        run.step(GATE + 1)
    assert sorted(op for op, _ in counter.reads) == ["Tensor.tolist", "aten::_unique2"]
    assert counter.made <= ALLOWED_HOST_TENSORS, counter.made - ALLOWED_HOST_TENSORS
    assert {where.split(":")[0] for _, where in counter.reads} == \
        {"kernels/bilateral/lattice.py"}


def test_on_cpu_the_lattice_probes_its_hash_table(warm):
    # The CPU numbering (a hash table, faster there) reads the number of keys still moving
    # after each probing round: free on CPU, where nothing is queued. Every read is in the
    # lattice: the probing rounds (nonzero) and the same one .tolist().
    run = warm["lattice"]
    with SyncCounter() as counter:
        run.step(GATE + 1)
    ops = [op for op, _ in counter.reads]
    assert {where.split(":")[0] for _, where in counter.reads} == \
        {"kernels/bilateral/lattice.py"}
    assert ops.count("Tensor.tolist") == 1 and set(ops) == {"aten::nonzero", "Tensor.tolist"}


@pytest.mark.parametrize(("batch", "channels", "size"), [(2, 6, 32), (4, 5, 48), (1, 3, 40)])
def test_both_vertex_numberings_filter_alike(batch, channels, size):
    generator = torch.Generator().manual_seed(size)
    images = (torch.rand(batch, 3, size, size, generator=generator) * 255).round()
    images[:, :, : size // 2] = 128.0  # a flat half: many pixels share vertices
    values = torch.rand(batch, channels, size, size, generator=generator)
    keys = {}
    for numbering in (lattice._hashed_vertices, lattice._sorted_vertices):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(lattice, "_number_vertices", numbering)
            keys[numbering.__name__] = lattice.lattice_bilateral_filter(images, values, 15.0,
                                                                        100.0)
    assert torch.equal(keys["_hashed_vertices"], keys["_sorted_vertices"])


def test_a_log_step_reads_the_meter_once(warm):
    run = Run.__new__(Run)
    run.__dict__.update(warm["exact"].__dict__)
    run.meter = _Meter(2, 0, CPU)
    run.step(GATE + 1)
    with SyncCounter() as counter:
        record = run.meter.flush(3, run.optimizer, images_per_step=2)
    assert [op for op, _ in counter.reads] == ["Tensor.tolist"]
    assert record["skipped"] == 0 and record["step"] == 3


def _nan_cls_loss(monkeypatch):
    real = step_module.cls_loss
    monkeypatch.setattr(step_module, "cls_loss",
                        lambda logits, labels: real(logits, labels) * float("nan"))


def _snapshot(run: Run) -> dict:
    return {"model": copy.deepcopy(run.model.state_dict()),
            "optimizer": copy.deepcopy(run.optimizer.state_dict()["state"])}


def test_a_non_finite_step_changes_nothing_and_is_counted(datadir, monkeypatch):
    run = Run(datadir, energy_filter="exact")
    run.step(0)  # a finite step: the optimiser's state exists and is not zero
    before = _snapshot(run)
    assert any(state["exp_avg"].abs().sum() > 0 for state in before["optimizer"].values())
    _nan_cls_loss(monkeypatch)
    with SyncCounter() as counter:
        run.step(GATE + 1)
    assert counter.reads == []  # the skip is decided on the device
    after = _snapshot(run)
    # Every weight (the EMA teacher proj_head_t included) bit-identical …
    assert before["model"].keys() == after["model"].keys()
    assert any(k.startswith("proj_head_t.") for k in after["model"])
    for name, value in before["model"].items():
        assert torch.equal(value, after["model"][name]), name
    # … and every optimiser tensor: exp_avg, exp_avg_sq and the step count (1, not 2).
    assert before["optimizer"].keys() == after["optimizer"].keys()
    for index, state in before["optimizer"].items():
        assert state.keys() == after["optimizer"][index].keys()
        for name, value in state.items():
            assert torch.equal(value, after["optimizer"][index][name]), (index, name)
        assert float(after["optimizer"][index]["step"]) == 1.0
    record = run.meter.flush(2, run.optimizer, images_per_step=2)
    assert record["skipped"] == 1
    assert math.isfinite(record["loss"])  # step 0's loss alone: the skipped NaN is left out


def test_a_finite_step_equals_the_plain_update(datadir):
    # skip=0.0, the masked teacher update and the device meter give the plain AdamW step and
    # EMA bit for bit (results on CPU are unchanged by the sync-free step).
    run = Run(datadir, energy_filter="exact")
    run.step(0)
    plain_model = copy.deepcopy(run.model)
    plain_opt = build_optimizer(plain_model, run.cfg)
    plain_opt.load_state_dict(copy.deepcopy(run.optimizer.state_dict()))
    plain_step = CTFAStep(plain_model, run.forward.spec, run.cfg)
    params = [p for p in plain_model.parameters() if p.requires_grad]

    run.step(GATE + 1)

    torch.manual_seed(GATE + 1)
    plain_opt.zero_grad(set_to_none=True)
    out = plain_step(run.batch, GATE + 1)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(params, run.cfg.grad_clip)
    plain_opt.global_step = GATE + 1
    plain_opt.step()
    plain_model.ema_update()

    for (name, a), b in zip(run.model.state_dict().items(), plain_model.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    for index, state in run.optimizer.state_dict()["state"].items():
        for name, value in state.items():
            assert torch.equal(value, plain_opt.state_dict()["state"][index][name]), name


def test_the_meter_means_cover_applied_steps_only():
    meter = _Meter(0, 3, CPU)

    class Out:
        def __init__(self, loss, seg=None):
            self.loss = torch.tensor(loss)
            self.terms = {"cls": torch.tensor(loss / 2)}
            if seg is not None:
                self.terms["seg"] = torch.tensor(seg)

    meter.add(Out(1.0), torch.tensor(True))
    meter.add(Out(float("nan")), torch.tensor(False))
    meter.add(Out(3.0, seg=0.25), torch.tensor(True))
    optimizer = type("Opt", (), {"param_groups": [{"lr": 0.5}]})()
    record = meter.flush(3, optimizer, images_per_step=4)
    # loss (1 + 3) / 2, cls (0.5 + 1.5) / 2, seg 0.25 / 1; 3 resumed + 1 skipped.
    assert (record["loss"], record["cls"], record["seg"]) == (2.0, 1.0, 0.25)
    assert (record["skipped"], record["skipped_fraction"]) == (4, round(4 / 3, 6))
    meter.add(Out(float("nan")), torch.tensor(False))
    record = meter.flush(4, optimizer, images_per_step=4)
    assert "loss" not in record and record["skipped"] == 5


def test_the_sync_free_draw_is_torch_multinomial():
    cases = [(2, 1225, 8), (1, 9, 1), (4, 4096, 2), (3, 100, 8), (3, 50, 1)]  # (B, N, k)
    for seed, (b, n, k) in enumerate(cases):
        weights = (torch.rand(b, n, generator=torch.Generator().manual_seed(seed)) < 0.4)
        weights = weights.float()
        weights[:, :k] = 1
        expected = torch.multinomial(weights, k, replacement=False,
                                     generator=torch.Generator().manual_seed(seed))
        drawn = _multinomial_without_replacement(weights, k,
                                                 torch.Generator().manual_seed(seed))
        assert torch.equal(drawn, expected)


def test_crop_boxes_are_checked_when_made_and_trusted_in_the_step():
    assert torch.equal(check_crop_box(torch.tensor([0, 64, 3, 60]), 64),
                       torch.tensor([0, 64, 3, 60]))
    for bad in ([-1, 64, 0, 64], [0, 65, 0, 64], [10, 5, 0, 64], [0, 64, 0, -2]):
        with pytest.raises(ValueError, match="not inside a 64-px crop"):
            check_crop_box(torch.tensor(bad), 64)
    negative = torch.tensor([[-1, 3, 0, 3]])
    with pytest.raises(ValueError, match="negative"):
        box_mask(negative, 6, 6)
    with checked_boxes():
        box_mask(negative, 6, 6)  # trusted: no host read, no check
    with pytest.raises(ValueError, match="negative"):
        box_mask(negative, 6, 6)  # the trust ends with the block


def test_device_constants_are_made_once_per_device():
    # The meta device stands in for a GPU: no data, but a real device other than the CPU.
    first = device_constant([0.5, 2.0], dtype=torch.float32, device="meta")
    assert first is device_constant((0.5, 2.0), dtype=torch.float32, device="meta")
    assert (first.shape, first.dtype, first.device.type) == ((2,), torch.float32, "meta")
    assert device_constant([0.5, 2.0], dtype=torch.float64, device="meta") is not first
    scalar = device_constant(0.25, dtype=torch.float32, device="meta")
    assert scalar.shape == () and scalar is device_constant(0.25, dtype=torch.float32,
                                                            device="meta")
    # On CPU a fresh tensor each time (callers there may write into it), with the values.
    cpu = device_constant([[1, 2], [3, 4]], dtype=torch.int32, device="cpu")
    assert torch.equal(cpu, torch.tensor([[1, 2], [3, 4]], dtype=torch.int32))
    assert cpu is not device_constant([[1, 2], [3, 4]], dtype=torch.int32, device="cpu")


def test_scale_box_rounds_starts_down_and_ends_up():
    # 320-px crop → 20×20 features: start 17 → 17·20/320 = 1.0625 → 1, end 300 → 18.75 → 19;
    # 100-px wide map to 7: 33·7/100 = 2.31 → 2, 99·7/100 = 6.93 → 7.
    box = torch.tensor([[17, 300, 33, 99], [0, 320, 0, 100]], dtype=torch.int16)
    assert torch.equal(scale_box(box, (320, 100), (20, 7)),
                       torch.tensor([[1, 19, 2, 7], [0, 20, 0, 7]]))
