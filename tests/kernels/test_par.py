"""PAR: every path against the reference formulation and the official golden vectors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import kernels.par as par_module
from ctfa_cli.errors import CtfaUsageError
from kernels.par import PATH_ENV_VAR, par
from kernels.par.reference import DEFAULT_DILATIONS, par_reference
from tests.kernels.errors import assert_close_report

PARITY_DIR = Path(__file__).resolve().parents[1] / "data" / "parity"
PARITY_CASES = sorted(PARITY_DIR.glob("par__*.npz"))

# (batch, classes, height, width, mask_height, mask_width): odd sizes, masks at full or half size.
ODD_CASES = [
    (1, 1, 57, 91, 57, 91),
    (3, 7, 31, 45, 15, 22),
    (1, 7, 33, 19, 33, 19),
    (3, 1, 29, 45, 14, 22),
]
# Smaller for Triton's interpreter, which pays per program and per op.
TRITON_CASES = [
    (1, 1, 57, 91, 28, 45),
    (3, 7, 23, 31, 23, 31),
]


def _inputs(batch, classes, height, width, mask_height, mask_width, dtype=torch.float32):
    generator = torch.Generator().manual_seed(batch * 1000 + classes * 100 + height)
    images = torch.rand(batch, 3, height, width, generator=generator, dtype=dtype)
    logits = torch.randn(batch, classes, mask_height, mask_width, generator=generator, dtype=dtype)
    return images, torch.softmax(3 * logits, dim=1)


def _case_id(case) -> str:
    b, k, h, w, mh, mw = case
    return f"b{b}_k{k}_{h}x{w}_masks{mh}x{mw}"


def _load_parity(path: Path):
    case = np.load(path)
    meta = json.loads(str(case["meta"]))
    images, masks = torch.from_numpy(case["in_imgs"]), torch.from_numpy(case["in_masks"])
    return images, masks, meta, case["out_masks"]


@pytest.mark.parametrize("case", ODD_CASES, ids=_case_id)
def test_fused_cpu_matches_reference(case):
    images, masks = _inputs(*case)
    expected = par_reference(images, masks)
    actual = par(images, masks, path="cpu")
    assert actual.shape == expected.shape == (case[0], case[1], case[2], case[3])
    assert_close_report(actual, expected, rtol=1e-4, atol=1e-6, name=f"cpu {_case_id(case)}")


def test_fused_cpu_float64_matches_reference_closely():
    images, masks = _inputs(2, 3, 21, 17, 11, 9, dtype=torch.float64)
    actual = par(images, masks, path="cpu")
    assert actual.dtype == torch.float64
    assert_close_report(actual, par_reference(images, masks), rtol=1e-10, atol=1e-12, name="fp64")


def test_fused_cpu_other_dilations_and_iterations():
    images, masks = _inputs(2, 4, 25, 30, 25, 30)
    expected = par_reference(images, masks, dilations=(1, 3, 40), num_iter=3)
    actual = par(images, masks, (1, 3, 40), 3, path="cpu")
    assert_close_report(actual, expected, rtol=1e-4, atol=1e-6, name="dilations (1, 3, 40)")


@pytest.mark.parametrize("path", ["reference", "cpu"])
@pytest.mark.parametrize("parity", PARITY_CASES, ids=lambda p: p.stem)
def test_golden_vectors_through_public_function(parity, path):
    images, masks, meta, expected = _load_parity(parity)
    actual = par(images, masks, meta["dilations"], meta["num_iter"], path=path)
    assert_close_report(actual, expected, rtol=1e-4, atol=1e-5, name=f"{parity.stem} {path}")


def test_golden_vector_cases_present():
    assert len(PARITY_CASES) == 2


def test_channel_sum_grows_by_the_official_quirk():
    images, masks = _inputs(1, 5, 31, 27, 31, 27)
    out = par(images, masks, path="cpu")
    ratio = out.sum(dim=1) / masks.sum(dim=1)
    torch.testing.assert_close(ratio, torch.full_like(ratio, 1.01**10), rtol=1e-5, atol=0)


def test_inputs_are_not_modified():
    images, masks = _inputs(2, 3, 20, 24, 20, 24)
    images_before, masks_before = images.clone(), masks.clone()
    par(images, masks, path="cpu")
    assert torch.equal(images, images_before) and torch.equal(masks, masks_before)


def test_reference_is_differentiable():
    images, masks = _inputs(1, 2, 4, 5, 3, 4, dtype=torch.float64)
    images.requires_grad_(True)
    masks.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda i, m: par(i, m, (1, 2), 2, path="reference"), (images, masks), fast_mode=True
    )


def test_fast_path_refuses_autograd_but_runs_under_no_grad():
    images, masks = _inputs(1, 2, 9, 10, 9, 10)
    masks.requires_grad_(True)
    with pytest.raises(RuntimeError, match="no backward"):
        par(images, masks, path="cpu")
    with torch.no_grad():
        assert par(images, masks, path="cpu").shape == (1, 2, 9, 10)


def test_bad_shapes_raise():
    images, masks = _inputs(2, 3, 8, 8, 8, 8)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        par(images[:, :2], masks)
    with pytest.raises(ValueError, match="B=2"):
        par(images, masks[:1])


class _Spy:
    def __init__(self):
        self.calls = 0

    def __call__(self, images, masks, dilations, num_iter):
        self.calls += 1
        return masks


@pytest.fixture
def spies(monkeypatch):
    """Replace the reference and fused implementations with call counters."""
    import kernels.par.fused_cpu as fused_module

    reference, fused = _Spy(), _Spy()
    monkeypatch.setattr(par_module, "par_reference", reference)
    monkeypatch.setattr(fused_module, "par_fused", fused)
    monkeypatch.delenv(PATH_ENV_VAR, raising=False)
    return reference, fused


def test_default_path_on_cpu_is_fused(spies):
    reference, fused = spies
    par(*_inputs(1, 1, 4, 4, 4, 4))
    assert (reference.calls, fused.calls) == (0, 1)


def test_env_var_forces_the_path(spies, monkeypatch):
    reference, fused = spies
    monkeypatch.setenv(PATH_ENV_VAR, "reference")
    par(*_inputs(1, 1, 4, 4, 4, 4))
    assert (reference.calls, fused.calls) == (1, 0)
    par(*_inputs(1, 1, 4, 4, 4, 4), path="cpu")  # the argument wins over the variable
    assert (reference.calls, fused.calls) == (1, 1)


def test_unknown_path_is_a_usage_error(spies, monkeypatch):
    with pytest.raises(CtfaUsageError, match="path='gpu'"):
        par(*_inputs(1, 1, 4, 4, 4, 4), path="gpu")
    monkeypatch.setenv(PATH_ENV_VAR, "fast")
    with pytest.raises(CtfaUsageError, match=PATH_ENV_VAR):
        par(*_inputs(1, 1, 4, 4, 4, 4))


def test_triton_on_cpu_tensors_without_interpreter_is_a_usage_error(monkeypatch):
    import kernels.par.triton_kernel as triton_module

    monkeypatch.setattr(triton_module, "INTERPRETED", False)
    with pytest.raises(CtfaUsageError, match="TRITON_INTERPRET"):
        par(*_inputs(1, 1, 4, 4, 4, 4), path="triton")


# Runs in a fresh interpreter: TRITON_INTERPRET must be set before triton builds the kernels.
_TRITON_SCRIPT = """
import sys, numpy as np, torch
from kernels.par import par
cases = np.load(sys.argv[1])
names = sorted({key.rsplit("/", 1)[0] for key in cases.files})
outputs = {}
for name in names:
    dilations = [int(d) for d in cases[name + "/dilations"]]
    out = par(torch.from_numpy(cases[name + "/images"]), torch.from_numpy(cases[name + "/masks"]),
              dilations, int(cases[name + "/num_iter"]), path="triton")
    outputs[name] = out.numpy()
np.savez(sys.argv[2], **outputs)
"""


@pytest.fixture(scope="module")
def triton_interpreted(tmp_path_factory) -> dict:
    """Inputs, reference outputs and Triton-interpreter outputs of every Triton test case."""
    tmp = tmp_path_factory.mktemp("par_triton")
    cases = {}
    for case in TRITON_CASES:
        images, masks = _inputs(*case)
        expected = par_reference(images, masks)
        cases[_case_id(case)] = (images, masks, DEFAULT_DILATIONS, 10, expected)
    for parity in PARITY_CASES[:1]:  # the 96×96 case costs the interpreter twice as much
        images, masks, meta, expected = _load_parity(parity)
        cases[parity.stem] = (images, masks, meta["dilations"], meta["num_iter"], expected)
    arrays = {}
    for name, (images, masks, dilations, num_iter, _) in cases.items():
        arrays.update({
            f"{name}/images": images.numpy(), f"{name}/masks": masks.numpy(),
            f"{name}/dilations": np.asarray(dilations), f"{name}/num_iter": np.asarray(num_iter),
        })  # fmt: skip
    np.savez(tmp / "in.npz", **arrays)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop(PATH_ENV_VAR, None)
    result = subprocess.run(
        [sys.executable, "-c", _TRITON_SCRIPT, str(tmp / "in.npz"), str(tmp / "out.npz")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = np.load(tmp / "out.npz")
    return {name: (outputs[name], case[4]) for name, case in cases.items()}


@pytest.mark.parametrize("case", TRITON_CASES, ids=_case_id)
def test_triton_interpreted_matches_reference(triton_interpreted, case):
    actual, expected = triton_interpreted[_case_id(case)]
    assert_close_report(actual, expected, rtol=1e-4, atol=1e-6, name=f"triton {_case_id(case)}")


@pytest.mark.parametrize("parity", PARITY_CASES[:1], ids=lambda p: p.stem)
def test_triton_interpreted_golden_vectors(triton_interpreted, parity):
    actual, expected = triton_interpreted[parity.stem]
    assert_close_report(actual, expected, rtol=1e-4, atol=1e-5, name=f"{parity.stem} triton")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", ODD_CASES, ids=_case_id)
def test_triton_on_gpu_matches_reference(case):
    images, masks = _inputs(*case)
    expected = par_reference(images.double(), masks.double())
    actual = par(images.cuda(), masks.cuda())  # the default path on CUDA
    assert_close_report(actual.cpu(), expected, rtol=1e-4, atol=1e-6, name=f"gpu {_case_id(case)}")
