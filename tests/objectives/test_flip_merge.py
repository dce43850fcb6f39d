"""multi_scale_cams on a hand-computed case: flips merged by their maximum, ReLU, sum over
scales, min-max normalisation (the reference ``multi_scale_cam2``; FORMAT.md section 14 step 2).

The fake network is not flip-equivariant: its raw CAM is the column index minus one, whatever
the image. So the flipped pass, flipped back, is the reversed ramp, and the merge decides the
result: the maximum of ``[-1, 0, 1, 2]`` and ``[2, 1, 0, -1]`` is ``[2, 1, 1, 2]``, their mean is
the constant ``0.5`` (which normalises to 0).
"""

from __future__ import annotations

import torch

from ctfa_cli.objectives.cam import multi_scale_cams

NORM = 1 / (1 + 1e-5)  # (x - min) / (max - min + 1e-5) of a map whose range is 1


class RampNet:
    """``cams(x)``: final CAM = column index − 1, aux CAM = 2 − column index, ``[N, 1, h, w]``."""

    def cams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, _, h, w = x.shape
        cols = torch.arange(w, dtype=torch.float32).expand(n, 1, h, w)
        return cols - 1, 2 - cols


def test_flips_merge_by_maximum_at_one_scale():
    images = torch.zeros(1, 3, 2, 4)
    cam, aux = multi_scale_cams(RampNet(), images, scales=(1.0,))
    # max([-1,0,1,2], [2,1,0,-1]) = [2,1,1,2] → ReLU → normalised [1,0,0,1]
    expected = torch.tensor([NORM, 0.0, 0.0, NORM]).expand(1, 1, 2, 4)
    torch.testing.assert_close(cam, expected, rtol=0, atol=1e-6)
    # aux: max([2,1,0,-1], [-1,0,1,2]) = [2,1,1,2], the same
    torch.testing.assert_close(aux, expected, rtol=0, atol=1e-6)


def test_relu_before_the_sum_over_scales():
    images = torch.zeros(1, 3, 2, 4)
    cam, _ = multi_scale_cams(RampNet(), images, scales=(1.0, 0.5))
    # Scale 0.5: a 1×2 image; raw [-1, 0], flipped back [0, -1]; max [0, 0]; ReLU [0, 0]:
    # upsampled, nothing is added. Scale 1 gives [2,1,1,2] (above): normalised [1,0,0,1].
    expected = torch.tensor([NORM, 0.0, 0.0, NORM]).expand(1, 1, 2, 4)
    torch.testing.assert_close(cam, expected, rtol=0, atol=1e-6)


def test_without_flip_the_plain_map_is_normalised():
    images = torch.zeros(1, 3, 1, 4)
    cam, _ = multi_scale_cams(RampNet(), images, scales=(1.0,), flip=False)
    # ReLU([-1,0,1,2]) = [0,0,1,2] → /(2 + 1e-5)
    expected = torch.tensor([0.0, 0.0, 1.0, 2.0]) / (2 + 1e-5)
    torch.testing.assert_close(cam, expected.expand(1, 1, 1, 4), rtol=0, atol=1e-6)
