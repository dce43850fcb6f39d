"""Training data over a DATA_DIR split, with the reference CTFA augmentation.

Training uses image-level labels only (it never reads a chip mask).
Every random choice is a pure function of ``(seed, position in the sample stream)``:

* :class:`StepBatchSampler` turns a global step into the keys of that step's batch. The
  sample stream is the concatenation of one permutation of the split per epoch, each drawn
  from a generator seeded by ``(seed, epoch)``; step ``s`` takes stream positions
  ``[s·G, (s+1)·G)`` with ``G = batch_size · world_size`` (rank ``r`` its ``r``-th slice).
* :class:`TrainChips` draws a sample's augmentation from a generator seeded by
  ``(seed, epoch, index)``.

So data order and augmentation do not depend on the worker count, and resuming needs only the
step counter. A split smaller than a global batch simply wraps into the next epoch.

Augmentation (official CTFA ``potsdamClsDataset``, DINO-style views), per chip:

1. random rescale by ``U(rescale_range)`` (bilinear), horizontal flip (p 0.5), random crop to
   ``crop_size``: the chip is pasted at a random offset on a black canvas when smaller, and
   ``img_box = [h0, h1, w0, w1]`` records the rows/columns of real image in the crop;
2. the **training crop**: colour jitter (p 0.8), greyscale (p 0.2), Gaussian blur (p 1.0);
3. the **local source**: a separately augmented copy of the same crop (colour jitter p 0.8,
   greyscale p 0.2, blur p 0.5) from which the CAM machinery later cuts the local views;
4. the **second global view**: a random resized crop (scale 0.4–1, bicubic) of the original
   chip to ``crop_size``, flip (p 0.5), colour jitter (p 0.8), greyscale (p 0.2), blur (p 0.1),
   solarisation (p 0.2).

Two reference quirks are fixed: the official training crop and local source are each flipped
*again* (p 0.5) after the box is recorded, so the box no longer matches the padding and the
local views are cut from a copy mirrored against the ROI mask they are centred on. Here the
one flip happens before the crop, so the box and the ROI hold for every view cut from the crop.

Colour jitter and greyscale act on the first three bands (the colour or false-colour
composite; e.g. IR-R-G); further bands such as a DSM are only rescaled, flipped, cropped,
blurred and solarised. Single-band imagery gets brightness/contrast jitter; two-band imagery
none.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ctfa_cli.config import DatasetSpec, TrainConfig
from ctfa_cli.datasets.datadir import DataDir

SampleKey = tuple[int, int]
"""``(epoch, index)``: which chip, and which epoch's augmentation draw."""

# Seed domains, so that batch order, sample augmentation and per-step randomness never share
# a generator state.
ORDER, SAMPLE, STEP = 0, 1, 2

# DINO / official CTFA view augmentation parameters.
JITTER_P, GREY_P = 0.8, 0.2
BLUR_SIGMA = (0.1, 2.0)
SOLARIZE_THRESHOLD = 128
RESIZED_CROP_SCALE = (0.4, 1.0)


def derive_seed(*keys: int) -> int:
    """A well-mixed 32-bit seed from integer keys (``numpy.random.SeedSequence``)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


class StepBatchSampler(Sampler[list[SampleKey]]):
    """Batch keys for the steps ``start_step … stop_step - 1`` of one rank.

    Args:
        num_samples: chips in the training split (``N ≥ 1``).
        batch_size: chips per rank and step.
        seed: run seed.
        start_step: first global step (0-based) to yield.
        stop_step: one past the last step.
        rank: this process' rank.
        world_size: number of processes.
    """

    def __init__(self, num_samples: int, batch_size: int, *, seed: int, start_step: int,
                 stop_step: int, rank: int = 0, world_size: int = 1) -> None:
        if num_samples < 1:
            raise ValueError("the training split holds no chip")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.stop_step = stop_step
        self.rank = rank
        self.world_size = world_size
        self._permutations: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return max(0, self.stop_step - self.start_step)

    def __iter__(self) -> Iterator[list[SampleKey]]:
        for step in range(self.start_step, self.stop_step):
            yield self.batch(step)

    def batch(self, step: int) -> list[SampleKey]:
        """The ``batch_size`` sample keys of global step ``step`` for this rank."""
        first = (step * self.world_size + self.rank) * self.batch_size
        keys = []
        for position in range(first, first + self.batch_size):
            epoch, offset = divmod(position, self.num_samples)
            keys.append((epoch, int(self._permutation(epoch)[offset])))
        return keys

    def _permutation(self, epoch: int) -> Tensor:
        if epoch not in self._permutations:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, ORDER, epoch))
            # Positions only move forward: the previous epoch is the oldest still needed.
            self._permutations = {k: v for k, v in self._permutations.items() if k >= epoch - 1}
            self._permutations[epoch] = torch.randperm(self.num_samples, generator=generator)
        return self._permutations[epoch]


class TrainChips(Dataset):
    """Augmented training samples of one DATA_DIR split (image-level labels only).

    ``dataset[(epoch, index)]`` returns a dict:

    * ``image``: float32 ``[C, S, S]`` normalised training crop (``S = crop_size``);
    * ``label``: float32 ``[num_cam_classes]`` multi-hot image-level label;
    * ``img_box``: int16 ``[4]`` ``[h0, h1, w0, w1]``, the real-image part of the crop;
    * ``global_view``: float32 ``[C, S, S]`` normalised second global view;
    * ``local_source``: float32 ``[C, S, S]`` normalised, separately colour-augmented copy of
      the training crop (local views are cut from it).

    Args:
        data: the opened DATA_DIR.
        cfg: training config (``crop_size``, ``rescale_range``, ``seed``).
        split: split to train on.

    Raises:
        CtfaError: the split is absent or empty (from :meth:`DataDir.split`).
    """

    def __init__(self, data: DataDir, cfg: TrainConfig, split: str = "train") -> None:
        self.data = data
        self.spec = data.spec
        self.crop_size = cfg.crop_size
        self.rescale_range = tuple(cfg.rescale_range)
        self.seed = cfg.seed
        self.rows = _records(data, split)
        self.jitter = _jitter_for(self.spec.in_chans)
        self.resized_crop = v2.RandomResizedCrop(
            cfg.crop_size, scale=RESIZED_CROP_SCALE, interpolation=v2.InterpolationMode.BICUBIC,
            antialias=True,
        )

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: SampleKey) -> dict[str, Tensor]:
        epoch, index = key
        chip = torch.from_numpy(self.data.read_image(self.rows[index]))
        label = torch.from_numpy(self.data.multi_hot(self.rows[index]))
        # The global RNG is forked and seeded per sample so that torchvision's random
        # transforms draw from a generator keyed by (seed, epoch, index), whatever the process.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, SAMPLE, epoch, index))
            crop, img_box = random_scale_flip_crop(chip, self.crop_size, self.rescale_range)
            image = self._photometric(crop, blur_p=1.0, solarize_p=0.0)
            local_source = self._photometric(crop, blur_p=0.5, solarize_p=0.0)
            view = self.resized_crop(chip)
            if torch.rand(()) < 0.5:
                view = TF.horizontal_flip(view)
            view = self._photometric(view, blur_p=0.1, solarize_p=0.2)
        return {
            "image": normalize(image, self.spec),
            "label": label,
            "img_box": img_box,
            "global_view": normalize(view, self.spec),
            "local_source": normalize(local_source, self.spec),
        }

    def _photometric(self, image: Tensor, *, blur_p: float, solarize_p: float) -> Tensor:
        """Colour jitter, greyscale, Gaussian blur and solarisation of a uint8 ``[C,H,W]``."""
        if self.jitter is not None:
            colour = image[: min(3, image.shape[0])]
            if torch.rand(()) < JITTER_P:
                colour = self.jitter(colour)
            if colour.shape[0] == 3 and torch.rand(()) < GREY_P:
                colour = TF.rgb_to_grayscale(colour, num_output_channels=3)
            image = torch.cat([colour, image[colour.shape[0]:]])
        if torch.rand(()) < blur_p:
            low, high = BLUR_SIGMA
            sigma = low + (high - low) * float(torch.rand(()))
            # PIL's GaussianBlur(radius) in the reference is a Gaussian of std ``radius``;
            # ±3σ holds 99.7 % of its mass.
            kernel = 2 * math.ceil(3 * sigma) + 1
            image = TF.gaussian_blur(image, [kernel, kernel], [sigma, sigma])
        if torch.rand(()) < solarize_p:
            image = TF.solarize(image, SOLARIZE_THRESHOLD)
        return image


def random_scale_flip_crop(chip: Tensor, crop_size: int,
                           rescale_range: tuple[float, float]) -> tuple[Tensor, Tensor]:
    """Random rescale, horizontal flip and crop of a chip (reference ``random_scaling``,
    ``random_fliplr``, ``random_crop``), drawing from the global torch RNG.

    The chip is rescaled by ``U(rescale_range)`` (bilinear; new side ``int(ratio·side)``),
    flipped with probability 0.5, pasted at a random offset on a black canvas of at least
    ``crop_size`` per side, and a random ``crop_size`` window of the canvas is cut.

    Args:
        chip: uint8 ``[C, H, W]``.
        crop_size: output side ``S``.
        rescale_range: ``(min, max)`` scale factors.

    Returns:
        ``(crop uint8 [C, S, S], img_box int16 [4])`` with ``img_box = [h0, h1, w0, w1]`` the
        rows and columns of the crop that hold real image (the rest is black).
    """
    _, h, w = chip.shape
    low, high = rescale_range
    ratio = low + (high - low) * float(torch.rand(()))
    h, w = max(1, int(ratio * h)), max(1, int(ratio * w))
    chip = TF.resize(chip, [h, w], interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
    if torch.rand(()) < 0.5:
        chip = TF.horizontal_flip(chip)
    canvas_h, canvas_w = max(crop_size, h), max(crop_size, w)
    pad_top = int(torch.randint(canvas_h - h + 1, ()))
    pad_left = int(torch.randint(canvas_w - w + 1, ()))
    top = int(torch.randint(canvas_h - crop_size + 1, ()))
    left = int(torch.randint(canvas_w - crop_size + 1, ()))
    canvas = chip.new_zeros(chip.shape[0], canvas_h, canvas_w)
    canvas[:, pad_top:pad_top + h, pad_left:pad_left + w] = chip
    crop = canvas[:, top:top + crop_size, left:left + crop_size]
    img_box = torch.tensor(
        [max(pad_top - top, 0), min(crop_size, h + pad_top - top),
         max(pad_left - left, 0), min(crop_size, w + pad_left - left)],
        dtype=torch.int16,
    )
    return crop, check_crop_box(img_box, crop_size)


def check_crop_box(img_box: Tensor, crop_size: int) -> Tensor:
    """Return ``img_box`` after checking it on the host, where the batch is made.

    The training step trusts its boxes (:func:`ctfa_cli.objectives.cam.checked_boxes`): a
    check inside the step would read the boxes back from the GPU and wait for it every step.

    Args:
        img_box: CPU integer ``[4]`` box ``[h0, h1, w0, w1]``.
        crop_size: the crop side ``S``.

    Raises:
        ValueError: not ``0 <= h0 <= h1 <= S`` and ``0 <= w0 <= w1 <= S``.
    """
    h0, h1, w0, w1 = img_box.tolist()
    if not (0 <= h0 <= h1 <= crop_size and 0 <= w0 <= w1 <= crop_size):
        raise ValueError(f"crop box {[h0, h1, w0, w1]} is not inside a {crop_size}-px crop")
    return img_box


def validation_split(data: DataDir) -> str | None:
    """The split validated during training: ``val`` if it has masked chips, else ``test``
    (as the official scripts do), else None (no validation possible)."""
    for split in ("val", "test"):
        rows = data.chips[data.chips["split"] == split]
        if len(rows) and rows["mask"].notna().all():
            return split
    return None


def normalize(image: Tensor, spec: DatasetSpec) -> Tensor:
    """uint8 ``[C, H, W]`` → float32 ``(pixel/255 - mean) / std`` with the spec's statistics."""
    return TF.normalize(TF.to_dtype(image, torch.float32, scale=True), spec.mean, spec.std)


def _records(data: DataDir, split: str) -> list[dict]:
    """Split rows as plain dicts (cheap to index and to send to worker processes)."""
    rows = data.split(split)
    return rows.drop(columns=rows.geometry.name).to_dict("records")


def _jitter_for(bands: int) -> v2.ColorJitter | None:
    """The reference colour jitter for the bands it can act on (see the module docstring)."""
    if bands >= 3:
        return v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)
    if bands == 1:
        return v2.ColorJitter(brightness=0.4, contrast=0.4)
    return None
