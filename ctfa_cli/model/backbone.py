"""The CTFA encoder: a timm Vision Transformer read through ``forward_intermediates``.

The reference (ToCo/CTFA ``VisionTransformer.forward_features``) returns three things, and so does
:class:`ViTBackbone`:

* the final patch tokens after the final LayerNorm, as a feature map ``[B, D, h, w]``;
* the patch tokens of block ``aux_layer`` (default ``-3``) before any norm, ``[B, D, h, w]``;
* the final class token after the final LayerNorm, ``[B, D]`` (input of the projection head).

Any input size works: the patch grid is ``(H // p, W // p)`` and the position embeddings are
resampled to it. Two documented differences from timm's ViT as shipped, both made by this
wrapper (the model class and its weights are timm's, unchanged):

* **Position-embedding resampling is the reference's**: plain bicubic interpolation
  (``F.interpolate(mode="bicubic", align_corners=False)``, cubic kernel a = -0.75, no
  antialias) of the patch part of ``pos_embed`` from the model's native grid to the input's
  grid; the class-token entry is not resampled. timm's own dynamic-size path
  (``resample_abs_pos_embed``) uses ``antialias=True``, which switches to a different cubic
  kernel (a = -0.5) and low-pass filters when the grid shrinks: at the CTFA CAM scales 0.5
  and 1.5 and for local crops that moves every token, so CAMs, ROI masks and pseudo labels
  would no longer match the official ones (``train_step`` parity cases). The wrapper installs
  :func:`_pos_embed_like_reference` as the ViT's position-embedding step; the features still
  come only from timm's ``forward_intermediates``.
* The ImageNet head is not built (``num_classes=0``): the reference builds a 768→1000 head
  (769,000 parameters) that it never uses.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
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


def resample_pos_embed(pos_embed: Tensor, new_grid: tuple[int, int],
                       old_grid: tuple[int, int], num_prefix_tokens: int) -> Tensor:
    """The reference's position-embedding resampling (``VisionTransformer.prepare_tokens``).

    Args:
        pos_embed: ``[1, num_prefix_tokens + gh·gw, D]``, the patch part row-major on the
            native ``old_grid = (gh, gw)``.
        new_grid: the input's patch grid ``(h, w)``.
        old_grid: the native grid.
        num_prefix_tokens: leading entries (class token) that are kept as they are.

    Returns:
        ``[1, num_prefix_tokens + h·w, D]`` in ``pos_embed``'s dtype: the patch part
        interpolated bicubically (``align_corners=False``, no antialias; computed in float32);
        ``pos_embed`` itself when the grids are equal.
    """
    if tuple(new_grid) == tuple(old_grid):
        return pos_embed
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = patches.shape[-1]
    grid = patches.float().reshape(1, *old_grid, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False)
    patches = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)
    return torch.cat([prefix, patches], dim=1)


def _pos_embed_like_reference(self: VisionTransformer, x: Tensor) -> Tensor:
    """timm's ``VisionTransformer._pos_embed`` with :func:`resample_pos_embed` for the
    dynamic-size resampling (the rest as timm does it: class/register tokens, ``no_embed_class``,
    dropout).

    Args:
        x: patch embeddings ``[B, h, w, D]`` (timm's NHWC patch output of a dynamic-size ViT).

    Returns:
        Tokens ``[B, num_prefix_tokens + h·w, D]``.
    """
    # Installed only on ViTs with a pos_embed (see ViTBackbone).
    batch, h, w, dim = x.shape
    prefix = [t.expand(batch, -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
    pos = resample_pos_embed(self.pos_embed, (h, w), tuple(self.patch_embed.grid_size),
                             0 if self.no_embed_class else self.num_prefix_tokens)
    x = x.reshape(batch, h * w, dim)
    if self.no_embed_class:
        x = torch.cat([*prefix, x + pos], dim=1)
    else:
        x = torch.cat([*prefix, x], dim=1) + pos
    return self.pos_drop(x)


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
        # The reference's resampling instead of timm's antialiased one (module docstring). A
        # bound method of this ViT, so that copies of the model (deepcopy) bind their own.
        if self.vit.pos_embed is not None:
            self.vit._pos_embed = types.MethodType(_pos_embed_like_reference, self.vit)

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
