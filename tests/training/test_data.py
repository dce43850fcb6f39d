"""Training data: keyed determinism, sharding, the crop box, and the validation chips."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from ctfa_cli.config import DatasetSpec
from ctfa_cli.datasets.datadir import DataDir
from ctfa_cli.training.data import (
    StepBatchSampler,
    TrainChips,
    normalize,
    random_scale_flip_crop,
    validation_split,
)
from tests.training.helpers import tiny_config


def test_batches_are_a_function_of_the_step():
    sampler = StepBatchSampler(7, 3, seed=5, start_step=0, stop_step=6)
    batches = list(sampler)
    again = StepBatchSampler(7, 3, seed=5, start_step=0, stop_step=6)
    assert [again.batch(s) for s in reversed(range(6))] == batches[::-1]
    # Resuming at step 4 yields exactly the tail.
    assert list(StepBatchSampler(7, 3, seed=5, start_step=4, stop_step=6)) == batches[4:]
    # The stream is one permutation per epoch: 7 chips, then 7 more.
    stream = [key for batch in batches for key in batch]
    assert sorted(index for epoch, index in stream if epoch == 0) == list(range(7))
    assert sorted(index for epoch, index in stream if epoch == 1) == list(range(7))
    assert batches != list(StepBatchSampler(7, 3, seed=6, start_step=0, stop_step=6))


def test_ranks_split_the_global_batch():
    single = StepBatchSampler(10, 4, seed=1, start_step=0, stop_step=5)
    ranks = [StepBatchSampler(10, 2, seed=1, start_step=0, stop_step=5, rank=r, world_size=2)
             for r in range(2)]
    for step in range(5):
        assert ranks[0].batch(step) + ranks[1].batch(step) == single.batch(step)


def test_scale_flip_crop_records_the_real_image_box():
    chip = torch.full((3, 40, 60), 200, dtype=torch.uint8)
    torch.manual_seed(3)
    seen_padding = False
    for _ in range(20):
        crop, box = random_scale_flip_crop(chip, 64, (0.5, 2.0))
        assert crop.shape == (3, 64, 64) and box.dtype == torch.int16
        h0, h1, w0, w1 = box.tolist()
        inside = torch.zeros(64, 64, dtype=torch.bool)
        inside[h0:h1, w0:w1] = True
        # Constant chip: real image is exactly the box, the rest is black padding.
        assert bool((crop[:, inside] > 0).all()) and bool((crop[:, ~inside] == 0).all())
        seen_padding |= bool((~inside).any())
    assert seen_padding


def test_training_samples_are_keyed_and_never_read_masks(datadir, monkeypatch):
    data = DataDir.open(datadir)
    monkeypatch.setattr(DataDir, "read_chip", lambda *a: pytest.fail("training read a mask"))
    cfg = tiny_config()
    chips = TrainChips(data, cfg)
    sample = chips[(0, 1)]
    size = cfg.crop_size
    for name in ("image", "global_view", "local_source"):
        assert sample[name].shape == (3, size, size) and sample[name].dtype == torch.float32
    assert sample["label"].shape == (data.spec.num_cam_classes,)
    assert sample["img_box"].shape == (4,) and sample["img_box"].dtype == torch.int16
    assert torch.equal(sample["label"], torch.from_numpy(data.multi_hot(chips.rows[1])))
    # The same key gives the same sample whatever the global RNG; another epoch another draw.
    torch.manual_seed(123)
    again = chips[(0, 1)]
    assert all(torch.equal(sample[k], again[k]) for k in sample)
    assert not torch.equal(sample["image"], chips[(1, 1)]["image"])
    # The three views are different augmentations.
    assert not torch.equal(sample["image"], sample["local_source"])
    assert not torch.equal(sample["image"], sample["global_view"])


def test_batches_do_not_depend_on_worker_count(datadir):
    data = DataDir.open(datadir)
    chips = TrainChips(data, tiny_config())

    def batches(workers: int) -> list[dict]:
        sampler = StepBatchSampler(len(chips), 2, seed=0, start_step=0, stop_step=3)
        return list(DataLoader(chips, batch_sampler=sampler, num_workers=workers))

    for a, b in zip(batches(0), batches(2), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_validation_split(datadir):
    data = DataDir.open(datadir)
    assert validation_split(data) == "val"
    data.chips = data.chips[data.chips["split"] != "val"]
    assert validation_split(data) == "test"  # as the official scripts, without a val split
    data.chips = data.chips[data.chips["split"] != "test"]
    assert validation_split(data) is None


def test_normalize_uses_the_spec_statistics():
    spec = DatasetSpec(name="x", classes=["a", "b"], palette=[(0, 0, 0), (1, 1, 1)],
                       bands=["ir", "r"], mean=[0.5, 0.25], std=[0.5, 0.25])
    image = torch.tensor([[[255]], [[0]]], dtype=torch.uint8)
    assert normalize(image, spec).flatten().tolist() == pytest.approx([1.0, -1.0])
