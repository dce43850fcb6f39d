"""An ONNX model written by ``ctfa export`` as a :class:`~ctfa_cli.inference.predict.Predictor`.

``ctfa predict --model model.onnx`` runs the graph with onnxruntime through the same streaming,
blending and writing path as a checkpoint (:func:`~ctfa_cli.inference.predict.predict_scene`):
the scene reader standardises the bands exactly as the metadata states, the graph returns
softmax probabilities, and the sweep blends them. Everything the sweep needs (classes, palette,
bands, normalisation, tile size, patch size) comes from ctfa's metadata keys; an ONNX file
without them (any other model) is refused with the missing key named.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from torch import Tensor

from ctfa_cli.config import DatasetSpec, validation_message
from ctfa_cli.errors import CtfaError, CtfaUsageError
from ctfa_cli.inference.onnx_export import INPUT_NAME, ONNX_FORMAT, REQUIRED_KEYS

ONNX_SUFFIX = ".onnx"


def read_metadata(path: Path) -> dict[str, Any]:
    """ctfa's and Deepness' metadata of an ONNX file, JSON-decoded (no session is built).

    Raises:
        CtfaError: the file is missing, not ONNX, or a value is not JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise CtfaError(f"{path}: no such ONNX model; write one with `ctfa export --model "
                        "CKPT --out model.onnx`")
    import onnx

    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise CtfaError(f"{path}: not a readable ONNX model ({type(exc).__name__}); write one "
                        "with `ctfa export`") from exc
    return _decode({p.key: p.value for p in model.metadata_props}, path)


def _decode(raw: dict[str, str], path: Path) -> dict[str, Any]:
    decoded = {}
    for key, value in raw.items():
        try:
            decoded[key] = json.loads(value)
        except json.JSONDecodeError as exc:
            raise CtfaError(f"{path}: ONNX metadata {key!r} is not JSON ({value[:40]!r}); "
                            "re-export the model with `ctfa export`") from exc
    return decoded


def check_metadata(meta: dict[str, Any], path: Path) -> tuple[DatasetSpec, int]:
    """The dataset spec and patch size that ctfa's metadata describes.

    Raises:
        CtfaError: a key of :data:`REQUIRED_KEYS` is missing (named in the message), the format
            is another one, or the spec is invalid.
    """
    for key in REQUIRED_KEYS:
        if key not in meta:
            raise CtfaError(f"{path}: ONNX metadata lacks ctfa's key {key!r}; export the model "
                            "with `ctfa export --model CKPT` (or predict with the checkpoint)")
    if meta["ctfa_format"] != ONNX_FORMAT:
        raise CtfaError(f"{path}: ONNX format {meta['ctfa_format']!r} is not supported by this "
                        f"ctfa (expects {ONNX_FORMAT!r}); re-export it with this ctfa")
    try:
        spec = DatasetSpec(**meta["ctfa_spec"])
    except (ValidationError, TypeError) as exc:
        reason = validation_message(exc) if isinstance(exc, ValidationError) else repr(exc)
        raise CtfaError(f"{path}: invalid ctfa_spec in the ONNX metadata ({reason})") from exc
    patch = meta["ctfa_patch_size"]
    if not isinstance(patch, int) or patch < 1:
        raise CtfaError(f"{path}: ctfa_patch_size {patch!r} is not a positive integer; "
                        "re-export the model with `ctfa export`")
    return spec, patch


class OnnxPredictor:
    """An ONNX model from ``ctfa export`` run with onnxruntime (a :class:`Predictor`).

    Args:
        path: the ``.onnx`` file.
        device: ``cpu``, or a CUDA device (onnxruntime's CUDA provider when installed, else
            CPU). Probabilities are returned on the CPU, where the sweep then blends them.

    Attributes:
        spec, patch_size, device: as :class:`~ctfa_cli.inference.predict.Predictor` asks.
        source: the ONNX file; metadata: its decoded metadata.

    Raises:
        CtfaError: onnx/onnxruntime not installed, not a readable ONNX model, or metadata
            without ctfa's keys.
    """

    def __init__(self, path: Path, device: torch.device | str = "cpu") -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise CtfaError("predicting with an ONNX model needs onnxruntime and onnx: pip "
                            "install 'ctfa[onnx]'") from exc
        self.source = Path(path)
        self.metadata = read_metadata(self.source)
        self.spec, self.patch_size = check_metadata(self.metadata, self.source)
        self.device = torch.device("cpu")
        providers = ["CPUExecutionProvider"]
        if (torch.device(device).type == "cuda"
                and "CUDAExecutionProvider" in ort.get_available_providers()):
            index = torch.device(device).index or 0
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(self.source), providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise CtfaError(f"{self.source}: onnxruntime cannot load the model ({reason})"
                            ) from exc
        inputs = [i.name for i in self.session.get_inputs()]
        if inputs != [INPUT_NAME]:
            raise CtfaError(f"{self.source}: expected one input {INPUT_NAME!r}, found {inputs}; "
                            "re-export the model with `ctfa export`")
        self._output = self.session.get_outputs()[0].name  # "probs" comes first

    def __call__(self, batch: Tensor) -> Tensor:
        """Softmax probabilities ``[B, C, h, w]`` float32 (CPU) of ``[B, in_chans, h, w]``
        standardised tiles (``h``, ``w`` multiples of :attr:`patch_size`)."""
        array = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        (probs,) = self.session.run([self._output], {INPUT_NAME: array})
        return torch.from_numpy(probs)


def model_predictor(path: Path, device: torch.device | str = "cpu", *, tta: bool = False,
                    amp: str = "none") -> Any:
    """The predictor of a ``--model`` file: :class:`OnnxPredictor` for ``.onnx``, else a
    :class:`~ctfa_cli.inference.predict.BundlePredictor` of the checkpoint.

    Raises:
        CtfaUsageError: ``--tta`` or ``--amp`` asked of an ONNX model (the exported graph runs
            one scale in float32).
        CtfaError: as the chosen predictor raises.
    """
    path = Path(path)
    if path.suffix.lower() == ONNX_SUFFIX:
        if tta or amp != "none":
            raise CtfaUsageError(f"{path}: --tta and --amp work with checkpoints only; drop "
                                 "them or pass the .pt bundle")
        return OnnxPredictor(path, device)
    from ctfa_cli.inference.predict import BundlePredictor

    predictor = BundlePredictor.from_checkpoint(path, device, tta=tta, amp=amp)
    predictor.source = path  # provenance of the STAC Items (ctfa_cli.stac.model_provenance)
    return predictor
