"""Seeded generators of tiny fake copies of each dataset's distributed layout.

Each generator writes the real folder and file names, formats and colour maps of a release
(GeoTIFF with a CRS for Potsdam and Vaihingen, PNG for iSAID, JPEG + PNG for DeepGlobe, any
raster for ``folder``) and returns what it wrote: the image bands and the index mask of every
scene, so that tests can check chips, windows, index maps and image-level labels exactly.

Masks are a background of class ``base`` with one rectangle of class ``cls`` whose position
varies from scene to scene, so that some chips contain the class and others do not.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin

from ctfa_cli.datasets.readers.potsdam import TEST_TILES, TRAIN_TILES
from ctfa_cli.datasets.readers.vaihingen import TEST_AREAS, TRAIN_AREAS
from ctfa_cli.datasets.registry import DEEPGLOBE_PALETTE, ISAID_PALETTE, ISPRS_PALETTE

IGNORE = 255


@dataclass
class FakeLayout:
    """What a generator wrote.

    Attributes:
        root: the SOURCE folder.
        images: scene id → image bands ``[bands, H, W]`` uint8 in the file's band order
            (Potsdam: R, G, B, IR; Vaihingen: IR, R, G; others: as written).
        masks: scene id → index mask ``[H, W]`` uint8 (ignore = 255).
        eroded: scene id → index mask of the eroded (noBoundary) labels, ISPRS only.
        extra: scene id → extra single-band rasters (Potsdam nDSM) ``[H, W]``.
        transforms: scene id → affine transform of georeferenced scenes.
    """

    root: Path
    images: dict[str, np.ndarray] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    eroded: dict[str, np.ndarray] = field(default_factory=dict)
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    transforms: dict[str, rasterio.Affine] = field(default_factory=dict)


def write_raster(path: Path, data: np.ndarray, *, driver: str = "GTiff", crs: str | None = None,
                 transform: rasterio.Affine | None = None) -> None:
    """Write ``data`` ``[bands, H, W]`` (or ``[H, W]``) uint8 to ``path``."""
    data = data[None] if data.ndim == 2 else data
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": driver, "height": data.shape[1], "width": data.shape[2],
               "count": data.shape[0], "dtype": "uint8"}
    if crs is not None:
        profile.update(crs=crs, transform=transform)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # PNG/JPEG carry no CRS
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)


def block_mask(height: int, width: int, base: int, cls: int, rng: np.random.Generator
               ) -> np.ndarray:
    """Index mask: class ``base`` everywhere, one rectangle of class ``cls`` somewhere."""
    mask = np.full((height, width), base, dtype=np.uint8)
    top, left = rng.integers(0, height - 8), rng.integers(0, width - 8)
    mask[top:top + rng.integers(4, 9), left:left + rng.integers(4, 9)] = cls
    return mask


def colorize(mask: np.ndarray, palette: list[tuple[int, int, int]],
             ignore_colour: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """Index mask → colour mask ``[3, H, W]`` (ignore pixels get ``ignore_colour``)."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = palette
    table[IGNORE] = ignore_colour
    return np.moveaxis(table[mask], -1, 0)


def erode(mask: np.ndarray) -> np.ndarray:
    """ISPRS-style eroded labels: pixels on a class boundary become ignore."""
    out = mask.copy()
    edge = np.zeros_like(mask, dtype=bool)
    edge[:-1] |= mask[:-1] != mask[1:]
    edge[1:] |= mask[1:] != mask[:-1]
    edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    edge[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    out[edge] = IGNORE
    return out


# --- ISPRS Potsdam -----------------------------------------------------------------------------


def make_potsdam(root: Path, *, size: int = 40, seed: int = 0, zero_pad: bool = False,
                 nested: bool = False, folders: tuple[str, ...] | None = None,
                 tiles: tuple[tuple[int, int], ...] = TRAIN_TILES + TEST_TILES) -> FakeLayout:
    """Fake ISPRS Potsdam release: all 38 tiles, ``size``×``size`` px, EPSG:32633.

    Args:
        zero_pad: spell tile ids ``02_10`` in the ortho and label names (DSM names always are).
        nested: put each folder's files one level deeper (``3_Ortho_IRRG/3_Ortho_IRRG/…``).
        folders: the release folders to write (default: all).
        tiles: the tiles to write.
    """
    folders = folders or ("1_DSM_normalisation", "2_Ortho_RGB", "3_Ortho_IRRG", "4_Ortho_RGBIR",
                          "5_Labels_all", "5_Labels_all_noBoundary")
    rng = np.random.default_rng(seed)
    layout = FakeLayout(root)
    crs = "EPSG:32633"

    def place(folder: str, name: str) -> Path:
        return root / folder / (folder if nested else "") / name

    for i, (row, col) in enumerate(tiles):
        scene = f"potsdam_{row}_{col}"
        tid = f"{row:02d}_{col:02d}" if zero_pad else f"{row}_{col}"
        rgbir = rng.integers(0, 256, (4, size, size), dtype=np.uint8)
        mask = block_mask(size, size, base=i % 2, cls=2 + i % 4, rng=rng)
        # A constant nDSM per tile: JPEG is lossy, but keeps a constant image exact.
        ndsm = np.full((size, size), 10 + 5 * i, dtype=np.uint8)
        transform = from_origin(366000 + 100 * row, 5808000 - 100 * col, 0.05, 0.05)
        layout.images[scene], layout.masks[scene], layout.eroded[scene] = rgbir, mask, erode(mask)
        layout.extra[scene], layout.transforms[scene] = ndsm, transform
        geo = {"crs": crs, "transform": transform}
        bands = {"2_Ortho_RGB": ("RGB", rgbir[[0, 1, 2]]),
                 "3_Ortho_IRRG": ("IRRG", rgbir[[3, 0, 1]]),
                 "4_Ortho_RGBIR": ("RGBIR", rgbir)}
        for folder, (suffix, data) in bands.items():
            if folder in folders:
                write_raster(place(folder, f"top_potsdam_{tid}_{suffix}.tif"), data, **geo)
                (place(folder, f"top_potsdam_{tid}_{suffix}.tfw")).write_text("0.05\n0\n0\n")
        if "5_Labels_all" in folders:
            write_raster(place("5_Labels_all", f"top_potsdam_{tid}_label.tif"),
                         colorize(mask, ISPRS_PALETTE), **geo)
        if "5_Labels_all_noBoundary" in folders:
            write_raster(
                place("5_Labels_all_noBoundary", f"top_potsdam_{tid}_label_noBoundary.tif"),
                colorize(layout.eroded[scene], ISPRS_PALETTE), **geo)
        if "1_DSM_normalisation" in folders:
            write_raster(place("1_DSM_normalisation",
                               f"dsm_potsdam_{row:02d}_{col:02d}_normalized_lastools.jpg"),
                         ndsm, driver="JPEG")
    return layout


# --- ISPRS Vaihingen ---------------------------------------------------------------------------


def make_vaihingen(root: Path, *, seed: int = 0, complete: bool = True,
                   participants: bool = False, eroded: bool = True) -> FakeLayout:
    """Fake ISPRS Vaihingen release: 33 areas of varying sizes (36–52 px), EPSG:32632.

    Args:
        complete: write ``ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE`` (all areas).
        participants: write ``gts_for_participants`` (training areas only, as the release).
        eroded: write ``…_ground_truth_eroded_COMPLETE`` with ``_noBoundary`` names.
    """
    rng = np.random.default_rng(seed)
    layout = FakeLayout(root)
    for area in sorted(TRAIN_AREAS + TEST_AREAS):
        scene = f"vaihingen_area{area}"
        height, width = 36 + 4 * (area % 5), 40 + 4 * (area % 4)
        irrg = rng.integers(0, 256, (3, height, width), dtype=np.uint8)
        mask = block_mask(height, width, base=0, cls=1 + area % 5, rng=rng)
        transform = from_origin(496000 + 50 * area, 5420000, 0.09, 0.09)
        layout.images[scene], layout.masks[scene], layout.eroded[scene] = irrg, mask, erode(mask)
        layout.transforms[scene] = transform
        geo = {"crs": "EPSG:32632", "transform": transform}
        write_raster(root / "top" / f"top_mosaic_09cm_area{area}.tif", irrg, **geo)
        colours = colorize(mask, ISPRS_PALETTE)
        if complete:
            write_raster(root / "ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE"
                         / f"top_mosaic_09cm_area{area}.tif", colours, **geo)
        if participants and area in TRAIN_AREAS:
            write_raster(root / "gts_for_participants" / f"top_mosaic_09cm_area{area}.tif",
                         colours, **geo)
        if eroded:
            write_raster(root / "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE"
                         / f"top_mosaic_09cm_area{area}_noBoundary.tif",
                         colorize(layout.eroded[scene], ISPRS_PALETTE), **geo)
    return layout


# --- iSAID -------------------------------------------------------------------------------------


def make_isaid(root: Path, *, seed: int = 0, devkit: bool = False) -> FakeLayout:
    """Fake iSAID: 3 train and 2 val DOTA PNGs (one grey-level), colour masks of the devkit.

    Args:
        devkit: masks beside the images in ``images/`` (devkit layout) instead of
            ``Semantic_masks/images/`` (the downloaded archives).
    """
    rng = np.random.default_rng(seed)
    layout = FakeLayout(root)
    names = {"train": ["P0000", "P0002", "P0005"], "val": ["P0003", "P0004"]}
    for split, ids in names.items():
        for k, image_id in enumerate(ids):
            height, width = 40 + 8 * k, 56 - 8 * k
            bands = 1 if image_id == "P0002" else 3
            image = rng.integers(0, 256, (bands, height, width), dtype=np.uint8)
            mask = block_mask(height, width, base=0, cls=1 + (3 * k + len(split)) % 15, rng=rng)
            layout.images[f"isaid_{image_id}"], layout.masks[f"isaid_{image_id}"] = image, mask
            write_raster(root / split / "images" / f"{image_id}.png", image, driver="PNG")
            mask_dir = root / split / ("images" if devkit else "Semantic_masks/images")
            write_raster(mask_dir / f"{image_id}_instance_color_RGB.png",
                         colorize(mask, ISAID_PALETTE), driver="PNG")
            # Instance masks come in the same archives; the reader must not take them.
            write_raster(root / split / ("images" if devkit else "Instance_masks/images")
                         / f"{image_id}_instance_id_RGB.png",
                         np.zeros((3, height, width), np.uint8), driver="PNG")
    return layout


# --- DeepGlobe Land Cover ----------------------------------------------------------------------


def make_deepglobe(root: Path, *, n: int = 10, size: int = 48, seed: int = 0) -> FakeLayout:
    """Fake DeepGlobe Land Cover: ``n`` labelled ``<id>_sat.jpg`` + noisy ``<id>_mask.png`` in
    ``train/``, unlabelled images in ``valid/``, ``class_dict.csv``.

    The masks carry noise of up to ±60 around 0 and 255 in every channel, as the real masks
    are not pure colours; thresholding at 128 recovers the classes exactly.
    """
    rng = np.random.default_rng(seed)
    layout = FakeLayout(root)
    for k in range(n):
        image_id = str(100000 + 137 * k)
        image = rng.integers(0, 256, (3, size, size), dtype=np.uint8)
        mask = block_mask(size, size, base=k % 6, cls=(k + 2) % 7, rng=rng)
        colours = colorize(mask, DEEPGLOBE_PALETTE).astype(np.int16)
        noise = rng.integers(0, 61, colours.shape)
        colours = np.where(colours > 127, colours - noise, colours + noise).astype(np.uint8)
        layout.images[f"deepglobe_{image_id}"] = image
        layout.masks[f"deepglobe_{image_id}"] = mask
        write_raster(root / "train" / f"{image_id}_sat.jpg", image, driver="JPEG")
        write_raster(root / "train" / f"{image_id}_mask.png", colours, driver="PNG")
    write_raster(root / "valid" / "999999_sat.jpg",
                 rng.integers(0, 256, (3, size, size), dtype=np.uint8), driver="JPEG")
    (root / "class_dict.csv").write_text(
        "name,r,g,b\nurban_land,0,255,255\nagriculture_land,255,255,0\n"
        "rangeland,255,0,255\nforest_land,0,255,0\nwater,0,0,255\nbarren_land,255,255,255\n"
        "unknown,0,0,0\n")
    return layout


# --- folder ------------------------------------------------------------------------------------

FOLDER_CLASSES_YAML = """\
name: fields
classes: [background, building, tree, water]
palette: [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]]
has_background: true
tile_size: 32
stride: 32
"""
FOLDER_CLASSES = ["background", "building", "tree", "water"]
FOLDER_PALETTE = [(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)]
FOLDER_CRS = "EPSG:32631"
FOLDER_PIXEL = 2.0  # metres


def make_folder(root: Path, *, n: int = 4, size: int = 64, seed: int = 0,
                masks: str = "index", masked: tuple[int, ...] | None = None) -> FakeLayout:
    """Fake users' folder: ``n`` 3-band GeoTIFF scenes (EPSG:32631, 2 m pixels) in
    ``images/``, ``classes.yaml``, and masks.

    Args:
        masks: ``index`` (one-band class indices), ``color`` (RGB of the palette) or ``none``.
        masked: indices of the scenes that get a mask (default: all).
    """
    rng = np.random.default_rng(seed)
    layout = FakeLayout(root)
    (root / "images").mkdir(parents=True)
    (root / "classes.yaml").write_text(FOLDER_CLASSES_YAML)
    for k in range(n):
        scene = f"scene_{k}"
        image = rng.integers(0, 256, (3, size, size), dtype=np.uint8)
        mask = block_mask(size, size, base=0, cls=1 + k % 3, rng=rng)
        transform = from_origin(500000 + 1000 * k, 4000000, FOLDER_PIXEL, FOLDER_PIXEL)
        layout.images[scene], layout.transforms[scene] = image, transform
        geo = {"crs": FOLDER_CRS, "transform": transform}
        write_raster(root / "images" / f"{scene}.tif", image, **geo)
        if masks != "none" and (masked is None or k in masked):
            layout.masks[scene] = mask
            data = mask if masks == "index" else colorize(mask, FOLDER_PALETTE)
            write_raster(root / "masks" / f"{scene}.tif", data, **geo)
    return layout
