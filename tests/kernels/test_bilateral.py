"""Bilateral filter: lattice vs the official outputs, exact paths vs the float64 reference."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from ctfa_cli.errors import CtfaError, CtfaUsageError
from kernels.bilateral import PATH_ENV_VAR, bilateral_filter
from kernels.bilateral import lattice as lattice_module
from kernels.bilateral.bench import lattice_error
from kernels.bilateral.exact import exact_bilateral_filter
from kernels.bilateral.reference import bilateral_filter_reference
from tests.kernels.errors import assert_close_report

PARITY = Path(__file__).resolve().parents[1] / "data" / "parity"
REPO = Path(__file__).resolve().parents[2]
# Odd shapes (B, K, H, W): batch 1 and 3, K = 1 and 7. Kept small because the float64
# reference materialises [B, N, N].
ODD_SHAPES = [(1, 7, 29, 45), (3, 1, 19, 23), (3, 7, 13, 31)]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _no_forced_path(monkeypatch):
    monkeypatch.delenv(PATH_ENV_VAR, raising=False)


def random_inputs(shape, seed=0):
    batch, channels, height, width = shape
    generator = torch.Generator().manual_seed(seed)
    images = 255 * torch.rand(batch, 3, height, width, generator=generator)
    values = torch.rand(batch, channels, height, width, generator=generator)
    return images, values


@pytest.mark.parametrize(
    "case", sorted(PARITY.glob("bilateral_filter__*.npz")), ids=lambda path: path.stem
)
def test_lattice_matches_official_outputs(case):
    data = np.load(case)
    meta = json.loads(str(data["meta"]))
    out = bilateral_filter(
        torch.from_numpy(data["in_images"]),
        torch.from_numpy(data["in_ins"]),
        meta["sigma_rgb"],
        meta["sigma_xy"],
    )
    assert out.dtype == torch.float32
    assert_close_report(out, data["out_outs"], rtol=1e-4, atol=1e-5, name=case.stem)


@pytest.mark.parametrize("shape", ODD_SHAPES, ids=str)
def test_exact_torch_matches_reference(shape):
    images, values = random_inputs(shape)
    expected = bilateral_filter_reference(images, values, 15.0, 7.0)
    out = bilateral_filter(images, values, 15.0, 7.0, method="exact", path="torch")
    assert out.dtype == torch.float32 and out.shape == values.shape
    assert_close_report(out, expected, rtol=1e-5, atol=1e-5, name=f"torch exact {shape}")


def test_exact_torch_chunks_do_not_change_the_result(monkeypatch):
    images, values = random_inputs((2, 3, 17, 19))
    whole = exact_bilateral_filter(images, values, 20.0, 5.0)
    monkeypatch.setattr("kernels.bilateral.exact._BLOCK_ELEMENTS", 7 * 17 * 19)  # 7-row blocks
    chunked = exact_bilateral_filter(images, values, 20.0, 5.0)
    assert_close_report(chunked, whole, rtol=1e-6, atol=1e-6, name="chunked vs whole")


def test_reference_reads_like_the_maths():
    images, values = random_inputs((1, 2, 3, 4))
    features = torch.stack(
        [
            torch.tensor(
                [i / 3.0, j / 3.0, *(images[0, :, j, i].double() / 10.0).tolist()],
                dtype=torch.float64,
            )
            for j in range(3)
            for i in range(4)
        ]
    )  # pixel (row j, column i), x first
    weights = torch.exp(-0.5 * torch.cdist(features, features) ** 2)
    expected = (weights @ values[0].double().reshape(2, -1).T).T.reshape(1, 2, 3, 4)
    out = bilateral_filter_reference(images, values, 10.0, 3.0)
    assert_close_report(out, expected, rtol=1e-12, atol=1e-12, name="reference vs naive")


def test_triton_kernel_in_interpreter_matches_reference():
    """Triton reads TRITON_INTERPRET when the kernel module is imported: use a fresh process."""
    script = textwrap.dedent(
        """
        import json, torch
        from kernels.bilateral import bilateral_filter
        from kernels.bilateral.reference import bilateral_filter_reference
        from tests.kernels.test_bilateral import random_inputs
        results = []
        for shape in [(1, 7, 9, 13), (3, 1, 7, 11), (2, 17, 5, 5)]:
            images, values = random_inputs(shape)
            out = bilateral_filter(images, values, 15.0, 4.0, method="exact", path="triton")
            expected = bilateral_filter_reference(images, values, 15.0, 4.0)
            results.append({"shape": shape, "out": out.tolist(), "expected": expected.tolist()})
        print(json.dumps(results))
        """
    )
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    env.pop(PATH_ENV_VAR, None)
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for result in json.loads(done.stdout.strip().splitlines()[-1]):
        assert_close_report(
            np.array(result["out"]),
            np.array(result["expected"]),
            rtol=1e-5,
            atol=1e-5,
            name=f"triton (interpreter) {result['shape']}",
        )


def test_triton_path_refuses_cpu_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    images, values = random_inputs((1, 1, 4, 4))
    with pytest.raises(CtfaUsageError, match="CUDA"):
        bilateral_filter(images, values, 15.0, 4.0, method="exact", path="triton")


def test_environment_variable_forces_a_path_of_the_requested_method(monkeypatch):
    images, values = random_inputs((2, 2, 6, 7))
    reference = bilateral_filter_reference(images, values, 15.0, 4.0).float()
    chunked = exact_bilateral_filter(images, values, 15.0, 4.0)
    assert not torch.equal(reference, chunked)  # so the checks below can tell them apart

    monkeypatch.setenv(PATH_ENV_VAR, "reference")
    assert torch.equal(bilateral_filter(images, values, 15.0, 4.0, method="exact"), reference)
    # An explicit path wins over the variable.
    assert torch.equal(
        bilateral_filter(images, values, 15.0, 4.0, method="exact", path="torch"), chunked
    )
    # A path of the other method does not turn a lattice call into an exact one.
    lattice = lattice_module.lattice_bilateral_filter(images, values, 15.0, 4.0)
    assert torch.equal(bilateral_filter(images, values, 15.0, 4.0), lattice)

    monkeypatch.setenv(PATH_ENV_VAR, "lattice")  # not an exact path: the device default (torch)
    assert torch.equal(bilateral_filter(images, values, 15.0, 4.0, method="exact"), chunked)

    monkeypatch.setenv(PATH_ENV_VAR, "fast")
    with pytest.raises(CtfaUsageError, match=PATH_ENV_VAR):
        bilateral_filter(images, values, 15.0, 4.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "approximate"}, "method"),
        ({"method": "exact", "path": "lattice"}, "does not implement"),
        ({"path": "torch"}, "does not implement"),
    ],
)
def test_bad_method_or_path_is_refused(kwargs, match):
    images, values = random_inputs((1, 1, 4, 4))
    with pytest.raises(CtfaUsageError, match=match):
        bilateral_filter(images, values, 15.0, 4.0, **kwargs)


@pytest.mark.parametrize(
    ("images", "values", "match"),
    [
        (torch.zeros(1, 4, 5, 5), torch.zeros(1, 2, 5, 5), r"\[N, 3, H, W\]"),
        (torch.zeros(1, 3, 5, 5), torch.zeros(2, 2, 5, 5), "matching"),
        (torch.zeros(1, 3, 5, 5), torch.zeros(1, 2, 5, 6), "matching"),
        (torch.zeros(1, 3, 5, 5), torch.zeros(1, 2, 5, 5, dtype=torch.int64), "floating"),
    ],
)
def test_bad_inputs_are_refused(images, values, match):
    with pytest.raises(ValueError, match=match):
        bilateral_filter(images, values, 15.0, 4.0)


def test_lattice_filters_each_image_on_its_own(monkeypatch):
    """Images never share lattice vertices, whatever the grouping into hash tables."""
    images, values = random_inputs((3, 7, 19, 23), seed=1)
    batched = bilateral_filter(images, values, 15.0, 8.0)
    one_by_one = torch.cat(
        [bilateral_filter(images[i : i + 1], values[i : i + 1], 15.0, 8.0) for i in range(3)]
    )
    assert lattice_module._images_per_group(images.device, 3, 19 * 23) == 3  # one table
    monkeypatch.setattr(lattice_module, "_images_per_group", lambda *args: 1)
    regrouped = bilateral_filter(images, values, 15.0, 8.0)
    assert_close_report(one_by_one, batched, rtol=1e-6, atol=1e-6, name="one by one")
    assert_close_report(regrouped, batched, rtol=1e-6, atol=1e-6, name="one table per image")


def test_lattice_refuses_bandwidths_too_small_to_pack():
    images, values = random_inputs((2, 1, 8, 8))
    with pytest.raises(CtfaError, match="sigma"):
        bilateral_filter(images * 1e6, values, 1e-3, 1e-3)


def test_hash_table_probes_past_collisions():
    """Keys sharing a home slot get distinct slots; absent keys stop at an empty slot."""
    bits = 4
    keys = torch.arange(0, 400, dtype=torch.int64)
    homes = lattice_module._slots(keys, bits)
    colliding = keys[homes == homes[0]][:5]  # five keys hashed to one slot
    inserted = torch.cat([colliding, colliding[:2]])  # with duplicates
    table, slots = lattice_module._insert(inserted, bits)
    assert torch.equal(table[slots], inserted)
    assert slots[:5].unique().numel() == 5 and torch.equal(slots[5:], slots[:2])
    found = lattice_module._find(table, torch.cat([colliding, torch.tensor([401, 402])]), bits)
    assert torch.equal(found[:5], slots[:5])
    assert torch.equal(table[found[5:]], torch.full((2,), lattice_module._EMPTY))


def test_lattice_approximation_error_is_as_documented():
    """Guards the figures in kernels/bilateral/lattice.py's docstring (smooth 40×40 row)."""
    error = lattice_error((2, 6, 40, 40), seed=0, smooth=True)
    assert 0.45 < error["scale"] < 0.55
    assert 0.45 < error["ratio_mean"] < 0.55
    assert error["rel_l2_scaled"] < 0.09


@CUDA
@pytest.mark.parametrize("path", ["lattice", "torch", "triton"])
def test_gpu_paths_match_cpu(path):
    images, values = random_inputs((3, 7, 29, 45))
    method = "lattice" if path == "lattice" else "exact"
    expected = (
        bilateral_filter(images, values, 15.0, 7.0)
        if path == "lattice"
        else bilateral_filter_reference(images, values, 15.0, 7.0)
    )
    out = bilateral_filter(images.cuda(), values.cuda(), 15.0, 7.0, method=method, path=path)
    assert out.device.type == "cuda"
    assert_close_report(out.cpu(), expected, rtol=1e-4, atol=1e-5, name=f"cuda {path}")

def test_channels_are_filtered_independently():
    """Channels travel in pairs (an odd count gets a zero partner): any split of the channels
    gives the same bits, so neither the pairing nor the padding leaks between channels."""
    images, values = random_inputs((2, 7, 13, 17))
    whole = lattice_module.lattice_bilateral_filter(images, values, 15.0, 6.0)
    split = torch.cat(
        [
            lattice_module.lattice_bilateral_filter(images, values[:, :3], 15.0, 6.0),
            lattice_module.lattice_bilateral_filter(images, values[:, 3:4], 15.0, 6.0),
            lattice_module.lattice_bilateral_filter(images, values[:, 4:], 15.0, 6.0),
        ],
        dim=1,
    )
    assert whole.shape == values.shape and whole.is_contiguous()
    assert torch.equal(whole.view(torch.int32), split.view(torch.int32))


def test_grouping_images_changes_no_bit(monkeypatch):
    """One lattice per image (the CPU default for training shapes) or one for the batch."""
    images, values = random_inputs((4, 2, 11, 9), seed=1)
    per_image = torch.cat(
        [
            lattice_module.lattice_bilateral_filter(images[i : i + 1], values[i : i + 1], 20.0, 4.0)
            for i in range(4)
        ]
    )
    monkeypatch.setattr(lattice_module, "_CPU_KEYS_PER_TABLE", 1 << 30)
    assert lattice_module._images_per_group(images.device, 4, 11 * 9) == 4
    batched = lattice_module.lattice_bilateral_filter(images, values, 20.0, 4.0)
    monkeypatch.setattr(lattice_module, "_CPU_KEYS_PER_TABLE", 2 * 6 * 11 * 9)
    assert lattice_module._images_per_group(images.device, 4, 11 * 9) == 2
    pairs_of_images = lattice_module.lattice_bilateral_filter(images, values, 20.0, 4.0)
    assert torch.equal(batched.view(torch.int32), per_image.view(torch.int32))
    assert torch.equal(pairs_of_images.view(torch.int32), per_image.view(torch.int32))
