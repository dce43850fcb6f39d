"""Dense-CRF inference: the exact path against the dense formula, the lattice against
pydensecrf itself (the library the official evaluation calls)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels.bilateral import PATH_ENV_VAR
from kernels.dense_crf import CRFParams, dense_crf
from kernels.dense_crf.crf_reference import dense_crf_reference

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _no_forced_path(monkeypatch):
    monkeypatch.delenv(PATH_ENV_VAR, raising=False)


def scene(classes: int, height: int, width: int, seed: int = 0):
    """Probabilities ``[1, C, H, W]`` of noisy logits and an RGB image ``[1, 3, H, W]`` of two
    flat regions plus noise (0..255), both float32."""
    rng = np.random.default_rng(seed)
    image = np.clip(rng.normal(60, 25, (3, height, width)), 0, 255)
    image[:, :, width // 2:] += 120
    logits = 2.0 * rng.normal(size=(classes, height, width))
    logits[1, :, width // 2:] += 1.5  # class 1 leans to the right half
    probs = torch.softmax(torch.from_numpy(logits), 0)
    return probs[None].float(), torch.from_numpy(np.clip(image, 0, 255))[None].float()


@pytest.mark.parametrize(("classes", "height", "width", "params"), [
    (5, 13, 17, CRFParams()),
    (3, 11, 9, CRFParams(iterations=3, pos_w=2.0, pos_xy_std=2.0, bi_w=5.0, bi_xy_std=6.0,
                         bi_rgb_std=30.0)),
])
def test_exact_path_is_the_dense_formula(classes, height, width, params):
    probs, image = scene(classes, height, width)
    expected = dense_crf_reference(probs[0].double(), image[0].double(), params)
    got = dense_crf(probs, image, params, method="exact")
    # float32 filtering against float64: the marginals agree to a few 1e-6
    torch.testing.assert_close(got[0].double(), expected, atol=1e-5, rtol=0)
    assert not torch.allclose(expected, probs[0].double(), atol=1e-2)  # the CRF did change Q


def test_without_pairwise_terms_q_is_the_clipped_unary():
    probs, image = scene(4, 6, 7)
    probs[0, :, 0, 0] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # clipped to 1e-5 before the log
    got = dense_crf(probs, image, CRFParams(pos_w=0.0, bi_w=0.0))
    clipped = probs.clamp(1e-5, 1.0)
    torch.testing.assert_close(got, clipped / clipped.sum(1, keepdim=True), atol=1e-6, rtol=0)


def test_batched_images_are_independent():
    first, second = scene(3, 10, 12, seed=1), scene(3, 10, 12, seed=2)
    batch = dense_crf(torch.cat([first[0], second[0]]), torch.cat([first[1], second[1]]))
    torch.testing.assert_close(batch[1:], dense_crf(*second), atol=0, rtol=0)


def pydensecrf_marginals(probs: torch.Tensor, image: torch.Tensor, params: CRFParams):
    """What the official ``utils/dcrf.py::DenseCRF.__call__`` computes, through pydensecrf."""
    dcrf = pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 (dev extra) is not "
                               "installed: pip install pydensecrf2")
    utils = pytest.importorskip("pydensecrf.utils")
    classes, height, width = probs.shape
    crf = dcrf.DenseCRF2D(width, height, classes)
    crf.setUnaryEnergy(np.ascontiguousarray(utils.unary_from_softmax(probs.numpy())))
    crf.addPairwiseGaussian(sxy=params.pos_xy_std, compat=params.pos_w)
    rgb = np.ascontiguousarray(image.permute(1, 2, 0).numpy().astype(np.uint8))
    crf.addPairwiseBilateral(sxy=params.bi_xy_std, srgb=params.bi_rgb_std, rgbim=rgb,
                             compat=params.bi_w)
    return np.array(crf.inference(params.iterations)).reshape(classes, height, width)


@pytest.mark.parametrize(("classes", "height", "width", "params"), [
    (6, 48, 40, CRFParams()),
    (16, 33, 29, CRFParams(bi_xy_std=10.0, bi_rgb_std=20.0)),
])
def test_lattice_path_reproduces_pydensecrf(classes, height, width, params):
    probs, image = scene(classes, height, width, seed=classes)
    image = image.round()  # pydensecrf takes uint8 colours
    expected = pydensecrf_marginals(probs[0], image[0], params)
    got = dense_crf(probs, image, params)[0].numpy()
    agreement = (got.argmax(0) == expected.argmax(0)).mean()
    assert agreement >= 0.995
    np.testing.assert_allclose(got, expected, atol=1e-4)  # same lattice: float rounding apart


@CUDA
def test_cuda_equals_cpu():
    probs, image = scene(6, 40, 48)
    for method in ("lattice", "exact"):
        cpu = dense_crf(probs, image, method=method)
        gpu = dense_crf(probs.cuda(), image.cuda(), method=method).cpu()
        torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=0)
