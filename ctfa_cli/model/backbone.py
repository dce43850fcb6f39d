"""The CTFA encoder: a timm Vision Transformer read through ``forward_intermediates``.

The reference (ToCo/CTFA ``VisionTransformer.forward_features``) returns three things, and so does
:class:`ViTBackbone`:

* the final patch tokens after the final LayerNorm, as a feature map ``[B, D, h, w]``;
* the patch tokens of block ``aux_layer`` (default ``-3``) before any norm, ``[B, D, h, w]``;
* the final class token after the final LayerNorm, ``[B, D]`` (input of the projection head).

Any input size works: the patch grid is ``(H // p, W // p)`` and timm resamples the position
embeddings to it (``dynamic_img_size=True``). Two documented differences from the reference:

* timm resamples with ``F.interpolate(mode="bicubic", antialias=True)`` where the reference
  calls bicubic without antialias. Both are bicubic; they differ by the cubic kernel (a=-0.5 with
  antialias, a=-0.75 without) and by low-pass filtering when the grid shrinks (local crops).
  The ViT is used as timm ships it, not patched: on a smooth (sin-cos) 14×14 embedding the two
  differ by about 1% (relative L2) at a 20×20 grid and 4% at 6×6.
* The ImageNet head is not built (``num_classes=0``): the reference builds a 768→1000 head
  (769,000 parameters) that it never uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import timm
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import Tensor, nn

from ctfa_cli.errors import CtfaError, CtfaUsageError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz")
# Where a ctfa model bundle keeps the timm ViT in its state dict.
BUNDLE_ENCODER_PREFIX = "encoder.vit."


@dataclass
class Features:
    """Encoder outputs for one batch.

    Attributes:
        final: final patch tokens after the final LayerNorm, ``[B, D, h, w]`` float.
        aux: patch tokens of block ``aux_layer`` before any norm, ``[B, D, h, w]`` float.
        cls: final class token after the final LayerNorm, ``[B, D]`` float.
    """

    final: Tensor
    aux: Tensor
    cls: Tensor


def create_vit(
    name: str,
    *,
    in_chans: int = 3,
    pretrained: bool = False,
    weights: Path | None = None,
) -> VisionTransformer:
    """Create a timm ViT without classification head that accepts any input size.

    Args:
        name: timm model name, e.g. ``deit_base_patch16_224`` or ``vit_tiny_patch16_224``.
        in_chans: number of input bands. With pretrained weights and ``in_chans != 3``, timm
            adapts the RGB patch-embedding kernel (``adapt_input_conv``: channels repeated
            cyclically and rescaled by ``3 / in_chans``).
        pretrained: fetch timm's pretrained weights (network or the local hub cache).
        weights: local weights of a timm ViT (``.safetensors``, ``.pth``/``.pt``/``.bin`` state
            dict, possibly under a ``model``/``state_dict`` key, or a big_vision ``.npz``), or
            a ctfa model bundle (``checkpoints/*.pt``), whose encoder is taken; takes
            precedence over ``pretrained``. Loaded without executing code (``weights_only``);
            the ImageNet head, if present, is dropped; every other tensor of the model must
            come from the file.

    Returns:
        The timm model, ``num_classes=0``, ``dynamic_img_size=True``.

    Raises:
        CtfaUsageError: unknown model name, or a timm model that is not a ViT with a class token.
        CtfaError: the weights file is missing, unreadable, of another architecture or lacks
            some of the model's tensors, or the pretrained weights cannot be fetched (offline
            machine).
    """
    if not timm.is_model(name):
        raise CtfaUsageError(
            f"unknown backbone {name!r}; use a timm ViT such as deit_base_patch16_224 or "
            "vit_tiny_patch16_224"
        )
    kwargs = {"num_classes": 0, "in_chans": in_chans, "dynamic_img_size": True}
    if weights is not None:
        weights = Path(weights)
        if not weights.is_file():
            raise CtfaError(f"{weights}: no such weights file; pass the path of a timm {name} "
                            "checkpoint (.safetensors, .pth or .npz)")
        if weights.suffix not in WEIGHT_SUFFIXES:
            raise CtfaError(f"{weights}: unsupported weights format; use one of "
                            f"{', '.join(WEIGHT_SUFFIXES)}")
        model = _create(name, kwargs, pretrained=False)
        # timm's loader with the file in place of the download (.npz files go through its
        # big_vision loader): it converts the checkpoint, resamples the position embeddings
        # and adapts the patch embedding to the bands. It loads non-strictly once the
        # ImageNet head is dropped, so the filter checks that the file covers the model.
        source = {**model.pretrained_cfg, "file": str(weights),
                  "custom_load": weights.suffix == ".npz"}
        try:
            timm.models.load_pretrained(
                model, pretrained_cfg=source, num_classes=0, in_chans=in_chans,
                filter_fn=lambda state, vit: _complete_vit_state(state, vit, weights, name))
        except (RuntimeError, KeyError, ValueError, OSError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise CtfaError(f"{weights}: not loadable as {name} weights ({reason}); pass a "
                            f"checkpoint of the same architecture") from exc
        return model
    return _create(name, kwargs, pretrained=pretrained)


def _create(name: str, kwargs: dict, *, pretrained: bool) -> VisionTransformer:
    """``timm.create_model(name, pretrained=pretrained, **kwargs)``, checked to be a ViT."""
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except OSError as exc:  # only fetching pretrained weights touches files
        raise CtfaError(f"could not fetch pretrained weights for {name} ({type(exc).__name__});"
                        " offline? pass --set weights=FILE with a local checkpoint, or "
                        "--set pretrained=false") from exc
    except TypeError as exc:  # a non-ViT model class rejects dynamic_img_size
        raise _not_a_vit(name) from exc
    if not isinstance(model, VisionTransformer) or model.cls_token is None:
        raise _not_a_vit(name)
    return model


def _complete_vit_state(state: dict[str, Tensor], model: VisionTransformer, weights: Path,
                        name: str) -> dict[str, Tensor]:
    """timm's ViT checkpoint filter, after taking a ctfa bundle's encoder, checked for coverage.

    Raises:
        CtfaError: the file lacks tensors of the model (other key names, another model), which
            timm's non-strict load would leave at their random initialisation.
    """
    if any(key.startswith(BUNDLE_ENCODER_PREFIX) for key in state):
        state = {key.removeprefix(BUNDLE_ENCODER_PREFIX): value for key, value in state.items()
                 if key.startswith(BUNDLE_ENCODER_PREFIX)}
    state = checkpoint_filter_fn(state, model)
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    if missing:
        raise CtfaError(f"{weights}: not loadable as {name} weights ({len(missing)} of the "
                        f"model's {len(expected)} tensors are not in the file, first "
                        f"{missing[0]}); pass a checkpoint of the same architecture or a ctfa "
                        "model bundle")
    return state


def _not_a_vit(name: str) -> CtfaUsageError:
    return CtfaUsageError(f"backbone {name!r} is not a timm ViT with a class token; CTFA needs one "
                          "(e.g. deit_base_patch16_224)")


class ViTBackbone(nn.Module):
    """A timm ViT returning CTFA's three encoder outputs (see :class:`Features`).

    Args:
        name: timm model name.
        in_chans: number of input bands.
        pretrained: fetch timm's pretrained weights.
        weights: local weights file (see :func:`create_vit`); takes precedence over
            ``pretrained``.
        aux_layer: block whose tokens feed the auxiliary classifier, Python-style index into
            the blocks (``-3``: third from last).
        freeze_pos_embed: keep the position embeddings out of training (the reference does).

    Raises:
        CtfaUsageError: see :func:`create_vit`; ``aux_layer`` outside the blocks.
        CtfaError: see :func:`create_vit`.
    """

    def __init__(
        self,
        name: str,
        *,
        in_chans: int = 3,
        pretrained: bool = False,
        weights: Path | None = None,
        aux_layer: int = -3,
        freeze_pos_embed: bool = True,
    ) -> None:
        super().__init__()
        self.vit = create_vit(name, in_chans=in_chans, pretrained=pretrained, weights=weights)
        depth = len(self.vit.blocks)
        if not -depth <= aux_layer < depth:
            raise CtfaUsageError(f"aux_layer={aux_layer} is outside the {depth} blocks of {name}; "
                                 f"use a value in [-{depth}, {depth - 1}]")
        self.name = name
        self.aux_index = aux_layer % depth
        self.embed_dim: int = self.vit.embed_dim
        self.patch_size: tuple[int, int] = tuple(self.vit.patch_embed.patch_size)
        self.vit.pos_embed.requires_grad_(not freeze_pos_embed)

    def forward(self, x: Tensor) -> Features:
        """Encode a batch.

        Args:
            x: normalised images ``[B, in_chans, H, W]`` float. Rows and columns beyond the last
                whole patch are ignored, as the reference's strided patch convolution does.

        Returns:
            :class:`Features` with ``h = H // p`` and ``w = W // p`` for patch size ``p``.
        """
        ph, pw = self.patch_size
        x = x[..., : x.shape[-2] // ph * ph, : x.shape[-1] // pw * pw]
        tokens, (aux,) = self.vit.forward_intermediates(
            x, indices=[self.aux_index], norm=False, output_fmt="NCHW"
        )
        batch, _, h, w = aux.shape
        # Same layout as the reference's to_2D: [B, N, D] -> [B, D, h, w] (a strided view).
        final = tokens[:, self.vit.num_prefix_tokens :].transpose(1, 2).reshape(batch, -1, h, w)
        if self.aux_index == len(self.vit.blocks) - 1:
            # The reference overwrites the last block's output with the normed one.
            aux = final
        return Features(final=final, aux=aux, cls=tokens[:, 0])
