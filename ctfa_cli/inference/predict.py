"""Whole-scene prediction: a streaming, seam-free sliding-window sweep into COGs and polygons.

One scene (:func:`predict_scene`):

1. :class:`~ctfa_cli.inference.reader.SceneReader` reads one band of rows (a window row) at a
   time, bands chosen and scaled for the model, nodata masked.
2. Windows of that band (:class:`~ctfa_cli.inference.windows.WindowGrid`) are batched — a batch
   may span two window rows — and the predictor turns them into softmax probabilities.
3. Each window is blended into a :class:`~ctfa_cli.inference.windows.BandAccumulator` with a
   Hann weight (zero on nodata pixels). After the last window of a row, the rows no later
   window touches are normalised by the weight they received, turned into classes (argmax,
   255 where no valid pixel contributed) and handed to the writers.
4. :mod:`~ctfa_cli.inference.writers` stream them into temporary GeoTIFFs and publish COGs;
   :mod:`~ctfa_cli.inference.vector` polygonises the class COG block row by block row.

Memory therefore depends on the tile, the batch and the scene width, never on its height. With
``background_io`` (the default on CUDA) reading runs in a background thread that keeps the next
batches ready, and writing in another, so the accelerator is not starved by I/O.

Many scenes (:func:`predict_scenes`): launched under ``torchrun``, each rank takes every
``WORLD_SIZE``-th scene starting at its ``RANK`` (:func:`rank_share`); no communication needed.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ctfa_cli.config import DatasetSpec
from ctfa_cli.errors import CtfaError, CtfaUsageError
from ctfa_cli.inference.reader import SceneReader
from ctfa_cli.inference.vector import VECTOR_DRIVERS, polygonize, vector_driver
from ctfa_cli.inference.windows import BandAccumulator, GridWindow, WindowGrid, blend_weights
from ctfa_cli.inference.writers import CLASS_NODATA, COGWriter, class_writer, probs_writer
from ctfa_cli.io import check_writable
from ctfa_cli.precision import autocast, check_amp
from ctfa_cli.progress import progress_bar
from kernels.dense_crf import CRFParams, dense_crf

log = logging.getLogger("ctfa.inference.predict")

# Files a folder or a glob contributes as scenes.
RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".png", ".jpg", ".jpeg", ".img", ".vrt")
# Multi-scale flip test-time augmentation: the scales of evaluation (each with a flipped copy).
TTA_SCALES = (0.75, 1.0, 1.25)


class Predictor(Protocol):
    """What the sweep needs from a model.

    Attributes:
        spec: the dataset spec (classes, palette, bands, normalisation, tile size).
        device: where the predictor returns its probabilities (blending happens there).
        patch_size: tile sizes must be multiples of it (the ViT patch size; 1: any size).
    """

    spec: DatasetSpec
    device: torch.device
    patch_size: int

    def __call__(self, batch: Tensor) -> Tensor:
        """``[B, in_chans, h, w]`` float32 normalised → ``[B, C, h, w]`` float probabilities
        (softmax over classes), on the predictor's device."""
        ...


def resolve_device(name: str = "auto") -> torch.device:
    """Turn ``auto``/``cpu``/``cuda``/``cuda:N`` into a device.

    ``auto`` and ``cuda`` pick ``cuda:$LOCAL_RANK`` under ``torchrun`` (one GPU per rank).

    Raises:
        CtfaUsageError: an unknown name, or CUDA asked for but not available.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise CtfaUsageError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CtfaUsageError(f"--device {name}: CUDA is not available here; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def current_index(device: torch.device) -> int | None:
    """The CUDA device to make current for work on ``device`` (None: nothing to select).

    Triton kernels and NCCL run on the *current* CUDA device, not on their tensors' device, and
    a process that never selects one opens a context on GPU 0: so a process working on
    ``cuda:N`` makes ``N`` current first (single-process ``--device cuda:N``, and every rank of
    ``torchrun``, whose ``cuda`` resolves to ``cuda:$LOCAL_RANK``).

    Args:
        device: a resolved device (:func:`resolve_device`); a CUDA device without an index
            counts as ``cuda:0``, what PyTorch makes of it.
    """
    if device.type != "cuda":
        return None
    return 0 if device.index is None else device.index


def make_current(device: torch.device | str) -> None:
    """``torch.cuda.set_device`` to :func:`current_index` of ``device``; nothing on CPU."""
    index = current_index(torch.device(device))
    if index is not None:
        torch.cuda.set_device(index)


class BundlePredictor:
    """A model bundle as a :class:`Predictor`: softmax of ``model.segment``.

    Args:
        bundle: a loaded bundle (``model``: a CTFANetwork, ``spec``).
        device: where the model runs.
        tta: average the softmax over :data:`TTA_SCALES` × {identity, horizontal flip}; scaled
            inputs are resized bilinearly (to a multiple of the patch size) and their
            probabilities resized back.
        amp: ``"bf16"`` runs the network under bfloat16 autocast (see
            :func:`ctfa_cli.precision.autocast`); the softmax is taken in float32 either way.

    Raises:
        CtfaUsageError: an unknown ``amp``.
    """

    def __init__(self, bundle: Any, device: torch.device | str = "cpu", *, tta: bool = False,
                 amp: str = "none") -> None:
        self.amp = check_amp(amp)
        self.spec: DatasetSpec = bundle.spec
        self.device = torch.device(device)
        make_current(self.device)  # before the model's tensors reach the device
        self.model = bundle.model.to(self.device).eval()
        self.patch_size: int = self.model.encoder.patch_size[0]
        self.tta = tta

    @classmethod
    def from_checkpoint(cls, path: Path, device: torch.device | str = "cpu", *,
                        tta: bool = False, amp: str = "none") -> BundlePredictor:
        """Load a bundle written by ``ctfa train``.

        Raises:
            CtfaError: missing, corrupt or foreign checkpoint.
            CtfaUsageError: an unknown ``amp``.
        """
        from ctfa_cli.model.bundle import load_bundle

        make_current(device)  # loading puts the weights on the device already
        return cls(load_bundle(path, device), device, tta=tta, amp=amp)

    @torch.inference_mode()
    def __call__(self, batch: Tensor) -> Tensor:
        """Softmax probabilities ``[B, C, h, w]`` of ``[B, in_chans, h, w]`` tiles (``h``, ``w``
        multiples of :attr:`patch_size`)."""
        size = batch.shape[-2:]
        batch = batch.to(self.device, non_blocking=True)
        if not self.tta:
            return self._logits(batch).softmax(1)
        total: Tensor | float = 0.0
        for scale in TTA_SCALES:
            scaled_size = [max(1, round(n * scale / self.patch_size)) * self.patch_size
                           for n in size]
            scaled = batch if scale == 1 else F.interpolate(
                batch, size=scaled_size, mode="bilinear", align_corners=False)
            for flip in (False, True):
                logits = self._logits(scaled.flip(-1) if flip else scaled)
                probs = (logits.flip(-1) if flip else logits).softmax(1)
                if scale != 1:
                    probs = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)
                total = total + probs
        return total / (2 * len(TTA_SCALES))

    def _logits(self, batch: Tensor) -> Tensor:
        """float32 segmentation logits of ``batch``, the network run under ``amp``."""
        with autocast(self.amp, self.device):
            return self.model.segment(batch).float()


@dataclass(frozen=True)
class PredictOptions:
    """How to sweep a scene and what to write.

    Attributes:
        tile: window size in pixels, a multiple of the predictor's patch size (None: the
            bundle's ``tile_size`` rounded down to one).
        overlap: overlap of neighbouring windows in pixels (None: a quarter of the tile).
        batch_size: windows per forward pass.
        bands: 1-based scene band indices in model order (None: by name or count).
        probs: also write ``<stem>_probs.tif`` beside the class raster.
        vector: polygons: a file path (``.gpkg``, ``.geojson``, ``.fgb``; one scene), or a
            format name (``gpkg``, ``geojson``, ``fgb``) for ``<stem>.<format>`` beside each
            class raster; None for no polygons.
        simplify: polygon simplification tolerance in CRS units (0: none).
        min_area: polygons below this area (CRS units squared) are dropped.
        overwrite: replace existing outputs.
        progress: show a progress bar with pixels/s (:func:`ctfa_cli.progress.progress_bar`).
        background_io: read and write in background threads (None: on CUDA only).
        stac: also write ``<stem>.stac.json``, a STAC Item of the map (:mod:`ctfa_cli.stac`).
        crf: post-process the blended probabilities with this dense CRF
            (:func:`kernels.dense_crf.dense_crf`), block of finished rows by block, each cut
            into pieces one tile wide (the official code runs it per chip), with the colours
            of those rows; None: no CRF.
    """

    tile: int | None = None
    overlap: int | None = None
    batch_size: int = 8
    bands: tuple[int, ...] | None = None
    probs: bool = False
    vector: str | None = None
    simplify: float = 0.0
    min_area: float = 0.0
    overwrite: bool = False
    progress: bool = True
    background_io: bool | None = None
    stac: bool = False
    crf: CRFParams | None = None

    def grid(self, predictor: Predictor, height: int, width: int) -> WindowGrid:
        """The window grid of a ``height × width`` scene for ``predictor``.

        Raises:
            CtfaUsageError: a tile that is not a multiple of the patch size, or an overlap not
                smaller than the tile.
        """
        multiple = predictor.patch_size
        if self.tile is None:  # the bundle's tile size, rounded down to whole patches
            tile = max(multiple, predictor.spec.tile_size // multiple * multiple)
        elif self.tile % multiple:
            raise CtfaUsageError(f"--tile {self.tile} must be a multiple of the model's patch "
                                 f"size {multiple}")
        else:
            tile = self.tile
        overlap = tile // 4 if self.overlap is None else self.overlap
        if not 0 <= overlap < tile:
            raise CtfaUsageError(f"--overlap {overlap} must be >= 0 and smaller than --tile "
                                 f"{tile}")
        return WindowGrid(height, width, tile, overlap)

    def outputs(self, classes: Path) -> tuple[Path | None, Path | None]:
        """``(probs, vector)`` paths that go with the class raster ``classes``."""
        probs = classes.with_name(f"{classes.stem}_probs.tif") if self.probs else None
        if self.vector is None:
            return probs, None
        if f".{self.vector.lower()}" in VECTOR_DRIVERS:
            return probs, classes.with_suffix(f".{self.vector.lower()}")
        return probs, Path(self.vector)


@dataclass(frozen=True)
class SceneResult:
    """What :func:`predict_scene` wrote.

    Attributes:
        scene: the input raster.
        classes: class COG; ``probs`` and ``vector`` the optional outputs.
        width, height: size in pixels (of the input and of every raster output).
        crs: the output CRS, ``EPSG:n`` when it has a code, else WKT (None when the scene is
            not georeferenced).
        seconds: wall time of the scene, writing included.
        pixels_per_second: ``width · height / seconds``.
        class_pixels: valid pixels per class name.
        nodata_pixels: pixels written as nodata (255).
        polygons: polygons written (None without ``vector``).
        stac: the STAC Item written beside the class COG (None without ``stac``).
    """

    scene: Path
    classes: Path
    probs: Path | None
    vector: Path | None
    width: int
    height: int
    crs: str | None
    seconds: float
    pixels_per_second: float
    class_pixels: dict[str, int] = field(default_factory=dict)
    nodata_pixels: int = 0
    polygons: int | None = None
    stac: Path | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (paths as strings)."""
        return {key: str(value) if isinstance(value, Path) else value
                for key, value in self.__dict__.items()}


def predict_scene(scene: Path, predictor: Predictor, out: Path, *,
                  options: PredictOptions = PredictOptions()) -> SceneResult:
    """Predict one scene of any size into a class COG (and probabilities, polygons).

    Args:
        scene: any raster GDAL reads; georeferenced or not.
        predictor: the model (see :class:`Predictor`).
        out: the class COG to write (single band uint8, nodata 255, palette, class names).
        options: tiling, batching and the optional outputs.

    Returns:
        What was written, with timing and class pixel counts.

    Raises:
        CtfaError: unreadable scene, bands that do not fit, an output that exists (without
            ``overwrite``) or is the input.
        CtfaUsageError: bad tiling options or vector format.
    """
    scene, out = Path(scene), Path(out)
    spec = predictor.spec
    probs_path, vector_path = options.outputs(out)
    stac_path = None
    if options.stac:
        from ctfa_cli import stac

        stac_path = stac.stac_path(out)
    for path in (out, probs_path, vector_path, stac_path):
        if path is not None:
            check_writable(path, options.overwrite, inputs=(scene,))
    if vector_path is not None:
        vector_driver(vector_path)
    started = time.perf_counter()
    with SceneReader(scene, spec, bands=options.bands) as reader:
        grid = options.grid(predictor, reader.height, reader.width)
        crs = transform = None
        georeference: dict[str, Any] = {}  # GCPs or RPCs, carried as the scene has them
        if reader.georeferenced:
            crs, transform = reader.crs, reader.transform
        elif reader.gcps is not None or reader.rpcs is not None:
            kind = "GCPs" if reader.gcps is not None else "RPCs"
            if vector_path is not None:
                raise CtfaError(f"{scene}: georeferenced by {kind}, not a geotransform, so "
                                "polygons would be in pixel units; warp it first (gdalwarp "
                                f"{'-tps' if kind == 'GCPs' else '-rpc'} {scene} warped.tif) and "
                                "predict warped.tif, or drop --vector")
            georeference = ({"gcps": reader.gcps} if reader.gcps is not None
                            else {"rpcs": reader.rpcs})
            log.info("%s is georeferenced by %s: %s carries them as they are", scene, kind, out)
        else:
            log.warning("%s is not georeferenced: %s is written in pixel coordinates without "
                        "a CRS", scene, out)
        geo = {"width": reader.width, "height": reader.height, "crs": crs,
               "transform": transform}
        background = (torch.device(predictor.device).type == "cuda"
                      if options.background_io is None else options.background_io)
        counts = torch.zeros(256, dtype=torch.int64, device=predictor.device)
        with class_writer(out, spec, **geo, **georeference) as classes, \
                _optional(probs_path and probs_writer(probs_path, spec, **geo,
                                                      **georeference)) as probs:
            with _Writer(lambda block: block.write(classes, probs), background) as writer, \
                    progress_bar(scene.name, grid.height * grid.width, enabled=options.progress,
                                 unit="px") as advance:
                for row, probabilities, valid in sweep(reader, predictor, grid,
                                                       batch_size=options.batch_size,
                                                       background_io=background):
                    if options.crf is not None:
                        probabilities = crf_rows(reader, spec, row, probabilities, valid,
                                                 options.crf, grid.tile)
                    # max(0).indices: same first-index tie rule as argmax, far faster on CPU.
                    labels = probabilities.max(0).indices.to(torch.uint8).masked_fill_(
                        ~valid, CLASS_NODATA)
                    counts += torch.bincount(labels.flatten(), minlength=256)
                    writer.submit(_RowBlock(
                        row, labels[None].cpu().numpy(), valid.cpu().numpy(),
                        None if probs is None
                        else probabilities.mul(255).round_().to(torch.uint8).cpu().numpy()))
                    advance(valid.numel())
            classes.commit()
            if probs is not None:
                probs.commit()
    polygons = None
    if vector_path is not None:
        polygons = polygonize(out, vector_path, spec, simplify=options.simplify,
                              min_area=options.min_area)
    seconds = time.perf_counter() - started
    pixels = geo["width"] * geo["height"]
    counts = counts.cpu()
    log.info("%s → %s: %d×%d px in %.1f s (%.3f Mpx/s)", scene, out, geo["width"],
             geo["height"], seconds, pixels / seconds / 1e6)
    result = SceneResult(
        scene=scene, classes=out, probs=probs_path, vector=vector_path, width=geo["width"],
        height=geo["height"], crs=None if crs is None else crs.to_string(), seconds=seconds,
        pixels_per_second=pixels / seconds,
        class_pixels={name: int(counts[i]) for i, name in enumerate(spec.classes)},
        nodata_pixels=int(counts[CLASS_NODATA]), polygons=polygons)
    if stac_path is not None:
        written = stac.write_prediction_item(result, spec, crs=crs, transform=transform,
                                             predictor=predictor)
        result = dataclasses.replace(result, stac=written)
    return result


def crf_rows(reader: SceneReader, spec: DatasetSpec, row: int, probs: Tensor, valid: Tensor,
             params: CRFParams, piece: int) -> Tensor:
    """The dense CRF over a block of finished rows, ``piece`` columns at a time.

    Args:
        reader: the open scene (the block's rows are read again for their colours).
        spec: the model's spec (its normalisation is undone to get the colours back).
        row: first row of the block.
        probs: ``[C, n, W]`` blended probabilities.
        valid: ``[n, W]`` valid pixels (nodata stays 0 in the result).
        params: the CRF.
        piece: width of the pieces the block is cut into (the tile size).

    Returns:
        ``[C, n, W]`` CRF marginals, on ``probs``' device.
    """
    band = reader.read_rows(row, probs.shape[1])
    # The colours as trained on: undo the normalisation of the model's first three bands (a
    # grey model's one band repeated), back to 0..255.
    mean = torch.tensor(spec.mean, device=band.pixels.device)[:, None, None]
    std = torch.tensor(spec.std, device=band.pixels.device)[:, None, None]
    colours = ((band.pixels * std + mean) * 255).clamp(0, 255).round()
    colours = colours[:3] if len(colours) >= 3 else colours[:1].expand(3, -1, -1)
    colours = colours.to(probs.device)
    out = torch.empty_like(probs)
    for start in range(0, probs.shape[-1], piece):
        cut = slice(start, start + piece)
        out[:, :, cut] = dense_crf(probs[None, :, :, cut].contiguous(),
                                   colours[None, :, :, cut].contiguous(), params)[0]
    return out.masked_fill_(~valid, 0.0)


@dataclass(frozen=True)
class _RowBlock:
    """Finished rows on the host, ready to be written."""

    row: int
    labels: np.ndarray  # [1, n, W] uint8
    valid: np.ndarray  # [n, W] bool
    probs: np.ndarray | None  # [C, n, W] uint8

    def write(self, classes: COGWriter, probs: COGWriter | None) -> None:
        classes.write_rows(self.row, self.labels)
        if probs is not None:
            probs.write_rows(self.row, self.probs, self.valid)


def sweep(reader: SceneReader, predictor: Predictor, grid: WindowGrid, *, batch_size: int = 8,
          background_io: bool = False) -> Iterator[tuple[int, Tensor, Tensor]]:
    """Run the windows of ``grid`` through ``predictor`` and blend them, streaming.

    Args:
        reader: the open scene.
        predictor: the model.
        grid: windows over the scene (``grid.height``/``width`` equal the reader's).
        batch_size: windows per forward pass (a batch may span two window rows).
        background_io: read the next batches in a background thread while the model runs.

    Yields:
        ``(row, probs [C, n, W] float32, valid [n, W] bool)`` for consecutive blocks of
        finished rows, top to bottom, on ``predictor.device``: ``probs`` is normalised by the
        blending weight each pixel received; ``valid`` is False where no valid pixel was seen
        (nodata), and ``probs`` is 0 there.
    """
    device = torch.device(predictor.device)
    weights = blend_weights(grid.tile).to(device)
    accumulator = None  # created at the first batch, when the class count is known
    # Pinned host memory lets the host-to-device copy of a batch run asynchronously.
    batches = _batches(reader, grid, batch_size,
                       pin_memory=background_io and device.type == "cuda")
    with _prefetched(batches, background_io) as prefetched:
        for windows, tiles, valid in prefetched:
            probs = predictor(tiles)
            if accumulator is None:
                accumulator = BandAccumulator(probs.shape[1], grid.width, grid.band_height,
                                              device)
            # Nodata and padding get no weight, so they never reach any output pixel.
            window_weights = weights * valid.to(device, non_blocking=True)
            for i, window in enumerate(windows):
                accumulator.add(window, probs[i], window_weights[i])
                if window.last_in_row:
                    top = accumulator.top
                    yield top, *accumulator.pop(grid.finished_until(window.grid_row))


def _batches(reader: SceneReader, grid: WindowGrid, batch_size: int, *, pin_memory: bool
             ) -> Iterator[tuple[list[GridWindow], Tensor, Tensor]]:
    """Yield ``(windows, tiles [n, in_chans, tile, tile], valid [n, tile, tile] bool)``.

    Reads one band of rows per window row; windows smaller than the tile (small scenes) are
    zero-padded and their padding is marked invalid.
    """
    band = None
    pending: list[GridWindow] = []
    tiles: list[Tensor] = []
    masks: list[Tensor] = []
    tile = grid.tile
    for window in grid.windows():
        if band is None or band.row != window.row:
            band = reader.read_rows(window.row, grid.band_height)
        cols = slice(window.col, window.col + window.width)
        tiles.append(band.pixels[:, :, cols])
        masks.append(band.valid[:, cols])
        pending.append(window)
        if len(pending) == batch_size:
            yield pending, *_stack(tiles, masks, tile, pin_memory)
            pending, tiles, masks = [], [], []
    if pending:
        yield pending, *_stack(tiles, masks, tile, pin_memory)


def _stack(tiles: list[Tensor], masks: list[Tensor], tile: int, pin_memory: bool
           ) -> tuple[Tensor, Tensor]:
    channels, height, width = tiles[0].shape
    if height == width == tile and not pin_memory:  # no padding: one copy
        return torch.stack(tiles), torch.stack(masks)
    batch = torch.zeros(len(tiles), channels, tile, tile, pin_memory=pin_memory)
    valid = torch.zeros(len(tiles), tile, tile, dtype=torch.bool, pin_memory=pin_memory)
    for i, (pixels, mask) in enumerate(zip(tiles, masks, strict=True)):
        batch[i, :, :height, :width] = pixels
        valid[i, :height, :width] = mask
    return batch, valid


class _optional:
    """``with _optional(x) as y``: enter ``x`` when it is a context manager, else yield None."""

    def __init__(self, manager: Any) -> None:
        self._manager = manager or None

    def __enter__(self) -> Any:
        return None if self._manager is None else self._manager.__enter__()

    def __exit__(self, *exc) -> None:
        if self._manager is not None:
            self._manager.__exit__(*exc)


class _prefetched:
    """Iterate ``items`` in a background thread, a few items ahead (or inline when not
    ``enabled``); errors are re-raised in the consumer, and leaving early stops the thread."""

    _DONE = object()

    def __init__(self, items: Iterator, enabled: bool, depth: int = 2) -> None:
        self._items, self._enabled = items, enabled
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Iterator:
        if not self._enabled:
            return self._items
        self._thread = threading.Thread(target=self._produce, name="ctfa-reader", daemon=True)
        self._thread.start()
        return self._consume()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _produce(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    return
            self._put(self._DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put(exc)

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _consume(self) -> Iterator:
        while (item := self._queue.get()) is not self._DONE:
            if isinstance(item, BaseException):
                raise item
            yield item


class _Writer:
    """Apply ``write`` to submitted row blocks in order: inline, or in one background thread
    with at most ``depth`` blocks waiting (so memory stays bounded)."""

    def __init__(self, write: Callable[[Any], None], background: bool, depth: int = 4) -> None:
        self._write, self._depth = write, depth
        self._executor = ThreadPoolExecutor(1, "ctfa-writer") if background else None
        self._pending: deque[Future] = deque()

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self._executor is None:
            return
        try:
            while self._pending:
                future = self._pending.popleft()
                if exc_type is None:
                    future.result()
                else:
                    future.cancel()
        finally:
            self._executor.shutdown(wait=True)

    def submit(self, block: Any) -> None:
        if self._executor is None:
            self._write(block)
            return
        self._pending.append(self._executor.submit(self._write, block))
        while len(self._pending) > self._depth or (self._pending and self._pending[0].done()):
            self._pending.popleft().result()


def collect_scenes(items: Sequence[str], stdin: TextIO | None = None) -> list[Path]:
    """Expand scene arguments: files, folders (their rasters), globs, and ``-`` (paths read
    from ``stdin``, one per line).

    Raises:
        CtfaUsageError: no scene at all.
        CtfaError: a path that does not exist and matches nothing.
    """
    scenes: list[Path] = []
    for item in items:
        if item == "-":
            if stdin is None:
                raise CtfaUsageError("'-' reads scene paths from stdin, but none was given")
            scenes += collect_scenes([line.strip() for line in stdin if line.strip()])
            continue
        path = Path(item)
        if path.is_dir():
            scenes += sorted(p for p in path.iterdir()
                             if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES)
        elif path.exists():
            scenes.append(path)
        elif matches := sorted(glob.glob(item, recursive=True)):
            scenes += [Path(m) for m in matches if Path(m).suffix.lower() in RASTER_SUFFIXES]
        else:
            raise CtfaError(f"{item}: no such scene file, folder or glob match")
    if not scenes:
        raise CtfaUsageError("no scene to predict: give raster files, a folder, a glob or -")
    return list(dict.fromkeys(scenes))


def plan_outputs(scenes: Sequence[Path], out: Path, options: PredictOptions) -> list[Path]:
    """Class raster path of each scene.

    One scene and an ``out`` ending in ``.tif``/``.tiff`` (not a folder): ``out`` itself.
    Otherwise ``out`` is a folder receiving ``<scene stem>.tif``.

    Raises:
        CtfaUsageError: a file ``out`` or a vector file path for several scenes, or two scenes
            with the same stem.
    """
    out = Path(out)
    single_file = out.suffix.lower() in (".tif", ".tiff") and not out.is_dir()
    if len(scenes) == 1 and single_file:
        return [out]
    if single_file:
        raise CtfaUsageError(f"--out {out} names one file but {len(scenes)} scenes were given; "
                             "pass a folder")
    vector = options.vector
    if vector is not None and f".{vector.lower()}" not in VECTOR_DRIVERS and len(scenes) > 1:
        raise CtfaUsageError(f"--vector {vector} names one file but {len(scenes)} scenes were "
                             "given; pass a format (gpkg, geojson or fgb) to write one file "
                             "beside each class raster")
    by_stem: dict[str, Path] = {}
    for scene in scenes:
        if (other := by_stem.setdefault(scene.stem, scene)) != scene:
            raise CtfaUsageError(f"{other} and {scene} would both be written to "
                                 f"{out / (scene.stem + '.tif')}; predict them separately")
    return [out / f"{scene.stem}.tif" for scene in scenes]


def rank_share(items: Sequence[Any]) -> list[Any]:
    """The items of this process under ``torchrun``: every ``WORLD_SIZE``-th from ``RANK``
    (all of them outside torchrun)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    return list(items[rank::world])


def predict_scenes(scenes: Sequence[Path], predictor: Predictor, out: Path, *,
                   options: PredictOptions = PredictOptions()) -> Iterable[SceneResult]:
    """Predict this rank's share of ``scenes`` (see :func:`rank_share`), one after the other.

    Every output of the share is checked before the first scene starts, so a run does not fail
    hours in on an existing file.

    Yields:
        One :class:`SceneResult` per finished scene.

    Raises:
        CtfaError / CtfaUsageError: as :func:`predict_scene` and :func:`plan_outputs`.
    """
    plan = rank_share(list(zip(scenes, plan_outputs(scenes, out, options), strict=True)))
    for scene, classes in plan:
        for path in (classes, *options.outputs(classes)):
            if path is not None:
                check_writable(path, options.overwrite, inputs=(scene,))
    for scene, classes in plan:
        yield predict_scene(scene, predictor, classes, options=options)
