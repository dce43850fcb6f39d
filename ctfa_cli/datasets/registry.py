"""Registry of the built-in dataset specs (class order as in the official CTFA code)."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from ctfa_cli.config import DatasetSpec, load_yaml, validation_message
from ctfa_cli.errors import CtfaUsageError

# ISPRS 2D semantic labelling colours (Potsdam and Vaihingen share them).
ISPRS_CLASSES = ["impervious_surfaces", "building", "low_vegetation", "tree", "car", "clutter"]
ISPRS_PALETTE = [(255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0),
                 (255, 0, 0)]

ISAID_CLASSES = [
    "background", "ship", "storage_tank", "baseball_diamond", "tennis_court",
    "basketball_court", "ground_track_field", "bridge", "large_vehicle", "small_vehicle",
    "helicopter", "swimming_pool", "roundabout", "soccer_ball_field", "plane", "harbor",
]
# iSAID devkit colours of ``*_instance_color_RGB.png`` (RGB order).
# Authoritative source: CAPTAIN-WHU/iSAID_Devkit, preprocess/cityscapesScripts/cityscapesscripts/
# helpers/labels.py, the table the masks were rendered with (its packed ``m_color`` values,
# R + 256·G + 65536·B of pixels read in RGB order, confirm the order). Variants elsewhere swap
# class pairs or list BGR; ``ctfa prepare isaid --palette FILE`` overrides the map.
ISAID_PALETTE = [
    (0, 0, 0), (0, 0, 63), (0, 63, 63), (0, 63, 0), (0, 63, 127), (0, 63, 191), (0, 63, 255),
    (0, 127, 63), (0, 127, 127), (0, 0, 127), (0, 0, 191), (0, 0, 255), (0, 191, 127),
    (0, 127, 191), (0, 127, 255), (0, 100, 155),
]

DEEPGLOBE_CLASSES = ["urban", "agriculture", "rangeland", "forest", "water", "barren", "unknown"]
DEEPGLOBE_PALETTE = [(0, 255, 255), (255, 255, 0), (255, 0, 255), (0, 255, 0), (0, 0, 255),
                     (255, 255, 255), (0, 0, 0)]

BUILTIN_SPECS: dict[str, DatasetSpec] = {
    "potsdam": DatasetSpec(name="potsdam", classes=ISPRS_CLASSES, palette=ISPRS_PALETTE,
                           bands=["ir", "r", "g"], tile_size=512, stride=512),
    "vaihingen": DatasetSpec(name="vaihingen", classes=ISPRS_CLASSES, palette=ISPRS_PALETTE,
                             bands=["ir", "r", "g"], tile_size=512, stride=512),
    "isaid": DatasetSpec(name="isaid", classes=ISAID_CLASSES, palette=ISAID_PALETTE,
                         bands=["r", "g", "b"], tile_size=512, stride=512),
    "deepglobe": DatasetSpec(name="deepglobe", classes=DEEPGLOBE_CLASSES,
                             palette=DEEPGLOBE_PALETTE, has_background=False,
                             bands=["r", "g", "b"], tile_size=612, stride=612),
    "synthetic": DatasetSpec(name="synthetic", classes=ISPRS_CLASSES, palette=ISPRS_PALETTE,
                             bands=["r", "g", "b"], tile_size=160, stride=160),
}

DATASETS = (*BUILTIN_SPECS, "folder")


def get_spec(name: str) -> DatasetSpec:
    """Return a copy of a built-in spec.

    Raises:
        CtfaUsageError: unknown dataset name (``folder`` specs come from :func:`spec_from_yaml`).
    """
    if name not in BUILTIN_SPECS:
        raise CtfaUsageError(
            f"unknown dataset {name!r}; choose one of {', '.join(BUILTIN_SPECS)} or 'folder'"
        )
    return BUILTIN_SPECS[name].model_copy(deep=True)


def spec_from_yaml(path: Path, name: str = "folder") -> DatasetSpec:
    """Build a user spec (``folder`` datasets) from a ``classes.yaml``.

    The file holds at least ``classes`` and ``palette``; any other :class:`DatasetSpec` field
    (``has_background``, ``bands``, ``mean``, ``std``, ``tile_size`` …) may be given.

    Raises:
        CtfaUsageError: the file is missing, malformed or inconsistent.
    """
    fields = load_yaml(path)
    fields.setdefault("name", name)
    try:
        return DatasetSpec(**fields)
    except ValidationError as exc:
        raise CtfaUsageError(f"{path}: {validation_message(exc)}") from exc
