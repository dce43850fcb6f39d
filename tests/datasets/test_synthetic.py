"""Synthetic georeferenced scenes: determinism, georeferencing, classes, label signal, splits."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from ctfa_cli.datasets.registry import get_spec
from ctfa_cli.datasets.synthetic import (
    CAR,
    IMPERVIOUS,
    PIXEL_SIZE_RANGE,
    draw_scene,
    generate_scenes,
    synthetic_split,
)
from ctfa_cli.datasets.tiling import window_grid
from ctfa_cli.errors import CtfaUsageError


def _read(path):
    with rasterio.open(path) as src:
        return src.read(), src.transform, src.crs, src.profile, src


def test_same_seed_same_scenes_other_seed_other_scenes(tmp_path):
    a = generate_scenes(tmp_path / "a", scenes=2, size=96, seed=3)
    b = generate_scenes(tmp_path / "b", scenes=2, size=96, seed=3)
    c = generate_scenes(tmp_path / "c", scenes=2, size=96, seed=4)
    for ra, rb, rc in zip(a, b, c, strict=True):
        image_a, transform_a, *_ = _read(ra.image)
        image_b, transform_b, *_ = _read(rb.image)
        image_c, *_ = _read(rc.image)
        np.testing.assert_array_equal(image_a, image_b)
        np.testing.assert_array_equal(_read(ra.label)[0], _read(rb.label)[0])
        assert transform_a == transform_b
        assert not np.array_equal(image_a, image_c)


def test_a_scene_does_not_depend_on_the_number_of_scenes(tmp_path):
    one = generate_scenes(tmp_path / "one", scenes=1, size=64, seed=0)
    three = generate_scenes(tmp_path / "three", scenes=3, size=64, seed=0)
    np.testing.assert_array_equal(_read(one[0].image)[0], _read(three[0].image)[0])
    np.testing.assert_array_equal(_read(one[0].label)[0], _read(three[0].label)[0])


def test_scenes_are_georeferenced_rgb_and_labelled(tmp_path):
    records = generate_scenes(tmp_path, scenes=3, size=64, seed=1)
    palette = get_spec("synthetic").palette
    bounds = []
    for i, record in enumerate(records):
        assert record.scene_id == f"scene_{i:03d}" and record.label_kind == "index"
        assert record.image.name == f"scene_{i:03d}.tif"
        assert record.label.name == f"scene_{i:03d}_label.tif"
        image, transform, crs, profile, src = _read(record.image)
        assert crs.to_epsg() == 32633 and profile["dtype"] == "uint8" and image.shape[0] == 3
        assert transform.b == transform.d == 0 and transform.e == -transform.a  # north up
        assert PIXEL_SIZE_RANGE[0] <= transform.a <= PIXEL_SIZE_RANGE[1]
        assert 166_000 < transform.c < 834_000  # a plausible UTM easting
        bounds.append(src.bounds)
        label, label_transform, label_crs, *_ = _read(record.label)
        assert label_transform == transform and label_crs == crs
        assert label.dtype == np.uint8 and label.max() <= 5
        with rasterio.open(record.label) as src:
            assert src.colormap(1)[1][:3] == tuple(palette[1])
    for left, right in zip(bounds, bounds[1:], strict=False):
        assert right.left > left.right  # different origins, no overlap


def test_generation_reuses_finished_scenes(tmp_path):
    records = generate_scenes(tmp_path, scenes=2, size=64, seed=1)
    stamps = [r.image.stat().st_mtime_ns for r in records]
    first = _read(records[0].image)[0]
    again = generate_scenes(tmp_path, scenes=2, size=64, seed=1)
    assert again == records and [r.image.stat().st_mtime_ns for r in again] == stamps
    other = generate_scenes(tmp_path, scenes=2, size=64, seed=2)  # other seed: drawn again
    assert other[0].image == records[0].image
    assert not np.array_equal(_read(other[0].image)[0], first)


@pytest.fixture(scope="module")
def drawn():
    """Four 320-px scenes at 0.25 m and their 80-px chips' class sets."""
    scenes = [draw_scene(np.random.default_rng([7, i]), 320, 0.25) for i in range(4)]
    chip_sets = [frozenset(np.unique(label[w.row_off:w.row_off + 80,
                                           w.col_off:w.col_off + 80]).tolist())
                 for _, label in scenes for w in window_grid(320, 320, 80, 80)]
    return scenes, chip_sets


def test_all_classes_drawn_and_image_level_labels_carry_signal(drawn):
    scenes, chip_sets = drawn
    assert set().union(*chip_sets) == set(range(6))
    foreground = [s - {IMPERVIOUS} for s in chip_sets]
    assert len(set(foreground)) >= 6  # many different label subsets
    for k in range(1, 6):
        with_k = sum(k in s for s in foreground)
        assert 0 < with_k < len(foreground), f"class {k} is in every chip or in none"
    for image, label in scenes:
        assert image.shape == (3, 320, 320) and image.dtype == np.uint8
        assert (label == 1).any()  # every scene has buildings somewhere


def test_classes_look_different(drawn):
    scenes, _ = drawn
    image = np.concatenate([im.reshape(3, -1) for im, _ in scenes], axis=1).astype(float)
    label = np.concatenate([lab.ravel() for _, lab in scenes])
    means = {k: image[:, label == k].mean(1) for k in range(6)}
    assert means[2][1] > means[2][0] and means[3][1] > means[3][2]  # vegetation is green
    assert means[3].sum() < means[2].sum()  # crowns darker than lawns and fields
    assert np.ptp(means[0]) < 20  # impervious surfaces are grey


def test_cars_only_on_roads_and_parking_lots(drawn):
    scenes, _ = drawn
    neighbours = []
    for _, label in scenes:
        car = label == CAR
        ring = np.zeros_like(car)
        for dy, dx in ((-2, 0), (2, 0), (0, -2), (0, 2)):
            ring |= np.roll(np.roll(car, dy, 0), dx, 1)
        neighbours.append(label[ring & ~car])
    neighbours = np.concatenate(neighbours)
    assert neighbours.size > 100
    # trees may overhang a car; everything else around it is paved
    assert np.isin(neighbours, [IMPERVIOUS, 3]).mean() > 0.95


@pytest.mark.parametrize("count, splits", [
    (1, ["train"]), (2, ["train", "test"]), (3, ["train", "val", "test"]),
    (8, ["train"] * 6 + ["val", "test"]), (16, ["train"] * 12 + ["val"] * 2 + ["test"] * 2)])
def test_split_rule(count, splits):
    assert [synthetic_split(i, count) for i in range(count)] == splits


def test_bad_counts_are_usage_errors(tmp_path):
    with pytest.raises(CtfaUsageError, match="--scenes"):
        generate_scenes(tmp_path, scenes=0, size=64, seed=0)
    with pytest.raises(CtfaUsageError, match="--size"):
        generate_scenes(tmp_path, scenes=1, size=16, seed=0)
