"""Streamed Cloud-Optimized GeoTIFF writers for class maps and class probabilities.

Rows arrive top to bottom as the sweep advances. They are buffered up to one row of GeoTIFF
blocks and written to a tiled, deflate-compressed GeoTIFF under a temporary name, so every block
is compressed once and memory holds one block row, not the scene. :meth:`COGWriter.commit`
then has GDAL's COG driver (GDAL >= 3.1) copy that file into a Cloud-Optimized GeoTIFF
(tiled, deflate, overviews, IFDs first) under another temporary name and renames it onto the
output: an interrupted run never leaves a file that looks finished.

Georeferencing is copied as is: the CRS (EPSG or not, e.g. a custom transverse Mercator) and the
affine transform (rotated ones included, which GeoTIFF stores as a transformation matrix). A
scene without georeferencing gives an output without CRS or transform.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from ctfa_cli.config import DatasetSpec
from ctfa_cli.io import atomic_path

log = logging.getLogger("ctfa.inference.writers")

CLASS_NODATA = 255
BLOCK_SIZE = 512


class COGWriter:
    """Write a uint8 raster row block by row block, then publish it as a COG.

    Use as a context manager and call :meth:`commit` once every row is written; leaving the
    block without commit (an exception) removes the temporary files and writes nothing.

    Args:
        path: final output path.
        width, height: raster size in pixels.
        count: number of bands.
        crs: output CRS (None: not georeferenced).
        transform: pixel → CRS affine transform (None: not georeferenced).
        nodata: nodata value of every band, or None.
        use_mask: keep an internal mask band (GDAL per-dataset mask) written from ``valid``.
        overview_resampling: GDAL resampling name for the overviews (``mode`` for classes,
            ``average`` for probabilities).
        colormap: colour table of band 1 ``{value: (r, g, b, a)}``, or None.
        descriptions: one description per band, or None.
        tags: dataset metadata (GDAL default domain).
        gcps: ``(ground control points, their CRS)`` for a scene georeferenced by GCPs (with
            ``crs`` and ``transform`` None), carried as the input had them.
        rpcs: rational polynomial coefficients, likewise.
    """

    def __init__(self, path: Path, *, width: int, height: int, count: int,
                 crs: CRS | None, transform: rasterio.Affine | None, nodata: int | None = None,
                 use_mask: bool = False, overview_resampling: str = "nearest",
                 colormap: dict[int, tuple[int, int, int, int]] | None = None,
                 descriptions: list[str] | None = None, tags: dict[str, str] | None = None,
                 gcps: tuple[list, CRS | None] | None = None, rpcs=None) -> None:
        self.path = Path(path)
        self.width, self.height, self.count = width, height, count
        self._use_mask = use_mask
        self._overview_resampling = overview_resampling
        self._stream = self.path.with_name(f".tmp-{os.getpid()}-stream-{self.path.name}")
        self._block = min(BLOCK_SIZE, height)
        self._buffer = np.zeros((count, self._block, width), np.uint8)
        self._buffer_valid = np.zeros((self._block, width), bool)
        self._buffer_top = 0  # scene row of buffer row 0
        self._next_row = 0
        profile = {
            "driver": "GTiff", "width": width, "height": height, "count": count,
            "dtype": "uint8", "tiled": True, "blockxsize": BLOCK_SIZE,
            "blockysize": BLOCK_SIZE, "compress": "deflate", "bigtiff": "IF_SAFER",
        }
        if crs is not None:
            profile["crs"] = crs
        if transform is not None:
            profile["transform"] = transform
        if nodata is not None:
            profile["nodata"] = nodata
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            self._dst = rasterio.open(self._stream, "w", **profile)
        try:
            if colormap is not None:
                self._dst.write_colormap(1, colormap)
                self._dst.colorinterp = [ColorInterp.palette]
            for index, text in enumerate(descriptions or [], start=1):
                self._dst.set_band_description(index, text)
            if tags:
                self._dst.update_tags(**tags)
            if gcps is not None:
                self._dst.gcps = gcps
            if rpcs is not None:
                self._dst.rpcs = rpcs
        except BaseException:
            self._discard()
            raise

    def __enter__(self) -> COGWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if not self._dst.closed or self._stream.exists():
            self._discard()

    def write_rows(self, row: int, data: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Write rows ``[row, row + n)`` over the full width; rows must come in order.

        Args:
            row: first scene row; must equal the end of the previous call.
            data: ``[count, n, width]`` uint8.
            valid: ``[n, width]`` bool for the internal mask (required when ``use_mask``).

        Raises:
            ValueError: rows out of order or of the wrong shape.
        """
        if row != self._next_row or data.shape[0] != self.count or data.shape[2] != self.width:
            raise ValueError(f"expected rows from {self._next_row} of shape "
                             f"[{self.count}, n, {self.width}], got row {row}, {data.shape}")
        self._next_row = row + data.shape[1]
        done = 0
        while done < data.shape[1]:
            start = row + done - self._buffer_top
            n = min(data.shape[1] - done, self._block - start)
            self._buffer[:, start:start + n] = data[:, done:done + n]
            if valid is not None:
                self._buffer_valid[start:start + n] = valid[done:done + n]
            done += n
            if start + n == self._block or self._buffer_top + start + n == self.height:
                self._flush(start + n)

    def commit(self) -> None:
        """Publish the COG at :attr:`path` (overviews, deflate, blocks of 512).

        Raises:
            ValueError: not every row was written.
        """
        if self._next_row != self.height:
            raise ValueError(f"{self.path}: only {self._next_row} of {self.height} rows written")
        self._dst.close()
        with atomic_path(self.path) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            rasterio.shutil.copy(
                self._stream, tmp, driver="COG", compress="deflate", blocksize=BLOCK_SIZE,
                overview_resampling=self._overview_resampling, bigtiff="IF_SAFER",
            )
        self._stream.unlink()

    def _flush(self, rows: int) -> None:
        window = Window(0, self._buffer_top, self.width, rows)
        self._dst.write(self._buffer[:, :rows], window=window)
        if self._use_mask:
            self._dst.write_mask(
                np.where(self._buffer_valid[:rows], np.uint8(255), np.uint8(0)), window=window)
        self._buffer_top += rows

    def _discard(self) -> None:
        self._dst.close()
        self._stream.unlink(missing_ok=True)


def class_writer(path: Path, spec: DatasetSpec, *, width: int, height: int, crs: CRS | None,
                 transform: rasterio.Affine | None, **georeference) -> COGWriter:
    """Writer of the class map: one uint8 band, nodata 255, the palette as colour table.

    Class names go in the metadata as ``CLASS_NAMES`` (a JSON list) and ``CLASS_<i>=name``.
    ``georeference``: ``gcps``/``rpcs`` of :class:`COGWriter`.
    """
    colormap = {i: (*rgb, 255) for i, rgb in enumerate(spec.palette)}
    colormap[CLASS_NODATA] = (0, 0, 0, 0)
    tags = {"CLASS_NAMES": json.dumps(spec.classes)}
    tags |= {f"CLASS_{i}": name for i, name in enumerate(spec.classes)}
    return COGWriter(path, width=width, height=height, count=1, crs=crs, transform=transform,
                     nodata=CLASS_NODATA, overview_resampling="mode", colormap=colormap,
                     descriptions=["class"], tags=tags, **georeference)


def probs_writer(path: Path, spec: DatasetSpec, *, width: int, height: int, crs: CRS | None,
                 transform: rasterio.Affine | None, **georeference) -> COGWriter:
    """Writer of class probabilities: one uint8 band per class (``round(255 · p)``), band
    descriptions = class names, nodata pixels in the internal mask (0..255 all stay values);
    ``georeference`` as :func:`class_writer`."""
    return COGWriter(path, width=width, height=height, count=spec.num_classes, crs=crs,
                     transform=transform, use_mask=True, overview_resampling="average",
                     descriptions=list(spec.classes),
                     tags={"CLASS_NAMES": json.dumps(spec.classes), "SCALE": "1/255"},
                     **georeference)
