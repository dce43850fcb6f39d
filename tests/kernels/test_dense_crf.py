"""Dense-CRF energy loss: official outputs, the reference-defined gradient, device, boxes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kernels.bilateral import PATH_ENV_VAR, bilateral_filter
from kernels.dense_crf import energy_loss
from kernels.dense_crf.energy import _box_mask
from kernels.dense_crf.reference import energy_loss_reference
from tests.kernels.errors import assert_close_report

PARITY = Path(__file__).resolve().parents[1] / "data" / "parity"
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _no_forced_path(monkeypatch):
    monkeypatch.delenv(PATH_ENV_VAR, raising=False)


def random_batch(batch, classes, height, width, seed=0):
    generator = torch.Generator().manual_seed(seed)
    img = torch.randn(batch, 3, height, width, generator=generator)
    logit = 3 * torch.randn(batch, classes, height, width, generator=generator)
    label = torch.randint(0, classes, (batch, height, width), generator=generator).float()
    label[torch.rand(batch, height, width, generator=generator) < 0.1] = 255
    return img, logit, label


def loss_and_grad(img, logit, label, box, **kwargs):
    leaf = logit.detach().clone().requires_grad_(True)
    loss = energy_loss(img, leaf, label, box, **kwargs)
    loss.backward()
    return loss, leaf.grad


@pytest.mark.parametrize(
    "case", sorted(PARITY.glob("energy_loss__*.npz")), ids=lambda path: path.stem
)
def test_lattice_loss_matches_official_outputs(case):
    data = np.load(case)
    meta = json.loads(str(data["meta"]))
    params = {
        k: meta[k] for k in ("mean", "std", "weight", "sigma_rgb", "sigma_xy", "scale_factor")
    }
    loss, grad = loss_and_grad(
        torch.from_numpy(data["in_img"]),
        torch.from_numpy(data["in_logit"]),
        torch.from_numpy(data["in_label"]),
        torch.from_numpy(data["in_img_box"]),
        **params,
    )
    assert loss.shape == (1,) and loss.dtype == torch.float32
    assert_close_report(loss.detach(), data["out_loss"], rtol=1e-4, atol=1e-5, name=case.stem)
    # Gradients are ~1e-6 (weight 1e-7): an absolute 1e-5 would accept anything, so the
    # absolute tolerance is scaled to the gradient's size.
    expected = data["grad_logit"]
    assert_close_report(
        grad,
        expected,
        rtol=1e-4,
        atol=1e-5 * np.abs(expected).max(),
        name=f"{case.stem} grad_logit",
    )


# (batch, classes, height, width, boxes): odd sizes (halved to odd/even mixes), batch 1 and 3,
# boxes inside, past the bounds, negative (counted from the end) and empty.
CASES = [
    (1, 7, 23, 37, None),
    (3, 2, 29, 19, [[0, 29, 0, 19], [3, 40, -10, 19], [5, 5, 0, 19]]),
    (3, 7, 17, 25, [[2, 15, 1, 24], [-9, -1, 0, 30], [0, 17, 4, 20]]),
]


@pytest.mark.parametrize(("batch", "classes", "height", "width", "boxes"), CASES)
def test_exact_method_matches_float64_reference(batch, classes, height, width, boxes):
    img, logit, label = random_batch(batch, classes, height, width)
    box = None if boxes is None else torch.tensor(boxes, dtype=torch.int16)
    loss, grad = loss_and_grad(img, logit, label, box, method="exact", weight=1.0)
    expected_loss, expected_grad = energy_loss_reference(img, logit, label, box, weight=1.0)
    assert_close_report(loss.detach(), expected_loss, rtol=1e-4, atol=0, name="exact loss")
    assert_close_report(
        grad,
        expected_grad,
        rtol=1e-4,
        atol=1e-5 * float(expected_grad.abs().max()),
        name="exact grad_logit",
    )


@pytest.mark.parametrize(("batch", "classes", "height", "width", "boxes"), CASES)
def test_autograd_gives_the_reference_defined_gradient(batch, classes, height, width, boxes):
    """Same filter (the lattice) on both sides: only the loss and its gradient rule differ."""
    img, logit, label = random_batch(batch, classes, height, width, seed=1)
    box = None if boxes is None else torch.tensor(boxes)
    loss, grad = loss_and_grad(img, logit, label, box, weight=1.0)

    def lattice(images, values, sigma_rgb, sigma_xy):
        return bilateral_filter(images.float(), values.float(), sigma_rgb, sigma_xy)

    expected_loss, expected_grad = energy_loss_reference(
        img, logit, label, box, weight=1.0, bilateral=lattice
    )
    assert_close_report(loss.detach(), expected_loss, rtol=1e-5, atol=0, name="lattice loss")
    # The float64 reference rounds img·std + mean differently from float32, which can move a
    # pixel across a lattice simplex boundary: hence an absolute tolerance scaled to the
    # gradient's size (one such pixel was measured at 3e-6 of the maximum).
    assert_close_report(
        grad,
        expected_grad,
        rtol=1e-4,
        atol=1e-5 * float(expected_grad.abs().max()),
        name="lattice grad_logit",
    )


def test_integer_labels_and_missing_box_behave_like_float_labels_and_full_box():
    img, logit, label = random_batch(2, 4, 16, 18)
    full = torch.tensor([[0, 16, 0, 18]] * 2)
    loss, grad = loss_and_grad(img, logit, label, full)
    loss_int, grad_int = loss_and_grad(img, logit, label.long(), None)
    assert torch.equal(loss, loss_int) and torch.equal(grad, grad_int)


def test_ignored_pixels_open_the_gate():
    """Where the label is 255 the gate is 1 whatever the prediction, so the energy changes."""
    img, logit, label = random_batch(1, 3, 12, 12)
    labelled = torch.zeros_like(label)
    ignored = torch.full_like(label, 255.0)
    assert energy_loss(img, logit, ignored, None) < energy_loss(img, logit, labelled, None) < 0


def test_box_mask_follows_python_slicing():
    generator = torch.Generator().manual_seed(3)
    boxes = torch.randint(-12, 14, (20, 4), generator=generator)
    mask = _box_mask(boxes, 20, 9, 11, torch.device("cpu"), torch.float32)
    for index, (h0, h1, w0, w1) in enumerate(boxes.tolist()):
        expected = torch.zeros(9, 11)
        expected[h0:h1, w0:w1] = 1
        assert torch.equal(mask[index], expected), (h0, h1, w0, w1)


def test_no_host_round_trip(monkeypatch):
    """The loss never copies tensors to host memory or numpy (the reference does, twice).

    (The lattice reads a few scalars, such as the key ranges, to size its hash tables.)
    """
    img, logit, label = random_batch(2, 3, 14, 14)
    box = torch.tensor([[0, 14, 0, 14], [2, 12, 1, 13]])

    def refuse(*args, **kwargs):
        raise AssertionError("host round trip")

    monkeypatch.setattr(torch.Tensor, "cpu", refuse)
    monkeypatch.setattr(torch.Tensor, "numpy", refuse)
    for method in ("lattice", "exact"):
        loss, grad = loss_and_grad(img, logit, label, box, method=method)
        assert loss.device == logit.device and grad.device == logit.device


def test_shape_mismatch_is_refused():
    img, logit, label = random_batch(2, 3, 8, 8)
    with pytest.raises(ValueError, match="share batch and size"):
        energy_loss(img, logit, label[:, :4], None)


@CUDA
@pytest.mark.parametrize("method", ["lattice", "exact"])
def test_cuda_loss_stays_on_device_and_matches_cpu(method):
    img, logit, label = random_batch(3, 6, 40, 36)
    box = torch.tensor([[0, 40, 0, 36], [4, 30, 2, 36], [0, 20, 0, 20]])
    loss, grad = loss_and_grad(img, logit, label, box, method=method)
    loss_gpu, grad_gpu = loss_and_grad(
        img.cuda(), logit.cuda(), label.cuda(), box.cuda(), method=method
    )
    assert loss_gpu.device.type == "cuda" and grad_gpu.device.type == "cuda"
    assert_close_report(
        loss_gpu.detach().cpu(), loss.detach(), rtol=1e-4, atol=0, name=f"cuda {method} loss"
    )
    assert_close_report(
        grad_gpu.cpu(),
        grad,
        rtol=1e-4,
        atol=1e-5 * float(grad.abs().max()),
        name=f"cuda {method} grad",
    )
