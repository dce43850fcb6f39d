"""Pseudo-label refinement beyond the golden vectors: batching, boxes, the no-background policy
and the denormalisation quirk."""

import pytest
import torch

from ctfa_cli.config import IMAGENET_MEAN, IMAGENET_STD, TrainConfig
from ctfa_cli.datasets.registry import get_spec
from ctfa_cli.objectives.refine import (
    _argmax_present,
    denormalize,
    pseudo_label_from_cams,
    refine_pseudo_label,
)

SIZE = 32


def two_region_scene(seed: int = 0):
    """Images with a bright left half and a dark right half; CAMs that follow the halves."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.full((3, 3, SIZE, SIZE), 0.2)
    images[:, :, :, : SIZE // 2] = 0.8
    images = (images + 0.02 * torch.rand(images.shape, generator=gen)).clamp(0, 1)
    cams = 0.05 * torch.rand(3, 4, SIZE, SIZE, generator=gen)
    cams[0, 1, :, : SIZE // 2] = 0.95  # image 0: class channel 1 left, channel 3 right
    cams[0, 3, :, SIZE // 2 :] = 0.95
    cams[1, 0, :, : SIZE // 2] = 0.95  # image 1: channel 0 left, background right
    cams[2, 2, :, SIZE // 2 :] = 0.95  # image 2: channel 2 right (absent from its labels)
    cls = torch.tensor([[0, 1, 0, 1], [1, 0, 0, 0], [1, 1, 0, 0]], dtype=torch.float32)
    return images, cams * cls[:, :, None, None], cls


def refine(images, cams, cls, **kwargs):
    return refine_pseudo_label(images, cams, cls, high_thre=0.7, low_thre=0.25,
                               dilations=(1, 2, 4), num_iter=3, **kwargs)


def test_refine_labels_regions_with_background():
    images, cams, cls = two_region_scene()
    out = refine(images, cams, cls)
    assert out.shape == (3, SIZE, SIZE) and out.dtype == torch.float32
    left, right = out[:, :, 4:12], out[:, :, 20:28]  # away from the boundary
    assert torch.all(left[0] == 2) and torch.all(right[0] == 4)  # channel k -> label k + 1
    assert torch.all(left[1] == 1)
    # Scores 0.05 lose to the high background (ignored) and to the low one too (background).
    assert torch.all(right[1] == 0)
    # Image 2's only labelled class has no activation: everything is background.
    assert torch.all(out[2] == 0)


def test_refine_batch_equals_one_image_at_a_time():
    images, cams, cls = two_region_scene(seed=4)
    cams = cams + 0.5 * torch.rand(cams.shape) * cls[:, :, None, None]
    box = torch.tensor([[0, 32, 0, 32], [3, 30, 5, 32], [0, 20, 0, 25]])
    batch = refine(images, cams, cls, img_box=box)
    for i in range(3):
        single = refine(images[i : i + 1], cams[i : i + 1], cls[i : i + 1], img_box=box[i : i + 1])
        assert torch.equal(batch[i], single[0])


def test_refine_ignores_outside_the_box():
    images, cams, cls = two_region_scene()
    box = torch.tensor([[2, 30, 4, 32], [0, 32, 0, 32], [0, 0, 0, 32]])
    out = refine(images, cams, cls, img_box=box)
    whole = refine(images, cams, cls)
    assert torch.all(out[0, :2] == 255) and torch.all(out[0, 30:] == 255)
    assert torch.all(out[0, :, :4] == 255)
    assert torch.equal(out[0, 2:30, 4:], whole[0, 2:30, 4:])  # the box only masks
    assert torch.equal(out[1], whole[1])
    assert torch.all(out[2] == 255)  # empty box


def test_refine_without_background():
    images, cams, cls = two_region_scene()
    cls[1] = 0  # an image with no class at all
    cls[2, 1] = 0  # only class 0 left; channel 1 still holds scores but is absent
    out = refine(images, cams, cls, has_background=False)
    left, right = out[:, :, 4:12], out[:, :, 20:28]
    # No shift, no background: the present class with the higher score wins everywhere.
    assert torch.all(left[0] == 1) and torch.all(right[0] == 3)
    assert torch.all(out[1] == 255)
    # Image 2: only class 0 is present, so every pixel is class 0 (absent ones never win).
    assert torch.all(out[2] == 0)


def test_argmax_present_matches_torch_argmax_with_ties_and_absent_channels():
    gen = torch.Generator().manual_seed(3)
    # Few distinct values, so ties are common; the first index must win them.
    scores = torch.randint(0, 3, (3, 2, 5, 7, 9), generator=gen).float()
    absent = torch.zeros(3, 1, 5, 1, 1, dtype=torch.bool)
    absent[0, 0, 0] = True  # an absent first channel
    absent[1, 0, 2:] = True
    absent[2] = True  # every channel absent: channel 0, as torch.argmax of all -inf gives
    expected = scores.masked_fill(absent, float("-inf")).argmax(dim=2)
    assert torch.equal(_argmax_present(scores, absent), expected)


def test_denormalize_truncates_like_the_uint8_cast():
    pixels = torch.arange(256, dtype=torch.float32)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    x = ((pixels / 255)[None, :, None, None] - mean[:, None, None, None]) / std[:, None, None, None]
    x = x.permute(1, 0, 2, 3)  # [256, 3, 1, 1]: every 8-bit value in every channel
    back = denormalize(x, IMAGENET_MEAN, IMAGENET_STD) * 255
    assert torch.allclose(back, back.round(), atol=1e-4)  # whole 8-bit steps
    shortfall = pixels[:, None] - back[:, :, 0, 0].round()
    assert set(shortfall.unique().tolist()) <= {0.0, 1.0}
    assert (shortfall == 1).any()  # the round trip k -> k - 1 of the reference happens
    # Out-of-range values are clamped instead of wrapping around.
    extreme = denormalize(torch.full((1, 3, 1, 1), 50.0), IMAGENET_MEAN, IMAGENET_STD)
    assert torch.all(extreme == 1.0)
    extreme = denormalize(torch.full((1, 3, 1, 1), -50.0), IMAGENET_MEAN, IMAGENET_STD)
    assert torch.all(extreme == 0.0)


def test_shapes_are_checked_with_messages_that_name_them():
    images, cams, cls = two_region_scene()
    with pytest.raises(ValueError, match=r"^mean/std have 2/3 values for 3 channels$"):
        denormalize(images, IMAGENET_MEAN[:2], IMAGENET_STD)
    with pytest.raises(ValueError, match=r"^mean/std have 3/2 values for 3 channels$"):
        denormalize(images, IMAGENET_MEAN, IMAGENET_STD[:2])
    with pytest.raises(ValueError, match=r"^cams \(2, 4, 32, 32\) do not match images "
                                         r"\(3, 32, 32\)$"):
        refine(images, cams[:2], cls)
    with pytest.raises(ValueError, match=r"^cams \(3, 4, 32, 16\) do not match images "):
        refine(images, cams[..., :16], cls)  # same batch, other size
    with pytest.raises(ValueError, match=r"^cls_labels \(3, 3\) do not match cams$"):
        refine(images, cams, cls[:, :3])


def test_the_step_pseudo_label_is_par_refinement_with_the_run_settings():
    spec = get_spec("synthetic")
    gen = torch.Generator().manual_seed(2)
    colour, _, cls = two_region_scene(seed=2)
    cams, cls = torch.rand(3, 3, SIZE, SIZE, generator=gen), cls[:, :3]  # noise for PAR to smooth
    mean, std = torch.tensor(spec.mean), torch.tensor(spec.std)  # three colour bands
    images = (colour - mean[:, None, None]) / std[:, None, None]
    box = torch.tensor([[0, 32, 0, 32], [4, 28, 2, 30], [0, 16, 0, 32]])
    cfg = TrainConfig(par_dilations=[1, 3], par_iters=2, high_thre=0.6, low_thre=0.3)
    out = pseudo_label_from_cams(images, cams, cls, spec, cfg, img_box=box)

    def by_hand(**par):
        return refine_pseudo_label(
            denormalize(images, spec.mean, spec.std), cams * cls[:, :, None, None], cls,
            high_thre=0.6, low_thre=0.3, ignore_index=255, img_box=box, down_scale=2, **par)

    run = {"dilations": (1, 3), "num_iter": 2}
    assert torch.equal(out, by_hand(**run))
    assert torch.all(out[1, :4] == 255) and torch.all(out[2, 16:] == 255)  # outside the boxes
    # The run's PAR settings matter here: the defaults give other labels on this batch.
    for changed in ({"dilations": (1, 2, 4, 8, 12, 24)}, {"num_iter": 10}):
        assert not torch.equal(out, by_hand(**(run | changed)))
