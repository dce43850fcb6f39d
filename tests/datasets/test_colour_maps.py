"""Dataset colour maps against each dataset's own documentation, typed out here.

* ISPRS Potsdam / Vaihingen (ISPRS 2D semantic labeling web page): impervious surfaces white,
  building blue, low vegetation cyan, tree green, car yellow, clutter/background red.
* iSAID: ``labels.py`` of the iSAID devkit (preprocess/cityscapesScripts), RGB order.
* DeepGlobe Land Cover (challenge paper, Demir et al. 2018, and its ``class_dict.csv``).

Each test paints a label image with the documented colours (one stripe per class) and decodes
it the way ``prepare`` does (the spec's palette through ``decode_color_mask``), so the tables
are never compared with the readers' own constants.
"""

from __future__ import annotations

import numpy as np
import pytest

from ctfa_cli.datasets.readers.deepglobe import COLOR_THRESHOLD
from ctfa_cli.datasets.readers.potsdam import isprs_color_map
from ctfa_cli.datasets.registry import get_spec
from ctfa_cli.datasets.tiling import decode_color_mask

ISPRS = [
    ("impervious_surfaces", (255, 255, 255)),
    ("building", (0, 0, 255)),
    ("low_vegetation", (0, 255, 255)),
    ("tree", (0, 255, 0)),
    ("car", (255, 255, 0)),
    ("clutter", (255, 0, 0)),
]
ISAID = [
    ("background", (0, 0, 0)),
    ("ship", (0, 0, 63)),
    ("storage_tank", (0, 63, 63)),
    ("baseball_diamond", (0, 63, 0)),
    ("tennis_court", (0, 63, 127)),
    ("basketball_court", (0, 63, 191)),
    ("ground_track_field", (0, 63, 255)),
    ("bridge", (0, 127, 63)),
    ("large_vehicle", (0, 127, 127)),
    ("small_vehicle", (0, 0, 127)),
    ("helicopter", (0, 0, 191)),
    ("swimming_pool", (0, 0, 255)),
    ("roundabout", (0, 191, 127)),
    ("soccer_ball_field", (0, 127, 191)),
    ("plane", (0, 127, 255)),
    ("harbor", (0, 100, 155)),
]
DEEPGLOBE = [
    ("urban", (0, 255, 255)),
    ("agriculture", (255, 255, 0)),
    ("rangeland", (255, 0, 255)),
    ("forest", (0, 255, 0)),
    ("water", (0, 0, 255)),
    ("barren", (255, 255, 255)),
    ("unknown", (0, 0, 0)),
]
TABLES = {"potsdam": ISPRS, "vaihingen": ISPRS, "isaid": ISAID, "deepglobe": DEEPGLOBE}


def _painted(table) -> np.ndarray:
    """``[3, 4, 2·len(table)]`` uint8: two columns per class, in table order."""
    colours = np.repeat(np.array([c for _, c in table], dtype=np.uint8), 2, axis=0)  # [2K, 3]
    return np.broadcast_to(colours.T[:, None, :], (3, 4, colours.shape[0])).copy()


def _decode(name: str, rgb: np.ndarray, threshold: int | None = None) -> np.ndarray:
    spec = get_spec(name)
    pairs = [(tuple(c), i) for i, c in enumerate(spec.palette)]
    mask, unknown = decode_color_mask(rgb, pairs, spec.ignore_index, threshold)
    assert not unknown, f"{name}: undecoded colours {unknown}"
    return mask


@pytest.mark.parametrize("name", sorted(TABLES))
def test_documented_colours_decode_to_their_classes(name):
    table = TABLES[name]
    assert get_spec(name).classes == [n for n, _ in table]
    mask = _decode(name, _painted(table))
    expected = np.repeat(np.arange(len(table), dtype=np.uint8), 2)
    np.testing.assert_array_equal(mask, np.broadcast_to(expected, mask.shape))


def test_isprs_full_labels_use_the_six_documented_colours():
    pairs = isprs_color_map(get_spec("potsdam"), no_boundary=False)
    decoded = dict(pairs) if pairs is not None else {
        tuple(c): i for i, c in enumerate(get_spec("potsdam").palette)}
    assert decoded == {colour: i for i, (_, colour) in enumerate(ISPRS)}


def test_deepglobe_noisy_colours_are_thresholded_at_128():
    rgb = _painted(DEEPGLOBE).astype(np.int16)
    noise = np.where(rgb == 255, -60, 60)  # 195 or 60: still on their side of 128
    assert COLOR_THRESHOLD == 128  # docs/datasets.md
    mask = _decode("deepglobe", (rgb + noise).astype(np.uint8), threshold=COLOR_THRESHOLD)
    expected = np.repeat(np.arange(len(DEEPGLOBE), dtype=np.uint8), 2)
    np.testing.assert_array_equal(mask, np.broadcast_to(expected, mask.shape))


def test_deepglobe_has_no_background_class():
    spec = get_spec("deepglobe")
    assert not spec.has_background and spec.num_cam_classes == len(DEEPGLOBE)
