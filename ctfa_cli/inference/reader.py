"""Read a scene for prediction: band selection, scaling to the model's input, nodata mask.

Contract:

* **Bands.** ``--bands`` (1-based indices, in model order) wins. Otherwise bands are matched by
  name: a band's description, else its colour interpretation (``red`` → ``r`` …), equal to a
  name of the bundle's band order. When not every model band is found by name, the first
  ``in_chans`` non-alpha bands are used when the scene has exactly that many, unless that would
  put a band the scene names otherwise in another model band's place (an RGB scene into an IRRG
  model): that is a :class:`~ctfa_cli.errors.CtfaError` naming both band lists and the
  ``--bands`` fix (ISPRS IRRG tiles, tagged R, G, B, need ``--bands 1,2,3``). Bands without any
  name are taken in order with one warning. Any other count is a
  :class:`~ctfa_cli.errors.CtfaError` naming both counts and a ``--bands`` that works (a grey
  image's band repeated: ``--bands 1,1,1``).
* **Scaling.** uint8 bands are used as trained (``pixel / 255``). Any other dtype (16-bit, float)
  is stretched linearly to 0..255 between its per-scene 2nd and 98th percentiles and rounded, as
  ``ctfa prepare`` does for non-uint8 sources; the percentiles are taken on a decimated read of
  at most :data:`STRETCH_SAMPLE` pixels per side, so the scene is never read whole. Then
  ``(x / 255 - mean) / std`` with the bundle's statistics.
* **Nodata.** GDAL's mask of each selected band (from the declared nodata value, an alpha band
  or a mask band) marks invalid pixels; a pixel is valid only where every selected band is.
  Invalid pixels are zero after normalisation (the dataset mean) so they carry no signal.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window
from torch import Tensor

from ctfa_cli.config import DatasetSpec
from ctfa_cli.datasets.tiling import STRETCH_PERCENTILES
from ctfa_cli.errors import CtfaError, CtfaUsageError

log = logging.getLogger("ctfa.inference.reader")

# Longest side of the decimated read that estimates the stretch percentiles of non-uint8 bands.
STRETCH_SAMPLE = 2048

# Colour interpretations that name a band the way DatasetSpec.bands does.
_COLOR_NAMES = {ColorInterp.red: "r", ColorInterp.green: "g", ColorInterp.blue: "b"}
# Band descriptions users write for the short names of DatasetSpec.bands.
_ALIASES = {"red": "r", "green": "g", "blue": "b", "nir": "ir", "near-infrared": "ir",
            "infrared": "ir"}


def parse_band_indices(text: str | None) -> tuple[int, ...] | None:
    """Parse ``--bands`` such as ``4,1,2`` into 1-based indices (None stays None).

    Raises:
        CtfaUsageError: not a comma-separated list of positive integers.
    """
    if text is None:
        return None
    try:
        indices = tuple(int(part) for part in text.split(","))
    except ValueError:
        indices = ()
    if not indices or min(indices) < 1:
        raise CtfaUsageError(f"--bands {text!r}: expected 1-based band indices such as 4,1,2")
    return indices


def select_bands(src: rasterio.DatasetReader, spec: DatasetSpec,
                 bands: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """Choose the scene's bands, in model order (1-based indices).

    Raises:
        CtfaError: wrong number of ``bands``, an index past the scene's band count, or a band
            count that cannot be matched to the model's.
    """
    path, expected = src.name, spec.in_chans
    names = ", ".join(spec.bands)
    if bands is not None:
        if len(bands) != expected:
            raise CtfaError(f"{path}: --bands selects {len(bands)} bands but the model expects "
                            f"{expected} ({names})")
        if max(bands) > src.count:
            raise CtfaError(f"{path}: --bands asks for band {max(bands)} but the scene has "
                            f"{src.count} bands")
        return bands
    scene_names = [_band_name(description, interp) for description, interp in
                   zip(src.descriptions, src.colorinterp, strict=True)]
    by_name: dict[str, int] = {}
    for index, name in enumerate(scene_names, start=1):
        if name:
            by_name.setdefault(name, index)
    if all(name in by_name for name in spec.bands):
        return tuple(by_name[name] for name in spec.bands)
    data_bands = [i for i, interp in enumerate(src.colorinterp, start=1)
                  if interp != ColorInterp.alpha]
    if len(data_bands) != expected:
        hint = ",".join(str(data_bands[i % len(data_bands)]) for i in range(expected))
        grey = " (a grey image: its band repeated)" if len(data_bands) == 1 else ""
        raise CtfaError(f"{path}: the scene has {len(data_bands)} bands but the model expects "
                        f"{expected} ({names}); choose them with --bands, e.g. --bands "
                        f"{hint}{grey}")
    in_order = tuple(data_bands)
    # Bands taken in order would feed a band the scene names otherwise to a model band of
    # another name (an RGB scene into an IRRG model): refuse rather than map nonsense.
    misplaced = [name for position, name in enumerate(spec.bands)
                 if name in by_name and by_name[name] != in_order[position]]
    shown = ", ".join(name or "?" for name in (scene_names[i - 1] for i in in_order))
    if misplaced:
        raise CtfaError(f"{path}: the scene's bands are {shown} but the model expects {names}; "
                        "use a model trained on these bands, or, if the scene's bands are in "
                        f"the model's order whatever their tags say (ISPRS IRRG tiles are tagged "
                        f"R, G, B), pass --bands {','.join(map(str, in_order))}")
    if not any(scene_names[i - 1] for i in in_order):
        log.warning(f"{path}: the scene's bands carry no names: bands "
                   f"{','.join(map(str, in_order))} are taken as {names} (pass --bands to "
                   "choose others)")
    return in_order


def _band_name(description: str | None, interp: ColorInterp) -> str | None:
    """The short band name (``r``, ``ir`` …) a band's description, else its colour
    interpretation, gives; None when it gives none."""
    text = (description or "").strip().lower()
    if text:
        return _ALIASES.get(text, text)
    return _COLOR_NAMES.get(interp)


def _readable_crs(src: rasterio.DatasetReader) -> rasterio.crs.CRS | None:
    """The dataset's CRS, or None with a warning when PROJ cannot decode it.

    GDAL reports such a CRS (a Mars Mercator, say) as an error on the *next* call, whatever it
    is; the probe below takes that error, so that later calls work.
    """
    from rasterio._err import CPLE_BaseError

    try:
        crs = src.crs
        src.colorinterp  # noqa: B018 - the probe that raises GDAL's pending CRS error
        return crs
    except CPLE_BaseError as exc:
        log.warning("%s: its CRS cannot be read (%s): the outputs keep its geotransform but "
                    "carry no CRS", src.name, " ".join(str(exc).split()))
        return None


def _palette_lut(src: rasterio.DatasetReader, spec: DatasetSpec) -> np.ndarray | None:
    """``[256, 3]`` uint8 colours of a one-band palette image for an RGB model, else None."""
    if src.count != 1 or src.colorinterp[0] != ColorInterp.palette or spec.bands != ["r", "g",
                                                                                     "b"]:
        return None
    lut = np.zeros((256, 3), np.uint8)
    for index, colour in src.colormap(1).items():
        if 0 <= index < 256:
            lut[index] = colour[:3]
    return lut


@dataclass(frozen=True)
class RowBand:
    """Scene rows ``[row, row + height)`` over the full width, ready for the model.

    Attributes:
        row: first scene row.
        pixels: ``[in_chans, height, width]`` float32, normalised, zero where invalid.
        valid: ``[height, width]`` bool, False on nodata pixels.
    """

    row: int
    pixels: Tensor
    valid: Tensor


class SceneReader:
    """An open scene that hands out normalised bands of rows (use as a context manager).

    Args:
        path: any raster GDAL reads.
        spec: the model's dataset spec (band names, mean, std).
        bands: 1-based band indices in model order, or None to match by name / count.

    Raises:
        CtfaError: missing or unreadable file, or bands that do not fit the model.
    """

    def __init__(self, path: Path, spec: DatasetSpec, *, bands: tuple[int, ...] | None = None
                 ) -> None:
        self.path = Path(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self._src = rasterio.open(self.path)
        except RasterioIOError as exc:
            raise CtfaError(f"{path}: missing or unreadable raster "
                            f"({' '.join(str(exc).split())}); check the path") from exc
        try:
            self._crs = _readable_crs(self._src)
            # Complex bands first: any band choice a later refusal could hint at fails too.
            complex_bands = [dtype for dtype in self._src.dtypes if dtype.startswith("complex")]
            if complex_bands:
                raise CtfaError(f"{path}: complex-valued band(s) ({complex_bands[0]}), not "
                                "imagery a model reads; convert them to amplitude first, e.g. "
                                f"gdal_calc.py -A {path} --calc='abs(A)' --type=Float32 "
                                "--outfile amplitude.tif")
            self._palette = _palette_lut(self._src, spec) if bands is None else None
            if self._palette is not None:
                self.indexes: tuple[int, ...] = (1,)
                log.warning("%s: a palette image: read through its colour table as the RGB "
                            "image it shows", path)
            else:
                self.indexes = select_bands(self._src, spec, bands)
            self._stretch = self._stretch_bounds()
        except BaseException:
            self._src.close()
            raise
        self._has_mask = any(MaskFlags.all_valid not in self._src.mask_flag_enums[i - 1]
                             for i in self.indexes)
        # x_norm = x_u8 * scale - offset, with x_u8 = pixel/255 scaled to 0..255.
        std = torch.tensor(spec.std, dtype=torch.float32)[:, None, None]
        mean = torch.tensor(spec.mean, dtype=torch.float32)[:, None, None]
        self._scale, self._offset = 1.0 / (255.0 * std), mean / std
        log.debug("%s: bands %s, stretch %s", path, self.indexes, self._stretch)

    def __enter__(self) -> SceneReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the file."""
        self._src.close()

    @property
    def height(self) -> int:
        """Rows of the scene."""
        return self._src.height

    @property
    def width(self) -> int:
        """Columns of the scene."""
        return self._src.width

    @property
    def crs(self) -> rasterio.crs.CRS | None:
        """The scene CRS; None when it has none or PROJ cannot read it (with a warning)."""
        return self._crs

    @property
    def transform(self) -> rasterio.Affine:
        """Pixel → CRS affine transform (identity when not georeferenced)."""
        return self._src.transform

    @property
    def georeferenced(self) -> bool:
        """True when the scene has a geotransform (an affine transform that is not the
        identity). GCPs and RPCs, another way of georeferencing, are :attr:`gcps` and
        :attr:`rpcs`."""
        return not self._src.transform.is_identity

    @property
    def gcps(self) -> tuple[list, rasterio.crs.CRS | None] | None:
        """``(ground control points, their CRS)`` of a scene georeferenced by GCPs, else
        None."""
        points, crs = self._src.gcps
        return (points, crs) if points else None

    @property
    def rpcs(self):
        """The rational polynomial coefficients of a scene georeferenced by RPCs, else None."""
        return self._src.rpcs or None

    @property
    def stretch(self) -> list[tuple[float, float]] | None:
        """Per selected band ``(low, high)`` of the percentile stretch; None for uint8 input."""
        return self._stretch

    def read_rows(self, row: int, height: int) -> RowBand:
        """Read scene rows ``[row, row + height)`` over the full width.

        Raises:
            CtfaError: unreadable raster data.
        """
        window = Window(0, row, self.width, height)
        try:
            raw = self._src.read(self.indexes, window=window)
            masks = self._src.read_masks(self.indexes, window=window) if self._has_mask else None
        except RasterioIOError as exc:
            # rasterio's own message points at "the previous exception": GDAL's, its cause
            reason = " ".join(str(exc.__cause__ or exc).split())
            raise CtfaError(f"{self.path}: unreadable raster data at rows {row}–{row + height} "
                            f"({reason}); the file is damaged: get a new copy") from exc
        if self._palette is not None:
            raw = self._palette[raw[0]].transpose(2, 0, 1)  # [3, h, w] colours of the indices
        if self._stretch is None:
            pixels = torch.from_numpy(raw).float()
        else:
            pixels = torch.from_numpy(self._apply_stretch(raw))
        pixels = pixels.mul_(self._scale).sub_(self._offset)
        if masks is None:
            valid = torch.ones(height, self.width, dtype=torch.bool)
        else:
            valid = torch.from_numpy((masks != 0).all(axis=0))
            pixels.mul_(valid)
        return RowBand(row, pixels, valid)

    def _stretch_bounds(self) -> list[tuple[float, float]] | None:
        dtypes = {self._src.dtypes[i - 1] for i in self.indexes}
        if dtypes == {"uint8"}:
            return None
        factor = max(1, -(-max(self.height, self.width) // STRETCH_SAMPLE))
        shape = (len(self.indexes), -(-self.height // factor), -(-self.width // factor))
        sample = self._src.read(self.indexes, out_shape=shape, masked=True)
        bounds = []
        for band in sample:
            values = band.compressed().astype(np.float64)
            values = values[np.isfinite(values)]
            if values.size == 0:
                bounds.append((0.0, 0.0))
                continue
            low, high = np.percentile(values, STRETCH_PERCENTILES)
            bounds.append((float(low), float(high)))
        log.info("%s: %s input stretched to 0..255 between per-band percentiles %s",
                 self.path, "/".join(sorted(dtypes)),
                 ", ".join(f"[{lo:g}, {hi:g}]" for lo, hi in bounds))
        return bounds

    def _apply_stretch(self, raw: np.ndarray) -> np.ndarray:
        """Map ``[bands, h, w]`` raw values to float32 0..255 the way ``prepare`` does."""
        out = np.empty(raw.shape, np.float32)
        for band, (low, high), dst in zip(raw, self._stretch, out, strict=True):
            scale = 255.0 / (high - low) if high > low else 0.0
            values = np.nan_to_num(band.astype(np.float64) - low, nan=0.0) * scale
            np.clip(values, 0, 255, out=values)
            np.round(values, out=values)
            dst[...] = values
        return out
