"""Helpers the raw-layout readers share: finding folders and files, seeded splits, palettes."""

from __future__ import annotations

import dataclasses
import logging
import re
import warnings
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from ctfa_cli.config import DatasetSpec, load_yaml, validation_message
from ctfa_cli.datasets.scenes import SceneRecord
from ctfa_cli.errors import CtfaError, CtfaUsageError

log = logging.getLogger("ctfa.datasets.readers")

SPLITS = ("train", "val", "test")


def require_source(source: Path, layout: str) -> Path:
    """Return ``source`` if it is a folder.

    Raises:
        CtfaError: ``source`` does not exist or is not a folder.
    """
    source = Path(source)
    if not source.is_dir():
        raise CtfaError(f"{source}: no such folder; expected {layout}")
    return source


def require_dir(source: Path, names: Sequence[str], layout: str) -> Path:
    """Return the first of ``names`` that is a folder under ``source``.

    Raises:
        CtfaError: none of them exists; the message names them and the expected layout.
    """
    for name in names:
        if (source / name).is_dir():
            return source / name
    wanted = " or ".join(f"`{name}`" for name in names)
    raise CtfaError(f"no {wanted} folder under {source}; expected {layout}")


def index_files(
    folder: Path, pattern: str, key: Callable[[re.Match[str]], Hashable]
) -> dict[Hashable, Path]:
    """Find files under ``folder`` (recursively) whose name matches ``pattern``, by key.

    Recursion accepts the usual unpacking variants (files directly in the folder, or in a
    sub-folder named after the zip archive). Names that do not match (world files, sidecars)
    are left out.

    Args:
        folder: where to look.
        pattern: regular expression matched against the whole file name.
        key: turns a match into the key of the file (e.g. a tile id).

    Raises:
        CtfaError: two files map to the same key.
    """
    regex = re.compile(pattern)
    found: dict[Hashable, Path] = {}
    for path in sorted(folder.rglob("*")):
        match = regex.fullmatch(path.name)
        if match is None or not path.is_file():
            continue
        k = key(match)
        if k in found:
            raise CtfaError(f"{path} and {found[k]} are the same scene; keep only one of them")
        found[k] = path
    return found


def seeded_split(
    ids: Sequence[str], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, str]:
    """Assign whole scenes to ``train``/``val``/``test`` with a seeded permutation.

    The ids are sorted first, so the split depends only on the set of ids and the seed, never
    on the order the file system lists them. ``round(n * fraction)`` scenes go to ``test``,
    then to ``val``; the rest is ``train``.

    Raises:
        CtfaUsageError: fractions outside [0, 1) or summing to 1 or more.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise CtfaUsageError(
            f"--val-fraction {val_fraction} and --test-fraction {test_fraction} must be in [0, 1) "
            "and leave some scenes for training"
        )
    ordered = sorted(ids)
    order = np.random.default_rng(seed).permutation(len(ordered))
    n_test = round(len(ordered) * test_fraction)
    n_val = round(len(ordered) * val_fraction)
    splits = {}
    for rank, i in enumerate(order):
        splits[ordered[i]] = ("test" if rank < n_test else
                              "val" if rank < n_test + n_val else "train")
    return splits


def carve_validation(scenes: Sequence[SceneRecord], fraction: float,
                     seed: int) -> list[SceneRecord]:
    """Move a seeded share of the ``train`` scenes to ``val`` (benchmarks whose release has no
    validation split, so that model selection does not look at the test split).

    ``round(n_train · fraction)`` train scenes, at least one when ``fraction`` > 0, chosen by
    :func:`seeded_split` on the sorted train ids (so the choice depends only on the ids and the
    seed); other splits are kept.

    Raises:
        CtfaUsageError: ``fraction`` outside [0, 1), or no train scene would be left.
    """
    train = [s.scene_id for s in scenes if s.split == "train"]
    if not 0 <= fraction < 1:
        raise CtfaUsageError(f"--val-fraction {fraction} must be in [0, 1)")
    if fraction == 0 or not train:
        return list(scenes)
    # At least one validation scene: a fraction that rounds to none would silently select on
    # the test split again.
    fraction = max(fraction, 0.5 / len(train) + 1e-9)
    if round(len(train) * fraction) >= len(train):
        raise CtfaUsageError(f"--val-fraction {fraction:g} leaves none of the {len(train)} "
                             "training scenes for training; lower it")
    chosen = seeded_split(train, fraction, 0.0, seed)
    return [dataclasses.replace(s, split=chosen[s.scene_id]) if s.split == "train" else s
            for s in scenes]


def with_palette(spec: DatasetSpec, path: Path) -> DatasetSpec:
    """Return ``spec`` with the colour map read from a YAML file (``palette: [[r, g, b], …]``).

    The list gives one RGB colour per class, in class order (the same field as in
    ``dataset.yaml`` and ``classes.yaml``); colour masks are then decoded with it.

    Raises:
        CtfaUsageError: the file is missing, has no ``palette`` list, or the wrong number of
            colours.
    """
    fields = load_yaml(path)
    if "palette" not in fields:
        raise CtfaUsageError(f"{path}: no `palette` key; expected palette: [[r, g, b], …]")
    try:
        return DatasetSpec(**{**spec.model_dump(), "palette": fields["palette"]})
    except ValidationError as exc:
        raise CtfaUsageError(f"{path}: {validation_message(exc)}") from exc


def band_count(path: Path) -> int:
    """Number of bands of a raster (reads the header only).

    Raises:
        CtfaError: GDAL cannot open the file.
    """
    import rasterio

    try:
        with warnings.catch_warnings():
            # PNG and JPEG scenes (iSAID, DeepGlobe) are not georeferenced, as expected.
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                return src.count
    except rasterio.errors.RasterioIOError as exc:
        raise CtfaError(f"{path}: not a raster GDAL can read ({exc})") from exc
