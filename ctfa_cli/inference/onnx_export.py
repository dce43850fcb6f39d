"""Export a model bundle as ONNX that QGIS (the Deepness plugin) and ``ctfa predict`` both run.

The graph (:class:`ExportedSegmenter`) is the segmentation branch of the network followed by
the softmax over classes, and optionally the raw CAMs of both classifiers:

* input ``image``: float32 ``[batch, bands, height, width]``, already standardised as ctfa's
  reader does (``(pixel / 255 - mean) / std`` per band, in the model's band order);
  ``height`` and ``width`` must be multiples of the ViT patch size (``ctfa_patch_size``);
* output ``probs``: float32 ``[batch, classes, height, width]``, softmax probabilities;
* with ``cams``: ``cam`` and ``aux_cam``, float32 ``[batch, cam_classes, height / p,
  width / p]``, the raw CAMs of the final and auxiliary classifier (before any ReLU).

Batch, height and width are all dynamic: timm's ViT (built with ``dynamic_img_size``)
resamples its position embeddings bicubically from the input's token grid, and that resampling
exports as an ONNX ``Resize`` with a computed size, so no tile size is baked into the graph.

The normalisation is *not* folded into the graph but stated in the metadata, under the keys the
Deepness plugin reads (it divides pixels by 255, then standardises with
``standardization_mean``/``standardization_std``), so Deepness, ``ctfa predict`` and any other
runtime feed the model the same numbers.

Metadata (``metadata_props``, every value JSON-encoded, as Deepness expects):

* Deepness: ``model_type`` (``"Segmentor"``), ``class_names`` (``{"0": name, …}``),
  ``resolution`` (cm per pixel of the training data, when known), ``tile_size`` and
  ``tiles_size`` (the plugin's code reads the first, its documentation names the second),
  ``tiles_overlap`` (percent of the tile: 25, the overlap ``ctfa predict`` uses by default),
  ``standardization_mean``, ``standardization_std``;
* ctfa: ``ctfa_format``, ``ctfa_version``, ``ctfa_dataset``, ``ctfa_bands``, ``ctfa_palette``,
  ``ctfa_spec`` (the whole dataset spec), ``ctfa_backbone``, ``ctfa_patch_size``,
  ``ctfa_outputs``, ``ctfa_input``, ``ctfa_source_checkpoint``, ``ctfa_source_sha256``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctfa_cli import __version__
from ctfa_cli.config import DatasetSpec
from ctfa_cli.errors import CtfaError
from ctfa_cli.io import atomic_path, check_writable

log = logging.getLogger("ctfa.inference.onnx_export")

ONNX_FORMAT = "ctfa-onnx/1"
INPUT_NAME = "image"
OUTPUT_NAMES = ("probs", "cam", "aux_cam")
# Percent of the tile that neighbouring Deepness tiles overlap: ctfa predict's default quarter.
TILES_OVERLAP_PERCENT = 25
# The exported graph is checked against PyTorch on one random tile before it is published:
# the largest absolute difference of softmax probabilities allowed (float32 on CPU measures
# ~1e-7; reordered reductions in onnxruntime's fused kernels stay far below this).
PROBS_TOLERANCE = 1e-4
# Largest tile side (pixels) the dynamic graph is declared for.
MAX_TILE = 8192
# What `ctfa predict --model model.onnx` needs from the metadata, in the order it checks them.
REQUIRED_KEYS = ("ctfa_format", "ctfa_spec", "ctfa_patch_size", "ctfa_outputs")
INPUT_DESCRIPTION = ("float32 [batch, bands, height, width] in ctfa_bands order, each band "
                     "(pixel / 255 - standardization_mean) / standardization_std; height and "
                     "width multiples of ctfa_patch_size")


class ExportedSegmenter(nn.Module):
    """The exported graph: softmax of the segmentation branch (and the raw CAMs).

    Args:
        model: a :class:`~ctfa_cli.model.network.CTFANetwork` in eval mode.
        cams: also return the CAMs of the final and the auxiliary classifier.
    """

    def __init__(self, model: nn.Module, cams: bool = False) -> None:
        super().__init__()
        self.model = model
        self.cams = cams

    def forward(self, image: Tensor) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        """``[B, in_chans, H, W]`` → probs ``[B, C, H, W]`` (and CAMs ``[B, Cc, H/p, W/p]``).

        The same operations as ``CTFANetwork.segment`` followed by ``softmax(1)``, with the
        encoder run once for both the decoder and the classifiers.
        """
        feats = self.model.features(image)
        seg = self.model.decoder(feats.final)
        probs = F.interpolate(seg, size=image.shape[-2:], mode="bilinear",
                              align_corners=False).softmax(1)
        if not self.cams:
            return probs
        return (probs, self.model.classifier.cam(feats.final),
                self.model.aux_classifier.cam(feats.aux))


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote.

    Attributes:
        onnx: the ONNX file.
        source: the model bundle it came from; ``sha256`` its hash.
        outputs: output names of the graph.
        tile_size: the tile size stated for Deepness (the bundle's, in whole patches).
        resolution_cm: cm per pixel stated for Deepness (None: unknown, not stated).
        max_abs_diff: largest |ONNX − PyTorch| of the probabilities on the check tile.
        check_shape: ``[B, bands, H, W]`` of the random check tile.
        seconds: wall time of export and check.
    """

    onnx: Path
    source: Path
    sha256: str
    outputs: tuple[str, ...]
    tile_size: int
    resolution_cm: float | None
    max_abs_diff: float
    check_shape: tuple[int, ...]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (paths as strings)."""
        return {key: str(value) if isinstance(value, Path) else
                list(value) if isinstance(value, tuple) else value
                for key, value in self.__dict__.items()}


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def deepness_metadata(spec: DatasetSpec, *, patch_size: int,
                      resolution_cm: float | None) -> dict[str, Any]:
    """The Deepness plugin's metadata of a model on ``spec`` (values not yet JSON-encoded).

    Args:
        spec: the bundle's dataset spec (classes, normalisation, tile size).
        patch_size: the ViT patch size (the tile is stated in whole patches).
        resolution_cm: cm per pixel of the training imagery; None leaves the key out
            (Deepness then asks the user).
    """
    tile = max(patch_size, spec.tile_size // patch_size * patch_size)
    meta: dict[str, Any] = {
        "model_type": "Segmentor",
        "class_names": {str(i): name for i, name in enumerate(spec.classes)},
        "tile_size": tile,
        "tiles_size": tile,
        "tiles_overlap": TILES_OVERLAP_PERCENT,
        "standardization_mean": [float(v) for v in spec.mean],
        "standardization_std": [float(v) for v in spec.std],
    }
    if resolution_cm is not None:
        meta["resolution"] = float(resolution_cm)
    return meta


def ctfa_metadata(spec: DatasetSpec, *, backbone: str, patch_size: int, outputs: tuple[str, ...],
                  source: Path, sha256: str) -> dict[str, Any]:
    """ctfa's own metadata keys (values not yet JSON-encoded); see the module docstring."""
    return {
        "ctfa_format": ONNX_FORMAT,
        "ctfa_version": __version__,
        "ctfa_dataset": spec.name,
        "ctfa_bands": list(spec.bands),
        "ctfa_palette": [list(colour) for colour in spec.palette],
        "ctfa_spec": spec.model_dump(mode="json"),
        "ctfa_backbone": backbone,
        "ctfa_patch_size": patch_size,
        "ctfa_outputs": list(outputs),
        "ctfa_input": INPUT_DESCRIPTION,
        "ctfa_source_checkpoint": Path(source).name,
        "ctfa_source_sha256": sha256,
    }


def training_resolution_cm(data_dir: Path | None) -> float | None:
    """cm per pixel of a DATA_DIR's chips, when its CRS is in metres (None otherwise).

    Read from the geotransform of the first chip of ``chips.gpkg`` (chips keep their scene's
    pixel size). Non-georeferenced chips, degrees, or a missing DATA_DIR give None.
    """
    if data_dir is None:
        return None
    import rasterio

    from ctfa_cli.datasets.datadir import DataDir

    try:
        data = DataDir.open(Path(data_dir))
        if not len(data.chips):
            return None
        with rasterio.open(data.root / data.chips.iloc[0]["image"]) as src:
            if src.crs is None or not src.crs.is_projected:
                return None
            metres = src.crs.linear_units_factor[1]
            return round(abs(src.transform.a) * metres * 100, 4)
    except (CtfaError, OSError, rasterio.errors.RasterioError, KeyError, ValueError) as exc:
        log.info("%s: resolution of the training data unknown (%s)", data_dir, exc)
        return None


def _require_onnx() -> None:
    missing = [name for name in ("onnx", "onnxscript") if not _importable(name)]
    if missing:
        raise CtfaError(f"ctfa export needs {' and '.join(missing)}: pip install 'ctfa[onnx]'")


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def export_onnx(checkpoint: Path, out: Path, *, cams: bool = False,
                resolution_cm: float | None = None, data_dir: Path | None = None,
                overwrite: bool = False, check: bool = True, seed: int = 0) -> ExportResult:
    """Export a model bundle's segmentation branch (and CAM heads) to ONNX with metadata.

    Args:
        checkpoint: a model bundle written by ``ctfa train``.
        out: the ONNX file; written under a temporary name, then renamed.
        cams: also export the raw CAMs of both classifiers (outputs ``cam``, ``aux_cam``).
        resolution_cm: cm per pixel stated for Deepness; None: measured on ``data_dir``'s
            chips (:func:`training_resolution_cm`), else left out.
        data_dir: the DATA_DIR the model was trained on (for the resolution only).
        overwrite: replace an existing ``out``.
        check: run the written graph with onnxruntime (when installed) on one random tile and
            refuse it when the probabilities differ from PyTorch by more than
            :data:`PROBS_TOLERANCE`.
        seed: seed of the random check tile.

    Returns:
        The :class:`ExportResult`.

    Raises:
        CtfaError: ``out`` exists without ``overwrite`` or is the checkpoint; the checkpoint is
            not a ctfa bundle; onnx/onnxscript are missing; the check fails.
    """
    from ctfa_cli.model.bundle import load_bundle

    started = time.perf_counter()
    checkpoint, out = Path(checkpoint), Path(out)
    check_writable(out, overwrite, inputs=(checkpoint,))
    _require_onnx()
    import onnx

    bundle = load_bundle(checkpoint, "cpu")
    spec, model = bundle.spec, bundle.model.float().eval()
    patch = int(model.encoder.patch_size[0])
    graph = ExportedSegmenter(model, cams=cams).eval()
    outputs = OUTPUT_NAMES if cams else OUTPUT_NAMES[:1]
    sha256 = file_sha256(checkpoint)
    if resolution_cm is None:
        resolution_cm = training_resolution_cm(data_dir)
    if resolution_cm is None:
        log.warning("%s: resolution of the training data unknown; pass --resolution CM (cm "
                    "per pixel) so that QGIS resamples other imagery to it", out)
    metadata = deepness_metadata(spec, patch_size=patch, resolution_cm=resolution_cm)
    metadata |= ctfa_metadata(spec, backbone=bundle.cfg.backbone, patch_size=patch,
                              outputs=outputs, source=checkpoint, sha256=sha256)

    # Two tiles of two patches square as the example input: any size is declared dynamic.
    example = torch.zeros(2, spec.in_chans, 2 * patch, 2 * patch)
    batch = torch.export.Dim("batch", min=1, max=4096)
    rows = torch.export.Dim("rows", min=1, max=MAX_TILE // patch)
    cols = torch.export.Dim("cols", min=1, max=MAX_TILE // patch)
    # The exporter prints its progress on stdout, which carries only data in ctfa.
    with contextlib.redirect_stdout(sys.stderr), torch.no_grad():
        try:
            program = torch.onnx.export(
                graph, (example,), input_names=[INPUT_NAME], output_names=list(outputs),
                dynamic_shapes={"image": {0: batch, 2: patch * rows, 3: patch * cols}},
                dynamo=True, verbose=False)
        except Exception as exc:  # the exporter raises many types; one line for the user
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise CtfaError(f"{checkpoint}: the network could not be exported to ONNX "
                            f"({reason})") from exc
    proto = program.model_proto
    proto.producer_name, proto.producer_version = "ctfa", __version__
    proto.doc_string = (f"ctfa {spec.name} segmentation model ({bundle.cfg.backbone}) from "
                        f"{checkpoint.name}; input: {INPUT_DESCRIPTION}")
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    with atomic_path(out) as tmp:
        onnx.save_model(proto, tmp)
        diff, shape = float("nan"), ()
        if check and _importable("onnxruntime"):
            diff, shape = _check(tmp, graph, spec.in_chans, patch, seed)
            if not diff <= PROBS_TOLERANCE:
                raise CtfaError(f"{out}: the exported graph differs from PyTorch by {diff:.3g} "
                                f"(> {PROBS_TOLERANCE}) on a random tile; please report it")
        elif check:
            log.warning("onnxruntime is not installed: %s is not checked against PyTorch", out)
    seconds = time.perf_counter() - started
    log.info("%s → %s (%s) in %.1f s; max |ONNX − PyTorch| %.2g on a random tile", checkpoint,
             out, ", ".join(outputs), seconds, diff)
    return ExportResult(onnx=out, source=checkpoint, sha256=sha256, outputs=tuple(outputs),
                        tile_size=metadata["tile_size"], resolution_cm=resolution_cm,
                        max_abs_diff=diff, check_shape=tuple(shape), seconds=seconds)


def _check(path: Path, graph: ExportedSegmenter, in_chans: int, patch: int, seed: int
           ) -> tuple[float, tuple[int, ...]]:
    """Max |ONNX − PyTorch| of the probabilities on a random non-square tile, and its shape."""
    import onnxruntime as ort

    generator = torch.Generator().manual_seed(seed)
    tile = torch.randn(1, in_chans, 3 * patch, 4 * patch, generator=generator)
    with torch.no_grad():
        expected = graph(tile)
    expected = expected[0] if isinstance(expected, tuple) else expected
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (actual, *_) = session.run(None, {INPUT_NAME: tile.numpy()})
    return float((torch.from_numpy(actual) - expected).abs().max()), tuple(tile.shape)
