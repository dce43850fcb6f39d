"""Sliding windows over a scene, the blending weights that hide tile borders, and the row band
where overlapping window predictions are blended and normalised.

Contract:

* **Grid.** :class:`WindowGrid` covers every pixel of a ``height × width`` scene with square
  windows of ``tile`` pixels, ``tile - overlap`` apart; the last row and column of windows are
  flush with the scene border. Along an axis shorter than the tile there is one window, and
  the model input is padded to the full tile (the padding is zero in normalised space and gets
  no weight, so it never reaches the output).
* **Weights.** :func:`blend_weights` is a 2-D Hann window with a small floor: tile centres
  dominate, tile borders fade out, and scene border pixels covered by a single window still
  get a positive weight.
* **Normalisation.** :class:`BandAccumulator` sums ``weight · probability`` and ``weight`` per
  pixel and divides by the weight each pixel actually received, so the result is a convex
  combination of window predictions wherever the pixel was seen (and marked invalid where its
  weight is zero: nodata pixels are given weight zero by the caller).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

# Weight of the outermost tile pixels relative to the centre; large enough to stay well above
# float32 rounding after normalisation, small enough not to bring tile borders back as seams.
BLEND_FLOOR = 1e-3


def axis_starts(length: int, tile: int, stride: int) -> list[int]:
    """Window start offsets along one axis: ``0, stride, 2·stride …`` and one flush with the end.

    Args:
        length: scene size along the axis, in pixels (> 0).
        tile: window size in pixels (> 0).
        stride: step between windows in pixels, ``0 < stride <= tile``.

    Returns:
        Increasing offsets; ``[0]`` when ``length <= tile`` (a single, padded window).
    """
    if length <= tile:
        return [0]
    return [*range(0, length - tile, stride), length - tile]


@dataclass(frozen=True)
class GridWindow:
    """One window of the grid, in scene pixels.

    Attributes:
        row, col: top-left corner in the scene.
        height, width: the part inside the scene (``<= tile``; smaller only when the scene is
            smaller than a tile along that axis, the rest of the tile is padding).
        grid_row: index of the window row this window belongs to.
        last_in_row: True for the last window of its row: once it is blended, rows above the
            next window row are final.
    """

    row: int
    col: int
    height: int
    width: int
    grid_row: int
    last_in_row: bool


@dataclass(frozen=True)
class WindowGrid:
    """Square windows covering a ``height × width`` scene with ``overlap`` pixels of overlap.

    Raises:
        ValueError: a non-positive size, or ``overlap`` outside ``[0, tile)``.
    """

    height: int
    width: int
    tile: int
    overlap: int

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0 or self.tile <= 0:
            raise ValueError("scene and tile sizes must be positive")
        if not 0 <= self.overlap < self.tile:
            raise ValueError(f"overlap must be in [0, tile={self.tile}), got {self.overlap}")

    @property
    def stride(self) -> int:
        """Step between neighbouring windows, in pixels."""
        return self.tile - self.overlap

    @cached_property
    def row_starts(self) -> list[int]:
        """Top rows of the window rows."""
        return axis_starts(self.height, self.tile, self.stride)

    @cached_property
    def col_starts(self) -> list[int]:
        """Left columns of the window columns."""
        return axis_starts(self.width, self.tile, self.stride)

    @property
    def band_height(self) -> int:
        """Rows of one window row: the height of the band read and blended at a time."""
        return min(self.tile, self.height)

    def __len__(self) -> int:
        return len(self.row_starts) * len(self.col_starts)

    def finished_until(self, grid_row: int) -> int:
        """First scene row still open once window row ``grid_row`` is blended.

        Rows above it receive no contribution from later windows.
        """
        return self.row_starts[grid_row + 1] if grid_row + 1 < len(self.row_starts) \
            else self.height

    def windows(self) -> Iterator[GridWindow]:
        """All windows, row-major (the order the sweep reads, predicts and blends them)."""
        height, width = self.band_height, min(self.tile, self.width)
        last_col = len(self.col_starts) - 1
        for grid_row, row in enumerate(self.row_starts):
            for i, col in enumerate(self.col_starts):
                yield GridWindow(row, col, height, width, grid_row, i == last_col)


def blend_weights(tile: int, *, floor: float = BLEND_FLOOR) -> Tensor:
    """2-D Hann blending window with a floor.

    Returns:
        ``[tile, tile]`` float32 weights in ``[floor, 1]``, symmetric, largest at the centre.
    """
    centres = (torch.arange(tile, dtype=torch.float64) + 0.5) / tile
    ramp = torch.sin(math.pi * centres).square().clamp_min(floor)
    return torch.outer(ramp, ramp).float()


class BandAccumulator:
    """Weighted sum of window probabilities over a band of scene rows ``[top, top + capacity)``.

    Windows are added in row-major order; :meth:`pop` returns the normalised probabilities of
    the rows no later window touches and slides the band down. Memory: ``(C + 1) · capacity ·
    width`` float32 on ``device``, independent of the scene height.

    Args:
        num_classes: ``C``.
        width: scene width in pixels.
        capacity: band height in rows (the window height, :attr:`WindowGrid.band_height`).
        device: where the sums live (the predictor's output device, so blending stays there).
    """

    def __init__(self, num_classes: int, width: int, capacity: int,
                 device: torch.device | str = "cpu") -> None:
        self.top = 0
        self._sum = torch.zeros(num_classes, capacity, width, device=device)
        self._weight = torch.zeros(capacity, width, device=device)

    def add(self, window: GridWindow, probs: Tensor, weight: Tensor) -> None:
        """Blend one window in.

        Args:
            window: its place in the scene; ``window.row`` must lie in the current band.
            probs: ``[C, tile, tile]`` float probabilities of the (padded) window.
            weight: ``[tile, tile]`` float blending weight, zero where the pixel is nodata.

        Raises:
            ValueError: the window reaches outside the current band.
        """
        top = window.row - self.top
        if top < 0 or top + window.height > self._weight.shape[0]:
            raise ValueError(f"window at row {window.row} is outside the band at {self.top}")
        rows = slice(top, top + window.height)
        cols = slice(window.col, window.col + window.width)
        weight = weight[: window.height, : window.width]
        self._sum[:, rows, cols].addcmul_(probs[:, : window.height, : window.width], weight)
        self._weight[rows, cols] += weight

    def pop(self, stop: int) -> tuple[Tensor, Tensor]:
        """Return scene rows ``[top, stop)`` normalised and slide the band down to ``stop``.

        Returns:
            ``(probs [C, n, width] float32, valid [n, width] bool)`` with ``n = stop - top``;
            ``probs`` sums to 1 over classes where ``valid`` (the pixel received weight) and
            is 0 elsewhere.
        """
        n = stop - self.top
        weight = self._weight[:n]
        valid = weight > 0
        probs = self._sum[:, :n] / torch.where(valid, weight, 1.0)
        # Slide: the rows still open move to the top, the freed rows start from zero.
        self._sum = torch.cat([self._sum[:, n:], torch.zeros_like(self._sum[:, :n])], dim=1)
        self._weight = torch.cat([self._weight[n:], torch.zeros_like(weight)], dim=0)
        self.top = stop
        return probs, valid
