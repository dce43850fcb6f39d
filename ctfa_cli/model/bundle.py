"""Model bundles: a checkpoint that holds everything ``predict`` needs, and loads without code.

A bundle is a ``torch.save`` file of one dict made only of tensors and plain Python types, so
``torch.load(path, weights_only=True)`` reads it and never executes code from it:

* ``format``: ``"ctfa-bundle/1"``;
* ``spec``: the :class:`~ctfa_cli.config.DatasetSpec` as a JSON-able dict (classes, palette,
  background policy, bands, normalisation, tile size) — with ``config``, the source of truth;
* ``config``: the :class:`~ctfa_cli.config.TrainConfig` as a JSON-able dict; its architecture
  fields (backbone, aux_layer, projection dims …) are taken from the saved model itself;
* ``backbone``, ``bands``, ``mean``, ``std``, ``tile_size``, ``classes``, ``palette``: a flat
  summary for people and tools that read the file without ``ctfa``;
* ``state_dict``: the network weights (EMA teacher included, for exact resumption);
* ``extra``: caller data (the training loop stores optimiser state, step, RNG states …).
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from ctfa_cli.config import DatasetSpec, TrainConfig, validation_message
from ctfa_cli.errors import CtfaError
from ctfa_cli.io import atomic_path
from ctfa_cli.model.network import CTFANetwork

BUNDLE_FORMAT = "ctfa-bundle/1"

# Exact types: numpy scalars subclass float but cannot be read back with weights_only=True.
_PLAIN_SCALARS = (str, int, float, bool, type(None))


@dataclass
class Bundle:
    """A loaded model bundle.

    Attributes:
        model: the network in eval mode, on the requested device.
        spec: the dataset spec it was trained on.
        cfg: the training config (architecture fields matching ``model``).
        extra: caller data saved with it (empty dict when none).
    """

    model: CTFANetwork
    spec: DatasetSpec
    cfg: TrainConfig
    extra: dict[str, Any] = field(default_factory=dict)


def _require_plain(value: Any, where: str) -> None:
    """Raise TypeError naming the first value under ``where`` that weights_only cannot load."""
    if isinstance(value, torch.Tensor) or type(value) in _PLAIN_SCALARS:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            _require_plain(key, f"{where} key")
            _require_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _require_plain(item, f"{where}[{index}]")
    else:
        raise TypeError(f"{where} is a {type(value).__name__}; a bundle holds only tensors, "
                        "str, int, float, bool, None, lists, tuples and dicts")


def save_bundle(
    path: Path,
    model: CTFANetwork,
    spec: DatasetSpec,
    cfg: TrainConfig,
    *,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write ``model`` with its spec and config to ``path`` atomically (replacing any file).

    Args:
        path: output file (``.pt``); written under a temporary name, then renamed.
        model: the network (unwrapped from DDP).
        spec: dataset spec; its class counts and bands must match ``model``.
        cfg: training config; its architecture fields are replaced by ``model``'s.
        extra: caller data, tensors and plain Python types only.

    Raises:
        ValueError: ``model`` does not match ``spec`` (class counts or input bands).
        TypeError: ``extra`` holds a value ``torch.load(weights_only=True)`` cannot read.
    """
    expected = (spec.num_cam_classes, spec.num_classes, spec.in_chans)
    actual = (model.num_cam_classes, model.num_classes, model.in_chans)
    if actual != expected:
        raise ValueError(f"model (cam classes, classes, bands) = {actual} does not match the "
                         f"dataset spec {spec.name!r}: {expected}")
    extra = dict(extra or {})
    _require_plain(extra, "extra")
    payload = {
        "format": BUNDLE_FORMAT,
        "spec": spec.model_dump(mode="json"),
        "config": cfg.model_copy(update=model.arch).model_dump(mode="json"),
        "backbone": model.arch["backbone"],
        "bands": list(spec.bands),
        "mean": list(spec.mean),
        "std": list(spec.std),
        "tile_size": spec.tile_size,
        "classes": list(spec.classes),
        "palette": [list(colour) for colour in spec.palette],
        "state_dict": model.state_dict(),
        "extra": extra,
    }
    with atomic_path(Path(path)) as tmp:
        torch.save(payload, tmp)


def load_bundle(path: Path, device: str | torch.device = "cpu") -> Bundle:
    """Read a bundle written by :func:`save_bundle` (``torch.load(weights_only=True)``).

    Args:
        path: the bundle file.
        device: where the weights go.

    Returns:
        The :class:`Bundle`, model in eval mode.

    Raises:
        CtfaError: the file is missing, unreadable, not a ctfa bundle, of another bundle
            format, or its weights do not fit the network it describes.
    """
    path = Path(path)
    if not path.is_file():
        raise CtfaError(f"{path}: no such checkpoint; pass a model bundle written by `ctfa "
                        "train` (RUN_DIR/checkpoints/best.pt)")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, zipfile.BadZipFile,
            OSError) as exc:
        raise CtfaError(f"{path}: not a readable ctfa checkpoint ({type(exc).__name__}); "
                        "pass a model bundle written by `ctfa train`") from exc
    if not isinstance(payload, dict) or "format" not in payload:
        raise CtfaError(f"{path}: not a ctfa model bundle (no format tag); pass a checkpoint "
                        "written by `ctfa train`")
    if payload["format"] != BUNDLE_FORMAT:
        raise CtfaError(f"{path}: bundle format {payload['format']!r} is not supported by this "
                        f"ctfa (expects {BUNDLE_FORMAT!r}); use a matching ctfa version")
    try:
        spec = DatasetSpec(**payload["spec"])
        cfg = TrainConfig(**payload["config"])
    except (ValidationError, KeyError, TypeError) as exc:
        reason = validation_message(exc) if isinstance(exc, ValidationError) else repr(exc)
        raise CtfaError(f"{path}: invalid spec or config in the bundle ({reason})") from exc
    # Built on the meta device (no random init), then the saved tensors are assigned.
    with torch.device("meta"):
        model = CTFANetwork.from_config(spec, cfg, pretrained=False)
    try:
        model.load_state_dict(payload["state_dict"], assign=True)
    except (RuntimeError, KeyError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CtfaError(f"{path}: weights do not fit the network the bundle describes "
                        f"({reason})") from exc
    return Bundle(model=model.to(device).eval(), spec=spec, cfg=cfg,
                  extra=payload.get("extra", {}))
