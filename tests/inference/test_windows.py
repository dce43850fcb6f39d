"""Window grid, blending weights and the row-band accumulator."""

from __future__ import annotations

import pytest
import torch

from ctfa_cli.inference.windows import (
    BLEND_FLOOR,
    BandAccumulator,
    WindowGrid,
    axis_starts,
    blend_weights,
)


@pytest.mark.parametrize("length,tile,stride", [
    (1000, 256, 192), (256, 256, 192), (257, 256, 192), (100, 256, 192), (513, 64, 64),
    (97, 32, 1), (640, 160, 120),
])
def test_axis_starts_cover_every_pixel_with_last_window_flush(length, tile, stride):
    starts = axis_starts(length, tile, stride)
    assert starts == sorted(set(starts))
    assert starts[0] == 0
    if length <= tile:
        assert starts == [0]
        return
    assert starts[-1] == length - tile  # flush with the border, never past it
    covered = torch.zeros(length, dtype=torch.bool)
    for start in starts:
        covered[start:start + tile] = True
    assert covered.all()
    assert all(b - a <= stride for a, b in zip(starts, starts[1:], strict=False))


def test_grid_windows_are_row_major_and_mark_row_ends():
    grid = WindowGrid(height=150, width=230, tile=64, overlap=16)
    windows = list(grid.windows())
    assert len(windows) == len(grid) == len(grid.row_starts) * len(grid.col_starts)
    assert [w.row for w in windows] == sorted(w.row for w in windows)
    assert sum(w.last_in_row for w in windows) == len(grid.row_starts)
    assert all(w.height == w.width == 64 for w in windows)
    assert grid.finished_until(len(grid.row_starts) - 1) == 150


def test_grid_of_a_scene_smaller_than_the_tile_has_one_padded_window():
    grid = WindowGrid(height=40, width=30, tile=64, overlap=16)
    (window,) = grid.windows()
    assert (window.row, window.col, window.height, window.width) == (0, 0, 40, 30)
    assert grid.band_height == 40


@pytest.mark.parametrize("overlap", [-1, 64, 100])
def test_grid_rejects_an_overlap_outside_the_tile(overlap):
    with pytest.raises(ValueError, match="overlap"):
        WindowGrid(height=100, width=100, tile=64, overlap=overlap)


def test_blend_weights_are_a_floored_symmetric_hann_window():
    weights = blend_weights(64)
    assert weights.shape == (64, 64) and weights.dtype == torch.float32
    assert torch.equal(weights, weights.T) and torch.equal(weights, weights.flip(0))
    assert weights.min() >= BLEND_FLOOR ** 2 and weights.max() <= 1
    assert weights[32, 32] > 0.99 and weights[0, 0] < 1e-3
    # Hann: the weights rise monotonically from the border to the centre.
    assert (weights[32, 1:33] >= weights[32, :32]).all()


def _sweep_windows(grid: WindowGrid, field: torch.Tensor, valid: torch.Tensor) -> tuple:
    """Blend windows cut from a global ``field`` [C, H, W] the way the sweep does."""
    accumulator = BandAccumulator(field.shape[0], grid.width, grid.band_height)
    weights = blend_weights(grid.tile)
    rows, masks = [], []
    for window in grid.windows():
        tile_probs = torch.zeros(field.shape[0], grid.tile, grid.tile)
        tile_valid = torch.zeros(grid.tile, grid.tile)
        r, c, h, w = window.row, window.col, window.height, window.width
        tile_probs[:, :h, :w] = field[:, r:r + h, c:c + w]
        tile_valid[:h, :w] = valid[r:r + h, c:c + w]
        accumulator.add(window, tile_probs, weights * tile_valid)
        if window.last_in_row:
            top = accumulator.top
            probs, ok = accumulator.pop(grid.finished_until(window.grid_row))
            assert probs.shape[1] == grid.finished_until(window.grid_row) - top
            rows.append(probs)
            masks.append(ok)
    return torch.cat(rows, dim=1), torch.cat(masks, dim=0)


@pytest.mark.parametrize("height,width,tile,overlap", [
    (150, 230, 64, 16), (64, 64, 64, 0), (40, 170, 64, 32), (130, 20, 32, 8),
])
def test_accumulator_reproduces_a_position_independent_field(height, width, tile, overlap):
    generator = torch.Generator().manual_seed(1)
    field = torch.rand(5, height, width, generator=generator).softmax(0)
    valid = torch.ones(height, width)
    grid = WindowGrid(height, width, tile, overlap)
    probs, ok = _sweep_windows(grid, field, valid)
    assert probs.shape == field.shape and ok.all()
    torch.testing.assert_close(probs, field, rtol=0, atol=1e-6)


def test_accumulator_marks_zero_weight_pixels_invalid_and_zero():
    generator = torch.Generator().manual_seed(2)
    field = torch.rand(3, 90, 110, generator=generator).softmax(0)
    valid = torch.ones(90, 110)
    valid[10:30, 40:70] = 0
    probs, ok = _sweep_windows(WindowGrid(90, 110, 32, 8), field, valid)
    assert torch.equal(ok, valid.bool())
    assert probs[:, ~ok].abs().max() == 0
    torch.testing.assert_close(probs[:, ok], field[:, ok], rtol=0, atol=1e-6)


def test_accumulator_refuses_a_window_outside_its_band():
    grid = WindowGrid(200, 64, 64, 0)
    accumulator = BandAccumulator(2, 64, grid.band_height)
    far = list(grid.windows())[2]
    with pytest.raises(ValueError, match="outside the band"):
        accumulator.add(far, torch.zeros(2, 64, 64), torch.ones(64, 64))
