"""Synthetic georeferenced aerial scenes: the embedded default data set of ``ctfa``.

Each scene is a 3-band uint8 RGB GeoTIFF in UTM zone 33N (EPSG:32633, near Potsdam) with a
pixel size between 0.15 and 0.30 m, and a uint8 label raster with the ISPRS/Potsdam classes
(0 impervious surfaces, 1 building, 2 low vegetation, 3 tree, 4 car, 5 clutter).

How a scene is drawn (everything in metres, converted with the scene's pixel size):

* **Blocks and streets.** A Voronoi partition of random seed points gives city blocks; most
  Voronoi edges become roads (buffered polylines with sidewalks and dashed centre lines).
* **Land use per block** decides which classes can occur there, so that chips carry different
  subsets of classes: *residential* (gabled houses, rectangles or L-shapes, gardens, trees),
  *industrial* (large flat roofs, containers and piles, parking), *park* (lawn, tree clusters,
  a footpath, sometimes a pond), *field* (striped crops, sometimes a hedgerow or bare soil),
  *forest* (dense crowns) and *plaza* (paving, parking, planted trees, kiosks).
* **Objects.** Roofs have two shaded planes and a ridge; buildings, trees and cars cast
  shadows away from a per-scene sun (shadows darken pixels but keep their class, as in the
  ISPRS labels); tree crowns are textured irregular discs lit from the sun side; cars are small
  rectangles with windows, only on roads and parking lots; clutter is soil, piles, containers,
  kiosks or water.
* **Sensor.** Per-scene gain, colour cast, haze and a smooth illumination gradient, then
  Gaussian sensor noise.

Everything comes from ``numpy.random.default_rng([seed, scene_index])``: the same seed gives the
same scenes, and scene ``i`` does not depend on how many scenes are drawn.

Split rule (by scene, never by chip): with ``n >= 3`` scenes the last ``max(1, n // 8)`` are
``test``, the same number before them ``val``, the rest ``train``; 2 scenes give one ``train``
and one ``test``; a single scene is ``train``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
import shapely
from rasterio.features import rasterize
from rasterio.transform import Affine, from_origin
from shapely import affinity
from shapely.geometry import LineString, MultiPoint, Point, Polygon, box
from shapely.ops import substring, unary_union

from ctfa_cli.datasets.datadir import SCENES_DIR, claim_output
from ctfa_cli.datasets.registry import get_spec
from ctfa_cli.datasets.scenes import SceneRecord
from ctfa_cli.datasets.tiling import PrepareSummary, build_datadir, resolve_tiling
from ctfa_cli.errors import CtfaUsageError
from ctfa_cli.io import atomic_path

log = logging.getLogger("ctfa.synthetic")

# Bump when drawing changes, so that scenes of an older generator are redrawn.
GENERATOR_VERSION = 1
CRS = "EPSG:32633"
ORIGIN = (360000.0, 5808000.0)  # UTM 33N easting/northing near Potsdam, metres
PIXEL_SIZE_RANGE = (0.15, 0.30)  # metres
PARAMS_JSON = "synthetic.json"

IMPERVIOUS, BUILDING, LOW_VEGETATION, TREE, CAR, CLUTTER = range(6)

LAND_USES = ("residential", "industrial", "park", "field", "forest", "plaza")
LAND_USE_WEIGHTS = (0.30, 0.14, 0.16, 0.14, 0.10, 0.16)

# ground of each land use: class, texture, colour (gardens, lawns, crops and forest floor are
# low vegetation; yards and plazas are paved)
GROUNDS = {
    "residential": (LOW_VEGETATION, "grass", (92, 132, 62)),
    "industrial": (IMPERVIOUS, "asphalt", (150, 148, 142)),
    "park": (LOW_VEGETATION, "grass", (86, 138, 58)),
    "field": (LOW_VEGETATION, "grass", (128, 150, 72)),
    "forest": (LOW_VEGETATION, "grass", (70, 98, 46)),
    "plaza": (IMPERVIOUS, "asphalt", (168, 160, 150)),
}
ROOF_COLOURS = ((165, 80, 65), (140, 62, 52), (120, 120, 126), (78, 76, 82), (176, 120, 90))
FLAT_ROOF_COLOURS = ((190, 188, 180), (160, 162, 165), (120, 118, 112))
CAR_COLOURS = ((225, 225, 228), (30, 30, 35), (165, 168, 172), (170, 32, 30), (40, 62, 140),
               (82, 82, 88))
TREE_COLOURS = ((48, 88, 40), (62, 102, 46), (36, 72, 36), (70, 96, 40))
CLUTTER_COLOURS = ((140, 115, 85), (180, 92, 40), (60, 110, 160), (120, 110, 100),
                   (170, 160, 140))
WATER = (40, 70, 80)


def synthetic_split(index: int, count: int) -> str:
    """Split of scene ``index`` among ``count`` scenes (see the module docstring)."""
    if count == 1:
        return "train"
    if count == 2:
        return "train" if index == 0 else "test"
    held_out = max(1, count // 8)
    if index >= count - held_out:
        return "test"
    if index >= count - 2 * held_out:
        return "val"
    return "train"


def generate_scenes(out_dir: Path, *, scenes: int, size: int, seed: int) -> list[SceneRecord]:
    """Write ``scene_XXX.tif`` and ``scene_XXX_label.tif`` for ``scenes`` scenes.

    Scenes already written by a call with the same arguments (recorded in ``synthetic.json``)
    are kept, since drawing is deterministic.

    Args:
        out_dir: folder for the scene rasters (created).
        scenes: number of scenes (>= 1).
        size: scene width and height in pixels (>= 32).
        seed: random seed.

    Returns:
        One index-mask :class:`SceneRecord` per scene, split by :func:`synthetic_split`.

    Raises:
        CtfaUsageError: ``scenes`` < 1 or ``size`` < 32.
    """
    if scenes < 1:
        raise CtfaUsageError(f"--scenes must be at least 1, got {scenes}")
    if size < 32:
        raise CtfaUsageError(f"--size must be at least 32 pixels, got {size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {"generator": GENERATOR_VERSION, "scenes": scenes, "size": size, "seed": seed}
    records = [SceneRecord(scene_id=f"scene_{i:03d}", image=out_dir / f"scene_{i:03d}.tif",
                           split=synthetic_split(i, scenes),
                           label=out_dir / f"scene_{i:03d}_label.tif", label_kind="index")
               for i in range(scenes)]
    params_path = out_dir / PARAMS_JSON
    done = params_path.is_file() and json.loads(params_path.read_text()) == params
    if done and all(r.image.is_file() and r.label.is_file() for r in records):
        return records
    params_path.unlink(missing_ok=True)  # written again only once every scene is complete
    log.info("drawing %d synthetic scene(s) of %d px into %s", scenes, size, out_dir)
    palette = {k: (*c, 255) for k, c in enumerate(get_spec("synthetic").palette)}
    for i, record in enumerate(records):
        rng = np.random.default_rng([seed, i])
        pixel_size = round(float(rng.uniform(*PIXEL_SIZE_RANGE)), 3)
        image, label = draw_scene(rng, size, pixel_size)
        # scenes side by side along the easting, never overlapping
        west = ORIGIN[0] + i * (size * PIXEL_SIZE_RANGE[1] + 100.0) + round(rng.uniform(0, 50), 1)
        north = ORIGIN[1] + round(rng.uniform(0, 500), 1)
        transform = from_origin(west, north, pixel_size, pixel_size)
        _write_raster(record.image, image, transform, descriptions=("red", "green", "blue"),
                      photometric="RGB")
        _write_raster(record.label, label[None], transform, colormap=palette)
    with atomic_path(params_path) as tmp:
        tmp.write_text(json.dumps(params))
    return records


def prepare_synthetic(out: Path, *, scenes: int = 8, size: int = 640, seed: int = 0,
                      tile: int | None = None, stride: int | None = None, workers: int = 0,
                      overwrite: bool = False) -> PrepareSummary:
    """Generate synthetic scenes into ``out/scenes/`` and tile them into the DATA_DIR ``out``.

    Defaults (8 scenes of 640 px, chips of 160 px from the ``synthetic`` spec) keep a whole demo
    within minutes on 2 CPU cores.

    Raises:
        CtfaError: ``out`` holds something else, or a DATA_DIR made with other settings, and
            ``overwrite`` is False.
        CtfaUsageError: invalid counts or tile/stride.
    """
    out = Path(out)
    spec = get_spec("synthetic")
    tile, stride = resolve_tiling(spec, tile, stride)
    source = f"synthetic: {scenes} scenes of {size} px, seed {seed}"
    # claim before drawing, so that a refused folder is left untouched
    claim_output(out, {"dataset": spec.name, "source": source, "tile": tile, "stride": stride},
                 overwrite=overwrite)
    records = generate_scenes(out / SCENES_DIR, scenes=scenes, size=size, seed=seed)
    return build_datadir(records, spec, out, tile=tile, stride=stride, workers=workers,
                         source=source)


def _write_raster(path: Path, data: np.ndarray, transform: Affine, *, descriptions=(),
                  colormap=None, photometric: str | None = None) -> None:
    profile = {"driver": "GTiff", "dtype": "uint8", "count": data.shape[0],
               "height": data.shape[1], "width": data.shape[2], "crs": CRS,
               "transform": transform, "compress": "deflate"}
    if photometric:
        profile["photometric"] = photometric
    with atomic_path(path) as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(data)
            for i, name in enumerate(descriptions, start=1):
                dst.set_band_description(i, name)
            if colormap:
                dst.write_colormap(1, colormap)


# --- drawing -----------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, size: int, cell: float) -> np.ndarray:
    """Zero-mean noise ``[size, size]`` float32, smooth over about ``cell`` pixels (bilinear)."""
    n = max(2, int(size / max(cell, 1.0)) + 2)
    coarse = rng.standard_normal((n, n))
    at = np.linspace(0, n - 1, size)
    lo = np.minimum(np.floor(at).astype(int), n - 2)
    frac = at - lo
    rows = coarse[lo] * (1 - frac)[:, None] + coarse[lo + 1] * frac[:, None]
    return (rows[:, lo] * (1 - frac) + rows[:, lo + 1] * frac).astype(np.float32)


def _polygons(geom) -> list[Polygon]:
    """The polygonal parts of any shapely geometry (intersections may yield lines or points)."""
    if geom is None or geom.is_empty:
        return []
    if isinstance(geom, Polygon):
        return [geom]
    return [g for part in getattr(geom, "geoms", []) for g in _polygons(part)]


def _rectangle(cx: float, cy: float, length: float, width: float, angle: float) -> Polygon:
    """A ``length × width`` rectangle centred on (cx, cy), long side at ``angle`` radians."""
    rect = box(-length / 2, -width / 2, length / 2, width / 2)
    return affinity.translate(affinity.rotate(rect, angle, origin=(0, 0), use_radians=True),
                              cx, cy)


class _Painter:
    """Layers of one scene (class, colour, texture, shading) and their shadows, rendered at once.

    Geometries are in pixel coordinates (x = column, y = row, pixel centres at +0.5). Later
    layers cover earlier ones. Rendering burns every layer into one id raster with a single
    ``rasterize`` call (one call per object would dominate the drawing time).
    """

    def __init__(self, rng: np.random.Generator, size: int, sun: tuple[float, float]):
        self.size = size
        self.sun = sun  # unit vector towards the sun, pixel axes
        self.layers: list[tuple] = []
        self.shadows: list[tuple[Polygon, float]] = []
        self.grain = (1 + 0.05 * rng.standard_normal((size, size))).astype(np.float32)
        self.clumps = _smooth_noise(rng, size, 3)
        self.patches = _smooth_noise(rng, size, 40)

    def paint(self, geom, cls: int, rgb, *, texture: np.ndarray | None = None,
              shading: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> None:
        """Cover ``geom`` with class ``cls`` and colour ``rgb`` × grain × ``texture`` (a
        ``[size, size]`` factor) × ``shading(x, y)`` (evaluated at pixel centres)."""
        parts = _polygons(geom)
        if parts:
            self.layers.append((parts, cls, np.asarray(rgb, np.float32), texture, shading))

    def cast_shadow(self, geom, height_px: float, darkness: float = 0.5) -> None:
        """Darken (× ``darkness``) the ground swept by ``geom`` moved ``height_px`` away from
        the sun."""
        dx, dy = -self.sun[0] * height_px, -self.sun[1] * height_px
        for part in _polygons(geom):
            swept = unary_union([part, affinity.translate(part, dx, dy)]).convex_hull
            self.shadows.extend((s, darkness) for s in _polygons(swept.difference(part)))

    def render(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Returns ``(label uint8 [H, W], image float32 [3, H, W], shadow factor [H, W])``."""
        shape = (self.size, self.size)
        shapes = [(part, i) for i, (parts, *_) in enumerate(self.layers, start=1)
                  for part in parts]
        ids = rasterize(shapes, out_shape=shape, dtype="int32", fill=0)
        label = np.array([0] + [layer[1] for layer in self.layers], np.uint8)[ids]
        image = np.zeros((3, *shape), np.float32)
        for i, (parts, _, colour, texture, shading) in enumerate(self.layers, start=1):
            minx, miny, maxx, maxy = shapely.total_bounds(parts)
            rows = slice(max(0, math.floor(miny)), min(self.size, math.ceil(maxy)))
            cols = slice(max(0, math.floor(minx)), min(self.size, math.ceil(maxx)))
            mask = ids[rows, cols] == i
            if not mask.any():
                continue
            factor = self.grain[rows, cols].copy()
            if texture is not None:
                factor *= texture[rows, cols]
            if shading is not None:
                y, x = np.mgrid[rows, cols].astype(np.float32) + 0.5
                factor *= shading(x, y)
            image[:, rows, cols][:, mask] = colour[:, None] * factor[mask]
        shadow = np.ones(shape, np.float32)
        if self.shadows:
            # overlapping shadows keep the darkest: burn the lightest first
            ordered = sorted(self.shadows, key=lambda s: -s[1])
            permille = rasterize([(g, round(d * 1000)) for g, d in ordered], out_shape=shape,
                                 dtype="uint16", fill=1000)
            shadow = permille.astype(np.float32) / 1000
        return label, image, shadow


class _Scene:
    """Drawing context: painter, metres-to-pixels factor, roads and the objects placed so far."""

    def __init__(self, rng: np.random.Generator, size: int, pixel_size: float):
        self.rng = rng
        self.size = size
        self.m = 1.0 / pixel_size  # pixels per metre
        azimuth = rng.uniform(0, 2 * math.pi)
        self.painter = _Painter(rng, size, (math.cos(azimuth), math.sin(azimuth)))
        self.shadow_ratio = rng.uniform(0.4, 1.0)  # shadow length per metre of height
        self.road_edges: list[LineString] = []
        self.roads = Polygon()
        self.corridors = Polygon()  # roads plus sidewalks
        self.buildings: list[Polygon] = []
        self.cars: list[Polygon] = []
        self.trees: list[tuple[Polygon, float, float, float]] = []  # crown, cx, cy, radius
        self.textures = {
            "grass": 1 + 0.12 * self.painter.patches + 0.06 * self.painter.clumps,
            "asphalt": 1 + 0.05 * self.painter.patches,
            "leaves": 1 + 0.22 * self.painter.clumps,
            "rough": 1 + 0.18 * self.painter.clumps + 0.08 * self.painter.patches,
        }

    # -- helpers --
    def random_point_in(self, area, tries: int = 30) -> Point | None:
        minx, miny, maxx, maxy = area.bounds
        for _ in range(tries):
            pt = Point(self.rng.uniform(minx, maxx), self.rng.uniform(miny, maxy))
            if area.contains(pt):
                return pt
        return None

    def road_angle(self, pt: Point) -> float:
        """Direction of the nearest road at ``pt`` (random when the scene has no road)."""
        if not self.road_edges:
            return float(self.rng.uniform(0, math.pi))
        edge = min(self.road_edges, key=pt.distance)
        d = edge.project(pt)
        a, b = edge.interpolate(max(d - 1, 0)), edge.interpolate(min(d + 1, edge.length))
        return math.atan2(b.y - a.y, b.x - a.x)

    def free(self, geom, gap_m: float = 1.5) -> bool:
        gap = gap_m * self.m
        return not any(geom.distance(b) < gap for b in self.buildings)


def draw_scene(rng: np.random.Generator, size: int, pixel_size: float
               ) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic aerial scene.

    Args:
        rng: the scene's random generator (consumed).
        size: width and height in pixels.
        pixel_size: ground sampling distance in metres (object sizes are set in metres).

    Returns:
        ``(image, label)``: uint8 RGB ``[3, size, size]`` and uint8 class indices
        ``[size, size]`` (Potsdam classes; every pixel labelled, no ignore).
    """
    scene = _Scene(rng, size, pixel_size)
    frame = box(0, 0, size, size)
    blocks_wanted = rng.uniform(4, 8) * (size / 640) ** 2
    seeds = MultiPoint(rng.uniform(0, size, (int(np.clip(round(blocks_wanted), 2, 60)), 2)))
    blocks = [b for g in shapely.voronoi_polygons(seeds, extend_to=frame).geoms
              for b in _polygons(g.intersection(frame))]
    edges = shapely.voronoi_polygons(seeds, extend_to=frame, only_edges=True).intersection(frame)
    candidates = [e for e in getattr(edges, "geoms", [edges])
                  if isinstance(e, LineString) and e.length > 8 * scene.m]
    scene.road_edges = [e for e in candidates if rng.random() < 0.8]
    if candidates and not scene.road_edges:  # every scene has a street (and so cars)
        scene.road_edges = [max(candidates, key=lambda e: e.length)]
    road_width = rng.uniform(6, 10) * scene.m
    if scene.road_edges:
        network = unary_union(scene.road_edges)
        scene.roads = network.buffer(road_width / 2)
        scene.corridors = network.buffer(road_width / 2 + 2 * scene.m)
    uses = rng.choice(len(LAND_USES), size=len(blocks), p=LAND_USE_WEIGHTS)
    if not any(LAND_USES[u] in ("residential", "industrial") for u in uses):
        # every scene has buildings somewhere (held-out scenes must hold every class)
        uses[int(np.argmax([b.area for b in blocks]))] = LAND_USES.index("residential")

    for block, use in zip(blocks, uses, strict=True):
        cls, texture, colour = GROUNDS[LAND_USES[use]]
        jitter = rng.uniform(0.9, 1.1, 3)
        shading = _stripes(rng, scene.m) if LAND_USES[use] == "field" else None
        scene.painter.paint(block, cls, np.multiply(colour, jitter),
                            texture=scene.textures[texture], shading=shading)
    _draw_roads(scene, road_width)
    for block, use in zip(blocks, uses, strict=True):
        area = block.difference(scene.corridors)
        if area.area > 25 * scene.m ** 2:
            BLOCK_DRAWERS[LAND_USES[use]](scene, area)
    _draw_road_cars(scene, road_width)
    _draw_trees(scene)
    return _finish(scene)


def _stripes(rng: np.random.Generator, m: float):
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(1.5, 4.0) * m
    ca, sa = math.cos(angle), math.sin(angle)
    return lambda x, y: 1 + 0.09 * np.sin(2 * math.pi * (x * ca + y * sa) / period)


def _draw_roads(scene: _Scene, road_width: float) -> None:
    p, m = scene.painter, scene.m
    p.paint(scene.corridors, IMPERVIOUS, (172, 168, 160), texture=scene.textures["asphalt"])
    p.paint(scene.roads, IMPERVIOUS, (84, 86, 92), texture=scene.textures["asphalt"])
    if road_width < 7 * m:
        return
    dash, gap = 3 * m, 6 * m
    for edge in scene.road_edges:
        start = 0.0
        while start + dash < edge.length:
            p.paint(substring(edge, start, start + dash).buffer(max(0.12 * m, 0.6)), IMPERVIOUS,
                    (220, 220, 214))
            start += dash + gap


def _building(scene: _Scene, area, length_m: tuple[float, float], width_m: tuple[float, float],
              *, l_shape: float, flat: bool) -> bool:
    """Place one building inside ``area`` (rectangle or L), paint it and its shadow."""
    rng, m = scene.rng, scene.m
    centre = scene.random_point_in(area)
    if centre is None:
        return False
    angle = scene.road_angle(centre) if rng.random() < 0.75 else rng.uniform(0, math.pi)
    angle += rng.normal(0, 0.05)
    length, width = rng.uniform(*length_m) * m, rng.uniform(*width_m) * m
    parts = [(_rectangle(centre.x, centre.y, length, width, angle), centre.x, centre.y, angle)]
    if rng.random() < l_shape:
        wing_len = rng.uniform(0.4, 0.8) * length
        side = 1 if rng.random() < 0.5 else -1
        # wing at one end of the main part, perpendicular to it
        ux, uy = math.cos(angle), math.sin(angle)
        vx, vy = -uy * side, ux * side
        along = length / 2 - width / 2
        wx = centre.x + ux * along + vx * wing_len / 2
        wy = centre.y + uy * along + vy * wing_len / 2
        parts.append((_rectangle(wx, wy, wing_len, width, angle + math.pi / 2), wx, wy,
                      angle + math.pi / 2))
    footprint = unary_union([part for part, *_ in parts])
    if not area.buffer(-1 * m).contains(footprint) or not scene.free(footprint):
        return False
    scene.buildings.append(footprint)
    height = rng.uniform(8, 16) if flat else rng.uniform(6, 12)
    scene.painter.cast_shadow(footprint, height * scene.shadow_ratio * m)
    if flat:
        colour = np.multiply(FLAT_ROOF_COLOURS[rng.integers(len(FLAT_ROOF_COLOURS))],
                             rng.uniform(0.92, 1.08, 3))
        scene.painter.paint(footprint, BUILDING, colour, texture=scene.textures["asphalt"])
        for _ in range(rng.integers(0, 4)):  # rooftop units
            unit = scene.random_point_in(footprint.buffer(-2 * m))
            if unit is not None:
                size = rng.uniform(1.5, 3.5) * m
                scene.painter.paint(_rectangle(unit.x, unit.y, size, size * 0.7, angle),
                                    BUILDING, np.multiply(colour, 1.18))
        return True
    colour = np.multiply(ROOF_COLOURS[rng.integers(len(ROOF_COLOURS))], rng.uniform(0.92, 1.08, 3))
    for part, cx, cy, axis in parts:
        scene.painter.paint(part, BUILDING, colour, shading=_gable(scene, cx, cy, axis))
    return True


def _gable(scene: _Scene, cx: float, cy: float, axis: float):
    """Two roof planes either side of a ridge along ``axis``: the sunlit one brighter."""
    nx, ny = -math.sin(axis), math.cos(axis)
    toward_sun = 1.0 if nx * scene.painter.sun[0] + ny * scene.painter.sun[1] > 0 else -1.0
    ridge = 0.3 * scene.m

    def shade(x, y):
        s = (x - cx) * nx + (y - cy) * ny
        plane = np.where(s * toward_sun > 0, 1.15, 0.78)
        return np.where(np.abs(s) < ridge, 0.9, plane)

    return shade


def _car(scene: _Scene, x: float, y: float, angle: float, allowed) -> bool:
    """Paint a car (body, windscreen, rear window) if it fits in ``allowed`` and is free."""
    rng, m = scene.rng, scene.m
    length, width = rng.uniform(4.0, 4.8) * m, rng.uniform(1.7, 1.95) * m
    body = _rectangle(x, y, length, width, angle)
    if not allowed.contains(body) or any(body.distance(c) < 0.4 * m for c in scene.cars):
        return False
    scene.cars.append(body)
    scene.painter.cast_shadow(body, 1.5 * scene.shadow_ratio * m, darkness=0.55)
    colour = np.multiply(CAR_COLOURS[rng.integers(len(CAR_COLOURS))], rng.uniform(0.95, 1.05, 3))
    scene.painter.paint(body, CAR, colour)
    ux, uy = math.cos(angle), math.sin(angle)
    for offset, size in ((0.18, 0.22), (-0.3, 0.14)):  # windscreen, rear window
        d = offset * length
        scene.painter.paint(_rectangle(x + ux * d, y + uy * d, size * length, width * 0.8, angle),
                            CAR, (38, 42, 50))
    return True


def _draw_road_cars(scene: _Scene, road_width: float) -> None:
    rng, m = scene.rng, scene.m
    density = rng.uniform(0.2, 0.7)
    for edge in scene.road_edges:
        at = rng.uniform(2, 10) * m
        while at < edge.length:
            if rng.random() < density:
                d = min(at + 0.5, edge.length)
                a, b = edge.interpolate(at), edge.interpolate(d)
                angle = math.atan2(b.y - a.y, b.x - a.x)
                lane = road_width / 4 * (1 if rng.random() < 0.5 else -1)
                x = a.x - math.sin(angle) * lane
                y = a.y + math.cos(angle) * lane
                _car(scene, x, y, angle + rng.normal(0, 0.03), scene.roads)
            at += rng.uniform(6, 20) * m


def _parking(scene: _Scene, area, max_cars: int) -> None:
    """A parking lot near a road with rows of cars perpendicular to it."""
    rng, m = scene.rng, scene.m
    for _ in range(10):
        pt = scene.random_point_in(area)
        if pt is None:
            return
        if not scene.road_edges or scene.roads.distance(pt) < 25 * m:
            break
    else:
        return
    angle = scene.road_angle(pt)
    slots = int(rng.integers(3, 9))
    rows = int(rng.integers(1, 3))
    lot = _rectangle(pt.x, pt.y, slots * 2.6 * m, rows * 5.5 * m, angle)
    if not area.contains(lot) or not scene.free(lot, gap_m=1.0):
        return
    scene.painter.paint(lot, IMPERVIOUS, (96, 98, 104), texture=scene.textures["asphalt"])
    ux, uy = math.cos(angle), math.sin(angle)
    vx, vy = -uy, ux
    placed = 0
    for r in range(rows):
        for s in range(slots):
            if placed >= max_cars or rng.random() > 0.7:
                continue
            a = (s - (slots - 1) / 2) * 2.6 * m
            b = (r - (rows - 1) / 2) * 5.5 * m
            x, y = pt.x + ux * a + vx * b, pt.y + uy * a + vy * b
            placed += _car(scene, x, y, angle + math.pi / 2 + rng.normal(0, 0.04), lot)


def _clutter(scene: _Scene, area, count: int, *, water: bool = False) -> None:
    rng, m = scene.rng, scene.m
    for _ in range(count):
        pt = scene.random_point_in(area)
        if pt is None:
            return
        if water:
            radius = rng.uniform(4, 9) * m
            shape = Point(pt.x, pt.y).buffer(radius).intersection(area)
            scene.painter.paint(shape, CLUTTER, WATER, texture=scene.textures["asphalt"])
            continue
        if rng.random() < 0.4:  # containers, kiosks
            shape = _rectangle(pt.x, pt.y, rng.uniform(4, 7) * m, rng.uniform(2, 3) * m,
                               scene.road_angle(pt))
        else:  # soil, piles, bare ground
            radius = rng.uniform(2, 7) * m
            shape = MultiPoint(rng.normal(0, radius / 2, (7, 2)) + [pt.x, pt.y]).convex_hull
        shape = shape.intersection(area)
        if not scene.free(shape, gap_m=0.5):
            continue
        colour = np.multiply(CLUTTER_COLOURS[rng.integers(len(CLUTTER_COLOURS))],
                             rng.uniform(0.9, 1.1, 3))
        scene.painter.paint(shape, CLUTTER, colour, texture=scene.textures["rough"])


def _tree(scene: _Scene, x: float, y: float, radius_m: float) -> None:
    """Queue a crown (irregular disc); crowns are painted last, over everything else."""
    rng, r = scene.rng, radius_m * scene.m
    lobes = [Point(x, y).buffer(r, quad_segs=6)] + [
        Point(x + math.cos(a) * r * 0.5, y + math.sin(a) * r * 0.5)
        .buffer(r * rng.uniform(0.5, 0.7), quad_segs=4) for a in rng.uniform(0, 2 * math.pi, 4)]
    crown = unary_union(lobes)
    if scene.free(crown, gap_m=0.5):
        scene.trees.append((crown, x, y, r))


def _trees_in(scene: _Scene, area, count: int, radius_m: tuple[float, float],
              cluster: float | None = None) -> None:
    rng = scene.rng
    centre = scene.random_point_in(area) if cluster is not None else None
    for _ in range(count):
        if centre is not None:
            pt = Point(centre.x + rng.normal(0, cluster * scene.m),
                       centre.y + rng.normal(0, cluster * scene.m))
            if not area.contains(pt):
                continue
        else:
            pt = scene.random_point_in(area)
            if pt is None:
                return
        _tree(scene, pt.x, pt.y, rng.uniform(*radius_m))


def _draw_trees(scene: _Scene) -> None:
    sun = scene.painter.sun
    for crown, _, _, r in scene.trees:
        scene.painter.cast_shadow(crown, r * 1.6 * scene.shadow_ratio, darkness=0.6)
    for crown, cx, cy, r in scene.trees:
        colour = np.multiply(TREE_COLOURS[scene.rng.integers(len(TREE_COLOURS))],
                             scene.rng.uniform(0.9, 1.1, 3))

        def lit(x, y, cx=cx, cy=cy, r=r):
            dx, dy = (x - cx) / r, (y - cy) / r
            return np.clip(1 + 0.3 * (dx * sun[0] + dy * sun[1]) - 0.2 * (dx * dx + dy * dy),
                           0.5, 1.4)

        scene.painter.paint(crown, TREE, colour, texture=scene.textures["leaves"], shading=lit)


# -- land uses --


def _buildings(scene: _Scene, area, count: int, **shape) -> None:
    """Try to place ``count`` buildings (a few attempts each: most random spots do not fit)."""
    placed = 0
    for _ in range(8 * count):
        placed += _building(scene, area, **shape)
        if placed == count:
            return


def _residential(scene: _Scene, area) -> None:
    rng = scene.rng
    count = max(1, int(area.area / (300 * scene.m ** 2)))
    _buildings(scene, area, count, length_m=(9, 16), width_m=(7, 11), l_shape=0.35, flat=False)
    _trees_in(scene, area, int(rng.integers(2, 9)), (1.5, 3.5))
    if rng.random() < 0.3:
        _clutter(scene, area, int(rng.integers(1, 3)))


def _industrial(scene: _Scene, area) -> None:
    rng = scene.rng
    count = max(1, int(area.area / (1500 * scene.m ** 2)))
    _buildings(scene, area, count, length_m=(20, 45), width_m=(14, 28), l_shape=0.2, flat=True)
    _clutter(scene, area, int(rng.integers(2, 7)))
    if rng.random() < 0.7:
        _parking(scene, area, int(rng.integers(3, 12)))


def _park(scene: _Scene, area) -> None:
    rng, m = scene.rng, scene.m
    points = [scene.random_point_in(area) for _ in range(3)]
    if all(points) and rng.random() < 0.7:
        path = LineString([(p.x, p.y) for p in points]).buffer(1.0 * m).intersection(area)
        scene.painter.paint(path, IMPERVIOUS, (176, 166, 150), texture=scene.textures["rough"])
    if rng.random() < 0.25:
        _clutter(scene, area, 1, water=True)
    for _ in range(int(rng.integers(1, 4))):
        _trees_in(scene, area, int(rng.integers(4, 10)), (2.0, 4.5), cluster=8.0)


def _field(scene: _Scene, area) -> None:
    rng, m = scene.rng, scene.m
    if rng.random() < 0.4:  # hedgerow along a straight line across the field
        a, b = scene.random_point_in(area), scene.random_point_in(area)
        if a is not None and b is not None:
            line = LineString([(a.x, a.y), (b.x, b.y)])
            for d in np.arange(0, line.length, 3.5 * m):
                pt = line.interpolate(d)
                _tree(scene, pt.x, pt.y, rng.uniform(1.5, 2.5))
    if rng.random() < 0.2:
        _clutter(scene, area, 1)


def _forest(scene: _Scene, area) -> None:
    rng, m = scene.rng, scene.m
    count = int(area.area / (math.pi * (3.0 * m) ** 2) * rng.uniform(0.8, 1.2))
    _trees_in(scene, area, min(count, 400), (2.0, 4.0))


def _plaza(scene: _Scene, area) -> None:
    rng = scene.rng
    _parking(scene, area, int(rng.integers(4, 14)))
    if rng.random() < 0.6:
        _trees_in(scene, area, int(rng.integers(1, 5)), (1.5, 3.0))
    if rng.random() < 0.5:
        _clutter(scene, area, int(rng.integers(1, 3)))


BLOCK_DRAWERS: dict[str, Callable[[_Scene, object], None]] = {
    "residential": _residential, "industrial": _industrial, "park": _park, "field": _field,
    "forest": _forest, "plaza": _plaza,
}


def _finish(scene: _Scene) -> tuple[np.ndarray, np.ndarray]:
    """Render, then shadows, per-scene illumination and colour, haze and sensor noise.

    Returns ``(image uint8 [3, H, W], label uint8 [H, W])``.
    """
    rng = scene.rng
    label, image, shadow = scene.painter.render()
    image *= np.where(label == BUILDING, 1.0, shadow)  # roofs are lit from above
    gradient = 1 + 0.06 * _smooth_noise(rng, scene.size, scene.size / 2)
    gain = rng.uniform(0.85, 1.15) * rng.uniform(0.93, 1.07, 3)
    image = image * gain[:, None, None] * gradient + rng.uniform(0, 15)
    image += rng.normal(0, rng.uniform(2, 5), image.shape)
    return np.clip(image, 0, 255).round().astype(np.uint8), label
