"""Energy-loss benchmark rows for ``python -m kernels.bench``: forward + backward per path.

Inputs: seeded synthetic images (see :func:`kernels.bilateral.bench.synthetic_inputs`,
normalised like the training images), random logits, labels with a few ignored pixels and
whole-image boxes; the official parameters (weight 1e-7, σ_rgb 15, σ_xy 100, scale 0.5).

Rows, per device:

* ``REFERENCE_SHAPE`` (logits 2×6×80×80, filtered at 40×40): the float64 readable reference
  (:mod:`kernels.dense_crf.reference`, exact filter materialising N×N) and every path;
  ``speedup`` = reference ms / path ms.
* ``SHAPE`` = logits 8×6×320×320 (a training batch; the loss filters at 160×160): the lattice,
  and on CUDA the exact triton path; ``speedup`` = lattice ms / path ms on CUDA, None on CPU
  where no other path is practical at this size (the reference code's C++ loss took
  ~118 ms forward + backward here on the 2-core CI box).

The path names are those of the filter: ``lattice`` (method "lattice"), ``torch`` and
``triton`` (method "exact").
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from kernels.bench import peak_extra_mb, time_ms
from kernels.bilateral import PATH_ENV_VAR

SHAPE: tuple[int, int, int, int] = (8, 6, 320, 320)
REFERENCE_SHAPE: tuple[int, int, int, int] = (2, 6, 80, 80)
QUICK_SHAPE: tuple[int, int, int, int] = (2, 3, 16, 16)
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


def synthetic_batch(shape: tuple[int, int, int, int], device: str, seed: int = 0):
    """Seeded ``img`` (normalised), ``logit``, ``label`` (1 % ignored) for ``shape`` B×C×H×W."""
    import torch

    from kernels.bilateral.bench import synthetic_inputs

    batch, classes, height, width = shape
    images, _ = synthetic_inputs((batch, 1, height, width), "cpu", seed)
    mean = torch.tensor(MEAN)[None, :, None, None]
    std = torch.tensor(STD)[None, :, None, None]
    img = (images.clamp(0, 255) - mean) / std
    generator = torch.Generator().manual_seed(seed + 1)
    logit = 3 * torch.randn(batch, classes, height, width, generator=generator)
    label = torch.randint(0, classes, (batch, height, width), generator=generator).float()
    label[torch.rand(batch, height, width, generator=generator) < 0.01] = 255
    return img.to(device), logit.to(device), label.to(device)


def run(device: str, repeats: int, *, quick: bool = False) -> list[dict]:
    """Time and peak extra memory of the energy loss, forward + backward, per path.

    Args:
        device: ``"cpu"`` or ``"cuda"`` (or ``"cuda:N"``).
        repeats: timed calls per path; the minimum is kept.
        quick: only the first group, on a tiny shape (a smoke test of the driver).

    Returns:
        Rows ``{"op": "energy_loss", "path", "device", "shape", "ms", "peak_mb", "speedup",
        "agreement"}``, then the CRF inference rows of :func:`crf_rows`.
    """
    from kernels.dense_crf import energy_loss
    from kernels.dense_crf.reference import energy_loss_reference

    on_cuda = device.startswith("cuda")

    def measure(path: str, shape) -> dict:
        img, logit, label = synthetic_batch(shape, device)

        def call():
            if path == "reference":
                return energy_loss_reference(img, logit, label, None)
            leaf = logit.detach().requires_grad_(True)
            method = "lattice" if path == "lattice" else "exact"
            energy_loss(img, leaf, label, None, method=method).backward()
            return leaf.grad

        with _forced_filter_path(path):
            peak_mb = peak_extra_mb(call, device)
            ms = time_ms(call, device, repeats)
        return {
            "op": "energy_loss",
            "path": path,
            "device": device,
            "shape": "x".join(map(str, shape)),
            "ms": ms,
            "peak_mb": peak_mb,
            "speedup": None,
            "agreement": None,
        }

    exact_paths = ["torch"] + (["triton"] if on_cuda else [])
    group = [
        measure(path, QUICK_SHAPE if quick else REFERENCE_SHAPE)
        for path in ["reference", *exact_paths, "lattice"]
    ]
    for row in group:
        row["speedup"] = group[0]["ms"] / row["ms"]
    rows = group + crf_rows(device, repeats, quick=quick)
    if quick:
        return rows

    group = [measure("lattice", SHAPE)] + ([measure("triton", SHAPE)] if on_cuda else [])
    if on_cuda:
        for row in group:
            row["speedup"] = group[0]["ms"] / row["ms"]
    return rows + group


@contextlib.contextmanager
def _forced_filter_path(path: str) -> Iterator[None]:
    """Force the bilateral path through its environment variable (the loss has no path option)."""
    saved = os.environ.get(PATH_ENV_VAR)
    os.environ[PATH_ENV_VAR] = path
    try:
        yield
    finally:
        if saved is None:
            del os.environ[PATH_ENV_VAR]
        else:
            os.environ[PATH_ENV_VAR] = saved


#: CRF inference rows: one 512² image, 6 classes, the official 10 iterations.
CRF_SHAPE: tuple[int, int, int, int] = (1, 6, 512, 512)
CRF_QUICK_SHAPE: tuple[int, int, int, int] = (1, 6, 24, 24)


def crf_inputs(shape: tuple[int, int, int, int], seed: int = 0):
    """Seeded ``probs`` ``[B, C, H, W]`` (softmax of smooth logits plus noise) and ``images``
    ``[B, 3, H, W]`` (the synthetic colour images of the bilateral benchmark, 0..255, rounded
    to grey levels as pydensecrf takes uint8), on the CPU."""
    import torch
    import torch.nn.functional as F

    from kernels.bilateral.bench import synthetic_inputs

    batch, classes, height, width = shape
    images, _ = synthetic_inputs((batch, 1, height, width), "cpu", seed)
    generator = torch.Generator().manual_seed(seed + 2)
    coarse = 4 * torch.randn(batch, classes, max(height // 32, 2), max(width // 32, 2),
                             generator=generator)
    logits = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    logits += torch.randn(batch, classes, height, width, generator=generator)
    return torch.softmax(logits, 1), images.clamp(0, 255).round()


def crf_rows(device: str, repeats: int, *, quick: bool = False) -> list[dict]:
    """Dense-CRF inference (official parameters): ctfa's lattice path on ``device`` against
    pydensecrf (the library the official evaluation calls; CPU, when installed), time and the
    share of labels on which they agree (``speedup``: pydensecrf ms / path ms)."""
    import numpy as np

    from kernels.dense_crf import OFFICIAL_CRF, dense_crf

    shape = CRF_QUICK_SHAPE if quick else CRF_SHAPE
    probs, images = crf_inputs(shape)
    label = "x".join(map(str, shape))
    rows = []
    reference = _pydensecrf_labels(probs, images)
    if reference is not None:
        labels, call = reference
        rows.append({"op": "crf_inference", "path": "pydensecrf", "device": "cpu",
                     "shape": label, "ms": time_ms(call, "cpu", repeats), "peak_mb": None,
                     "speedup": 1.0, "agreement": 1.0})
    on_device = probs.to(device), images.to(device)

    def lattice():
        return dense_crf(*on_device, OFFICIAL_CRF)

    ours = lattice().argmax(1).cpu().numpy()
    ms = time_ms(lattice, device, repeats)
    rows.append({"op": "crf_inference", "path": "lattice", "device": device, "shape": label,
                 "ms": ms, "peak_mb": peak_extra_mb(lattice, device),
                 "speedup": rows[0]["ms"] / ms if rows else None,
                 "agreement": float(np.mean(ours == labels)) if rows else None})
    return rows


def _pydensecrf_labels(probs, images):
    """pydensecrf's labels of each image and a call that recomputes them; None when
    pydensecrf is not installed (``pip install pydensecrf2``)."""
    try:
        import pydensecrf.densecrf as dcrf
        import pydensecrf.utils as utils
    except ImportError:
        return None
    import numpy as np

    from kernels.dense_crf import OFFICIAL_CRF as crf

    def call():
        labels = []
        for prob, image in zip(probs.numpy(), images.numpy(), strict=True):
            classes, height, width = prob.shape
            model = dcrf.DenseCRF2D(width, height, classes)
            model.setUnaryEnergy(np.ascontiguousarray(utils.unary_from_softmax(prob)))
            model.addPairwiseGaussian(sxy=crf.pos_xy_std, compat=crf.pos_w)
            model.addPairwiseBilateral(
                sxy=crf.bi_xy_std, srgb=crf.bi_rgb_std, compat=crf.bi_w,
                rgbim=np.ascontiguousarray(image.transpose(1, 2, 0).astype(np.uint8)))
            q = np.array(model.inference(crf.iterations)).reshape(classes, height, width)
            labels.append(q.argmax(0))
        return np.stack(labels)

    return call(), call
