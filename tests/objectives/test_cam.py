"""CAM machinery beyond the golden vectors: multi-scale CAMs, the no-background policy,
boxes, the affinity mask against a naive loop, and the ROI-guided local crops."""

import re
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from ctfa_cli.objectives.cam import (
    box_mask,
    cam_to_label,
    label_to_aff_mask,
    multi_scale_cams,
    roi_mask,
    sample_local_crops,
    scale_box,
)


class PooledCams(torch.nn.Module):
    """Stand-in network: CAMs are a 1×1 conv of 4×4-average-pooled input (feature stride 4)."""

    def __init__(self, num_cam_classes: int = 3) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, num_cam_classes, 1, bias=False)
        self.aux = torch.nn.Conv2d(3, num_cam_classes, 1, bias=False)
        self.seen: list[tuple[int, ...]] = []

    def cams(self, x):
        self.seen.append(tuple(x.shape))
        feats = F.avg_pool2d(x, 4)
        return self.conv(feats), self.aux(feats)


class IdentityCams(torch.nn.Module):
    """Stand-in network whose CAMs are the input itself (feature stride 1)."""

    def cams(self, x):
        return x, -x


def test_multi_scale_cams_sizes_order_and_range():
    model = PooledCams()
    images = torch.randn(2, 3, 32, 48)
    cam, aux = multi_scale_cams(model, images, scales=(1.0, 0.5, 1.5))
    # Original size first, each with its flips in one batch of 2B.
    assert model.seen == [(4, 3, 32, 48), (4, 3, 16, 24), (4, 3, 48, 72)]
    for out in (cam, aux):
        assert out.shape == (2, 3, 32, 48) and not out.requires_grad
        assert torch.all(out >= 0) and torch.all(out < 1)
        torch.testing.assert_close(out.amin(dim=(2, 3)), torch.zeros(2, 3))
        # max - min normalised to 1 (up to the +1e-5), unless a plane is all zero after ReLU.
        peak = out.amax(dim=(2, 3))
        assert torch.all((peak > 0.999) | (peak == 0))


def test_multi_scale_cams_single_scale_is_min_max_of_relu():
    images = torch.randn(2, 3, 8, 8)
    cam, aux = multi_scale_cams(IdentityCams(), images, scales=(1.0,), flip=False)
    relu = images.clamp(min=0)
    low, high = relu.amin(dim=(2, 3), keepdim=True), relu.amax(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(cam, (relu - low) / (high - low + 1e-5))
    relu_neg = (-images).clamp(min=0)
    low, high = relu_neg.amin(dim=(2, 3), keepdim=True), relu_neg.amax(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(aux, (relu_neg - low) / (high - low + 1e-5))


def test_multi_scale_cams_reuse_the_plain_pass_without_flips():
    images = torch.randn(2, 3, 8, 8)
    model = IdentityCams()
    cam, aux = multi_scale_cams(model, images, scales=(1.0,), flip=False,
                                plain=model.cams(images))
    expected = multi_scale_cams(model, images, scales=(1.0,), flip=False)
    assert cam.shape == aux.shape == (2, 3, 8, 8)
    torch.testing.assert_close((cam, aux), expected, rtol=0, atol=0)


def test_multi_scale_cams_flip_is_symmetric():
    model = PooledCams()
    images = torch.randn(1, 3, 32, 32)
    cam, aux = multi_scale_cams(model, images)
    cam_f, aux_f = multi_scale_cams(model, images.flip(-1))
    torch.testing.assert_close(cam_f, cam.flip(-1))
    torch.testing.assert_close(aux_f, aux.flip(-1))


def test_cam_to_label_without_background():
    cam = torch.tensor([[[[0.9, 0.0, 0.2]], [[0.1, 0.0, 0.2]], [[0.5, 0.0, 0.1]]],
                        [[[0.3, 0.3, 0.3]], [[0.3, 0.3, 0.3]], [[0.3, 0.3, 0.3]]]])  # [2,3,1,3]
    cls = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    plain = cam_to_label(cam, cls, bkg_thre=0.5, has_background=False)
    # Class 0 is absent (never wins); no shift; ties go to the first present class; an image
    # without any class is all ignore.
    assert plain.tolist() == [[[2, 1, 1]], [[255, 255, 255]]]
    box = torch.tensor([[0, 1, 0, 3], [0, 1, 0, 3]])
    valid_cam, boxed = cam_to_label(cam, cls, img_box=box, ignore_mid=True, bkg_thre=0.5,
                                    high_thre=0.7, low_thre=0.25, has_background=False)
    # v <= low -> ignore (middle band keeps its class).
    assert boxed.tolist() == [[[2, 255, 255]], [[255, 255, 255]]]
    torch.testing.assert_close(valid_cam, cam * cls[:, :, None, None])


def test_cam_to_label_boxed_background_bands_and_box():
    cam = torch.tensor([0.1, 0.3, 0.55, 0.65, 0.75, 0.9]).reshape(1, 1, 1, 6).repeat(1, 1, 3, 1)
    cls = torch.ones(1, 1)
    box = torch.tensor([[1, 99, 0, 5]])  # rows 1.. (clamped), columns 0..4
    _, label = cam_to_label(cam, cls, img_box=box, ignore_mid=True, bkg_thre=0.6,
                            high_thre=0.7, low_thre=0.25)
    assert label[0, 0].tolist() == [255] * 6
    assert label[0, 1].tolist() == [0, 255, 255, 255, 1, 255]
    # bkg_thre > high: high < v <= bkg would be 0; here bkg 0.8 makes 0.75 background.
    _, label = cam_to_label(cam, cls, img_box=box, ignore_mid=True, bkg_thre=0.8,
                            high_thre=0.7, low_thre=0.25)
    assert label[0, 2].tolist() == [0, 255, 255, 255, 0, 255]


def test_cam_to_label_needs_thresholds_for_bands():
    with pytest.raises(ValueError, match="high_thre"):
        cam_to_label(torch.rand(1, 2, 4, 4), torch.ones(1, 2), img_box=torch.tensor([[0, 4, 0, 4]]),
                     ignore_mid=True, bkg_thre=0.5)


def test_box_mask_slices_like_python():
    box = torch.tensor([[2, 5, 1, 3], [4, 2, 0, 6], [0, 9, 7, 9]])
    mask = box_mask(box, 6, 6)
    for i, (h0, h1, w0, w1) in enumerate(box.tolist()):
        expected = torch.zeros(6, 6, dtype=torch.bool)
        expected[h0:h1, w0:w1] = True
        assert torch.equal(mask[i], expected)
    with pytest.raises(ValueError, match="negative"):
        box_mask(torch.tensor([[-1, 3, 0, 3]]), 6, 6)


def test_scale_box_examples():
    box = torch.tensor([[0, 320, 0, 320], [25, 300, 7, 313]], dtype=torch.int16)
    assert scale_box(box, 320, 20).tolist() == [[0, 20, 0, 20], [1, 19, 0, 20]]
    assert scale_box(torch.tensor([[10, 90, 30, 60]]), (100, 60), (7, 4)).tolist() == [
        [0, 7, 2, 4]
    ]


def test_scale_box_keeps_exactly_the_cells_that_touch_real_pixels():
    gen = torch.Generator().manual_seed(3)
    size_from, size_to = 100, 7
    starts = torch.randint(0, 100, (50, 2), generator=gen)
    ends = starts + torch.randint(1, 40, (50, 2), generator=gen)
    box = torch.stack([starts[:, 0], ends[:, 0], starts[:, 1], ends[:, 1]], dim=1)
    scaled = scale_box(box, size_from, size_to)
    for (h0, h1, _, _), (s0, s1, _, _) in zip(box.tolist(), scaled.tolist(), strict=True):
        h1 = min(h1, size_from)
        cell = Fraction(size_from, size_to)
        touching = [i for i in range(size_to) if i * cell < h1 and (i + 1) * cell > h0]
        assert list(range(s0, min(s1, size_to))) == touching


def test_label_to_aff_mask_matches_naive_loop():
    gen = torch.Generator().manual_seed(0)
    label = torch.randint(0, 4, (2, 3, 5), generator=gen)
    label[label == 3] = 255
    aff = label_to_aff_mask(label)
    flat = label.reshape(2, -1)
    n = flat.shape[1]
    for b in range(2):
        for i in range(n):
            for j in range(n):
                li, lj = int(flat[b, i]), int(flat[b, j])
                if i == j or li == 255 or lj == 255:
                    expected = 255
                else:
                    expected = int(li == lj)
                assert aff[b, i, j] == expected
    assert aff.dtype == torch.int64


def test_roi_mask_thresholds_inclusive():
    cam = torch.tensor([0.25, 0.3, 0.7, 0.69], dtype=torch.float32).reshape(1, 1, 1, 4)
    assert roi_mask(cam, torch.ones(1, 1), 0.7, 0.25).tolist() == [[[0, 1, 2, 1]]]


def coordinate_images(b: int, h: int, w: int) -> torch.Tensor:
    """Images whose channels hold (row, column, image index): crops reveal where they came from."""
    rows = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    cols = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
    return torch.stack([torch.stack([rows, cols, torch.full((h, w), float(i))]) for i in range(b)])


def test_local_crops_are_windows_centred_on_uncertain_pixels():
    b, h, w, size, k = 2, 40, 36, 10, 5
    gen = torch.Generator().manual_seed(1)
    roi = torch.full((b, h, w), 2, dtype=torch.int16)
    roi[0, 10:20, 8:30] = 1
    roi[0, 25:30, 5:15] = 0
    roi[1, 5:12, 5:12] = 0
    images = coordinate_images(b, h, w)
    crops, flags = sample_local_crops(images, roi, num_crops=k, crop_size=size, neg_ratio=0.2,
                                      generator=gen)
    assert crops.shape == (k * b, 3, size, size)
    assert flags.shape == (b, 2 + k) and flags.dtype == torch.float32
    assert torch.all(flags[:, :2] == 1)
    for r in range(k * b):
        crop, image = crops[r], r % b
        assert torch.all(crop[2] == image)  # crop-major rows
        top, left = int(crop[0, 0, 0]), int(crop[1, 0, 0])
        expected = images[image, :, top : top + size, left : left + size]
        assert torch.equal(crop, expected)  # a contiguous window inside the image
        assert roi[image, top + size // 2, left + size // 2] <= 1
        window = roi[image, top : top + size, left : left + size]
        negative = window.sum().item() / size**2 <= 0.2
        assert flags[image, 2 + r // b] == (0.0 if negative else 1.0)
    # Distinct centres per image (drawn without replacement).
    corners = {(int(c[0, 0, 0]), int(c[1, 0, 0]), int(c[2, 0, 0])) for c in crops}
    assert len(corners) == k * b


def test_local_crops_fall_back_to_any_pixel_and_pad_small_images():
    images = coordinate_images(1, 8, 9)
    roi = torch.full((1, 8, 9), 2, dtype=torch.int16)  # no uncertain pixel at all
    crops, flags = sample_local_crops(images, roi, num_crops=3, crop_size=12,
                                      generator=torch.Generator().manual_seed(0))
    assert crops.shape == (3, 3, 12, 12)
    assert torch.all(crops[:, :, 8:, :] == 0) and torch.all(crops[:, :, :, 9:] == 0)
    assert torch.equal(crops[0, :, :8, :9], images[0])
    # ROI 2 over 72 of the 144 pixels: mean 1.0 > 0.2, so every crop is positive.
    assert torch.all(flags == 1)


def test_local_crops_are_reproducible_with_a_generator():
    images, roi = torch.rand(2, 3, 24, 24), torch.randint(0, 3, (2, 24, 24), dtype=torch.int16)
    first = sample_local_crops(images, roi, num_crops=4, crop_size=8,
                               generator=torch.Generator().manual_seed(5))
    second = sample_local_crops(images, roi, num_crops=4, crop_size=8,
                                generator=torch.Generator().manual_seed(5))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def corners_of(crops: torch.Tensor, b: int) -> list[set[tuple[int, int]]]:
    """Per image, the set of (top, left) corners of crop-major coordinate-image crops."""
    found = [set() for _ in range(b)]
    for r, crop in enumerate(crops):
        found[r % b].add((int(crop[0, 0, 0]), int(crop[1, 0, 0])))
    return found


def drawn_corners(crops: torch.Tensor, b: int, cols: int) -> torch.Tensor:
    """``[B, K]`` corner indices ``top·cols + left`` of crop-major coordinate-image crops, in
    the order they were drawn (``torch.multinomial``'s layout)."""
    return torch.tensor([[int(crops[k * b + i, 0, 0, 0]) * cols + int(crops[k * b + i, 1, 0, 0])
                          for k in range(len(crops) // b)] for i in range(b)])


def test_local_crop_flags_by_the_mean_roi_of_each_window():
    # 12×12 images, crops of 4 (corners 0..7), 4 crops: each image has exactly 4 uncertain
    # centres, so the draw takes exactly those 4 (distinct, without replacement).
    roi = torch.full((2, 12, 12), 2, dtype=torch.int16)
    roi[0, 0:4, 0:4] = 0  # centres (2..3, 2..3) -> corners (0..1, 0..1)
    roi[1, 8:12, 8:12] = 1  # centres (8..9, 8..9) -> corners (6..7, 6..7)
    images = coordinate_images(2, 12, 12)
    crops, flags = sample_local_crops(images, roi, num_crops=4, crop_size=4, neg_ratio=0.5,
                                      generator=torch.Generator().manual_seed(0))
    assert corners_of(crops, 2) == [{(0, 0), (0, 1), (1, 0), (1, 1)},
                                    {(6, 6), (6, 7), (7, 6), (7, 7)}]
    # Image 0, by hand: window (0,0) is all 0 (mean 0); (0,1) and (1,0) hold 4 pixels of ROI 2
    # (mean 8/16 = 0.5 <= 0.5: negative, the tie included); (1,1) holds 7 (mean 0.875).
    # Image 1: every window holds ROI 1 or 2 only (means 1.75 to 1.9375): positive.
    expected = {0: {(0, 0): 0.0, (0, 1): 0.0, (1, 0): 0.0, (1, 1): 1.0},
                1: {(6, 6): 1.0, (6, 7): 1.0, (7, 6): 1.0, (7, 7): 1.0}}
    for r, crop in enumerate(crops):
        image, corner = r % 2, (int(crop[0, 0, 0]), int(crop[1, 0, 0]))
        assert flags[image, 2 + r // 2] == expected[image][corner]
    assert flags[:, :2].tolist() == [[1.0, 1.0], [1.0, 1.0]]


def test_local_crop_draws_are_torch_multinomial_with_the_generator():
    # Image 0 has 2 uncertain centres (< 4 crops: it falls back to every corner), image 1 has 9.
    roi = torch.full((2, 12, 12), 2, dtype=torch.int16)
    roi[0, 5, 5] = roi[0, 6, 7] = 0
    roi[1, 3:6, 4:7] = 1
    eligible = torch.zeros(2, 8, 8)
    eligible[0] = 1
    eligible[1, 1:4, 2:5] = 1  # centres (3..5, 4..6) minus the margin of 2
    expected = torch.multinomial(eligible.reshape(2, 64), 4, replacement=False,
                                 generator=torch.Generator().manual_seed(7))
    torch.manual_seed(123)  # the global generator must play no part
    crops, _ = sample_local_crops(coordinate_images(2, 12, 12), roi, num_crops=4, crop_size=4,
                                  generator=torch.Generator().manual_seed(7))
    assert torch.equal(drawn_corners(crops, 2, cols=8), expected)


def test_local_crops_with_replacement_only_when_corners_are_fewer_than_crops():
    roi = torch.zeros(1, 6, 6, dtype=torch.int16)  # crops of 4: a 2×2 grid of corners
    images = coordinate_images(1, 6, 6)
    crops, _ = sample_local_crops(images, roi, num_crops=4, crop_size=4,
                                  generator=torch.Generator().manual_seed(0))
    assert sorted((int(c[0, 0, 0]), int(c[1, 0, 0])) for c in crops) == [
        (0, 0), (0, 1), (1, 0), (1, 1)]  # 4 corners, 4 crops: each once
    expected = torch.multinomial(torch.ones(1, 4), 6, replacement=True,
                                 generator=torch.Generator().manual_seed(3))
    torch.manual_seed(123)
    crops, _ = sample_local_crops(images, roi, num_crops=6, crop_size=4,
                                  generator=torch.Generator().manual_seed(3))
    assert torch.equal(drawn_corners(crops, 1, cols=2), expected)
    # 9 corners for 5 crops: without replacement although rows / cols = 1 < 5.
    crops, _ = sample_local_crops(coordinate_images(1, 7, 7), torch.zeros(1, 7, 7), num_crops=5,
                                  crop_size=4, generator=torch.Generator().manual_seed(0))
    assert len(corners_of(crops, 1)[0]) == 5


def test_local_crop_centres_stop_a_margin_before_each_edge():
    # Only row 10 and column 10 (= 12 - margin) are uncertain: no corner has its centre there,
    # so the draw falls back to every corner of [0, 8)², never to a corner at 8.
    roi = torch.full((1, 12, 12), 2, dtype=torch.int16)
    roi[0, 10, :] = 0
    roi[0, :, 10] = 0
    crops, _ = sample_local_crops(coordinate_images(1, 12, 12), roi, num_crops=6, crop_size=4,
                                  generator=torch.Generator().manual_seed(2))
    assert all(top < 8 and left < 8 for top, left in corners_of(crops, 1)[0])


def test_local_crops_pad_only_the_short_side_and_keep_the_roi_aligned():
    # 12×6 images and crops of 6 (margin 3, so 7 pixels are needed): one column of zeros is
    # added on the right only, giving corners (0..5, 0) with centres (3..8, 3). The ROI's
    # uncertain centres are rows 3..6 of column 3: exactly 4, so the 4 crops are those corners.
    roi = torch.full((1, 12, 6), 2, dtype=torch.int16)
    roi[0, 3:7, 3] = 1
    images = coordinate_images(1, 12, 6)
    crops, _ = sample_local_crops(images, roi, num_crops=4, crop_size=6,
                                  generator=torch.Generator().manual_seed(0))
    assert corners_of(crops, 1)[0] == {(0, 0), (1, 0), (2, 0), (3, 0)}
    for crop in crops:  # an even crop never reaches the added column
        top = int(crop[0, 0, 0])
        assert torch.equal(crop, images[0, :, top : top + 6, :])
    # The transposed case pads one row at the bottom instead.
    crops, _ = sample_local_crops(images.transpose(2, 3), roi.transpose(1, 2), num_crops=4,
                                  crop_size=6, generator=torch.Generator().manual_seed(0))
    # Channels 0 and 1 still hold the untransposed row and column: the same four windows.
    assert corners_of(crops, 1)[0] == {(0, 0), (1, 0), (2, 0), (3, 0)}


def test_local_crop_arguments_are_checked():
    images, roi = torch.rand(1, 3, 8, 8), torch.zeros(1, 8, 8, dtype=torch.int16)
    crops, flags = sample_local_crops(images, roi, num_crops=1, crop_size=1)
    assert crops.shape == (1, 3, 1, 1) and flags.shape == (1, 3)
    for kwargs in ({"num_crops": 0, "crop_size": 4}, {"num_crops": 2, "crop_size": 0}):
        with pytest.raises(ValueError, match=r"^num_crops and crop_size must be at least 1$"):
            sample_local_crops(images, roi, **kwargs)
    with pytest.raises(ValueError, match=r"^roi \(1, 8, 7\) does not match images \(1, 8, 8\)$"):
        sample_local_crops(images, roi[:, :, :7])


def test_cam_to_label_bands_need_both_a_box_and_ignore_mid():
    cam = torch.tensor([0.1, 0.3, 0.55, 0.65, 0.75, 0.9]).reshape(1, 1, 1, 6)
    cls, box = torch.ones(1, 1), torch.tensor([[0, 1, 0, 6]])
    thresholds = {"bkg_thre": 0.6, "high_thre": 0.7, "low_thre": 0.25}
    plain = [0, 0, 0, 1, 1, 1]  # background where v <= 0.6
    assert cam_to_label(cam, cls, **thresholds).tolist() == [[plain]]
    assert cam_to_label(cam, cls, ignore_mid=True, **thresholds).tolist() == [[plain]]
    _, boxed = cam_to_label(cam, cls, img_box=box, **thresholds)  # ignore_mid is off by default
    assert boxed.tolist() == [[plain]]
    _, banded = cam_to_label(cam, cls, img_box=box, ignore_mid=True, **thresholds)
    assert banded.tolist() == [[[0, 255, 255, 255, 1, 1]]]


def test_cam_to_label_without_background_ignores_the_low_threshold_itself():
    cam = torch.tensor([0.25, 0.2500001]).reshape(1, 1, 1, 2)
    _, label = cam_to_label(cam, torch.ones(1, 1), img_box=torch.tensor([[0, 1, 0, 2]]),
                            ignore_mid=True, bkg_thre=0.5, high_thre=0.7, low_thre=0.25,
                            has_background=False)
    assert label.tolist() == [[[255, 0]]]


def test_cam_to_label_and_roi_mask_errors_name_the_shapes():
    cam, box = torch.rand(1, 2, 4, 4), torch.tensor([[0, 4, 0, 4]])
    for missing in ({"high_thre": 0.7}, {"low_thre": 0.25}):
        with pytest.raises(ValueError, match=r"^ignore_mid needs both high_thre and low_thre$"):
            cam_to_label(cam, torch.ones(1, 2), img_box=box, ignore_mid=True, bkg_thre=0.5,
                         **missing)
    with pytest.raises(ValueError, match=r"^cls_label \(1, 3\) does not match cam \(1, 2\)$"):
        cam_to_label(cam, torch.ones(1, 3), bkg_thre=0.5)
    with pytest.raises(ValueError, match=r"^cls_label \(2, 2\) does not match cam \(1, 2\)$"):
        roi_mask(cam, torch.ones(2, 2), 0.7, 0.25)


def test_box_mask_and_scale_box_errors():
    for box in (torch.tensor([[0, 4, 0]]), torch.tensor([0, 4, 0, 4])):
        message = f"img_box must be [B, 4], got {tuple(box.shape)}"
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            box_mask(box, 4, 4)
    with pytest.raises(ValueError, match=r"^img_box holds a negative coordinate; boxes are "
                                         r"\[h0, h1, w0, w1\] >= 0$"):
        box_mask(torch.tensor([[0, 4, -1, 4]]), 4, 4)
    box = torch.tensor([[0, 4, 0, 4]])
    for sizes in (((0, 4), (2, 2)), ((4, 0), (2, 2)), ((4, 4), (0, 2)), ((4, 4), (2, 0))):
        with pytest.raises(ValueError, match=r"^sizes must be positive, got from \("):
            scale_box(box, *sizes)
    assert scale_box(box, 4, 1).tolist() == [[0, 1, 0, 1]]  # size 1 is positive
    assert scale_box(torch.tensor([[0, 1, 0, 1]]), 1, 3).tolist() == [[0, 3, 0, 3]]


def test_scale_box_of_int16_boxes_does_not_overflow():
    # 1024 × 64 = 65536 does not fit int16: the box must be widened before scaling.
    box = torch.tensor([[0, 1024, 512, 1024]], dtype=torch.int16)
    assert scale_box(box, 1024, 64).tolist() == [[0, 64, 32, 64]]
