"""The CTFA network: ViT encoder, classifiers, two LargeFOV decoders, projection head + EMA teacher.

Submodules carry the reference's names and parameter counts (``encoder``, ``proj_head``,
``proj_head_t``, ``decoder``, ``foreground_decoder``, ``classifier``, ``aux_classifier``), except
that the encoder has no ImageNet head (the reference builds one and never uses it).

The network is a toolbox of methods rather than one ``forward``: the training step, CAM helpers
and inference each call the parts they need, and the encoder runs once per view set.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctfa_cli.config import DatasetSpec, TrainConfig
from ctfa_cli.model.backbone import Features, ViTBackbone
from ctfa_cli.model.heads import LargeFOV, MaxPoolClassifier, ProjectionHead

log = logging.getLogger("ctfa.model.network")


class CTFANetwork(nn.Module):
    """CTFA model (reference: ``model_seg_neg_fp.network``).

    Args:
        num_cam_classes: classifier logits / CAM channels ``Cc`` (``C-1`` with a background
            class, ``C`` without).
        num_classes: segmentation classes ``C`` of both decoders.
        backbone: timm ViT name.
        in_chans: input bands.
        pretrained: start from timm's pretrained weights.
        weights: local weights file of the backbone; takes precedence over ``pretrained``.
        aux_layer: block feeding the auxiliary classifier (``-3``).
        freeze_pos_embed: keep the position embeddings frozen (reference behaviour).
        proj_hidden_dim: projection head MLP width.
        proj_bottleneck_dim: projection head bottleneck width.
        proj_out_dim: projection head output dimension.
        ema_momentum: teacher momentum ``m`` of :meth:`ema_update`.

    Raises:
        CtfaUsageError: unknown backbone or ``aux_layer`` out of range.
        CtfaError: unusable weights file or pretrained weights out of reach.
    """

    def __init__(
        self,
        num_cam_classes: int,
        num_classes: int,
        *,
        backbone: str,
        in_chans: int = 3,
        pretrained: bool = False,
        weights: Path | None = None,
        aux_layer: int = -3,
        freeze_pos_embed: bool = True,
        proj_hidden_dim: int = 2048,
        proj_bottleneck_dim: int = 256,
        proj_out_dim: int = 1024,
        ema_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        self.num_cam_classes = num_cam_classes
        self.num_classes = num_classes
        self.in_chans = in_chans
        # The TrainConfig fields that fix the architecture, recorded for model bundles.
        self.arch: dict[str, Any] = {
            "backbone": backbone,
            "aux_layer": aux_layer,
            "freeze_pos_embed": freeze_pos_embed,
            "proj_hidden_dim": proj_hidden_dim,
            "proj_bottleneck_dim": proj_bottleneck_dim,
            "proj_out_dim": proj_out_dim,
            "ema_momentum": ema_momentum,
        }
        self.ema_momentum = ema_momentum

        self.encoder = ViTBackbone(backbone, in_chans=in_chans, pretrained=pretrained,
                                   weights=weights, aux_layer=aux_layer,
                                   freeze_pos_embed=freeze_pos_embed)
        dim = self.encoder.embed_dim
        self.proj_head = ProjectionHead(dim, proj_out_dim, hidden_dim=proj_hidden_dim,
                                        bottleneck_dim=proj_bottleneck_dim)
        self.proj_head_t = copy.deepcopy(self.proj_head).requires_grad_(False)
        self.decoder = LargeFOV(dim, num_classes)
        self.foreground_decoder = LargeFOV(dim, num_classes)
        self.classifier = MaxPoolClassifier(dim, num_cam_classes)
        self.aux_classifier = MaxPoolClassifier(dim, num_cam_classes)

    @classmethod
    def from_config(
        cls, spec: DatasetSpec, cfg: TrainConfig, *, pretrained: bool | None = None
    ) -> CTFANetwork:
        """Build the network a dataset spec and a training config describe.

        Args:
            spec: gives the class counts (background policy) and the input bands.
            cfg: gives the architecture and the initial weights (``weights`` file, else
                ``pretrained``).
            pretrained: ``None`` follows ``cfg``; ``False`` forces random weights (e.g. before
                loading a checkpoint); ``True`` uses ``cfg.weights`` if set, else timm's.

        Raises:
            CtfaUsageError, CtfaError: see :class:`CTFANetwork`.
        """
        use_weights = pretrained is not False and cfg.weights is not None
        use_hub = not use_weights and (cfg.pretrained if pretrained is None else pretrained)
        if not use_weights and not use_hub and pretrained is None:
            log.warning(
                "backbone %s starts from RANDOM weights (pretrained: false, no weights file); "
                "CAMs learned from scratch are far weaker: set pretrained: true, or weights: FILE "
                "with a local timm checkpoint on offline machines",
                cfg.backbone,
            )
        return cls(
            spec.num_cam_classes,
            spec.num_classes,
            backbone=cfg.backbone,
            in_chans=spec.in_chans,
            pretrained=use_hub,
            weights=cfg.weights if use_weights else None,
            aux_layer=cfg.aux_layer,
            freeze_pos_embed=cfg.freeze_pos_embed,
            proj_hidden_dim=cfg.proj_hidden_dim,
            proj_bottleneck_dim=cfg.proj_bottleneck_dim,
            proj_out_dim=cfg.proj_out_dim,
            ema_momentum=cfg.ema_momentum,
        )

    def features(self, x: Tensor) -> Features:
        """Encoder outputs of images ``[B, in_chans, H, W]`` (see :class:`Features`)."""
        return self.encoder(x)

    def classify(self, feats: Features) -> tuple[Tensor, Tensor]:
        """Image-level logits ``([B, Cc], [B, Cc])`` of the final and the auxiliary classifier."""
        return self.classifier(feats.final), self.aux_classifier(feats.aux)

    def cams(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Raw CAMs of images ``[B, in_chans, H, W]``.

        Returns:
            ``(cam, aux_cam)``, each ``[B, Cc, h, w]`` at feature resolution, before any ReLU.
            Gradients are tracked unless the caller disables them (callers use ``no_grad``).
        """
        feats = self.features(x)
        return self.classifier.cam(feats.final), self.aux_classifier.cam(feats.aux)

    def decode(self, final: Tensor) -> tuple[Tensor, Tensor]:
        """Segmentation and foreground logits ``([B, C, h, w], [B, C, h, w])`` of final tokens."""
        # The token map is a channels-last view; on CPU the dilated convolutions then convert
        # their weights at every call (forward and backward, ~30 % slower). One small copy of
        # the map avoids that.
        final = final.contiguous()
        return self.decoder(final), self.foreground_decoder(final)

    def segment(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Segmentation logits ``[B, C, H, W]`` of images ``[B, in_chans, H, W]``.

        The decoder output is upsampled bilinearly (``align_corners=False``) to ``size``, by
        default the input size (the official evaluation resizes it once, straight to the mask
        size, from a scaled input).
        """
        seg = self.decoder(self.features(x).final)
        return F.interpolate(seg, size=size or x.shape[-2:], mode="bilinear",
                             align_corners=False)

    def project_views(self, global_cls: Tensor, local_views: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher and student projections of the global and local views (contrastive tokens).

        The reference encodes the global views twice (once for the teacher, once for the
        student); that is one forward pass, so the class tokens of that pass are passed in and
        reused, detached for the teacher. The caller runs :meth:`ema_update` first, where the
        reference does.

        Args:
            global_cls: final class tokens of the 2 global views, ``[2b, D]``, crop-major
                (row ``v*b + i`` is view ``v`` of image ``i``).
            local_views: local crops ``[nl*b, in_chans, hl, wl]``, crop-major.

        Returns:
            ``(teacher_out [2b, Dout], student_out [(2+nl)*b, Dout])``; the student rows are
            the global views followed by the local crops, crop-major.
        """
        teacher_out = self.proj_head_t(global_cls.detach())
        tokens = global_cls
        if local_views.shape[0]:
            tokens = torch.cat([global_cls, self.encoder(local_views).cls])
        return teacher_out, self.proj_head(tokens)

    @torch.no_grad()
    def ema_update(self, apply: Tensor | None = None) -> None:
        """Move the teacher head towards the student: ``t ← m·t + (1−m)·s`` (``m`` = momentum).

        Args:
            apply: optional 0-d bool tensor on the model's device: where False the teacher is
                left exactly as it is. Decided on the device, so that a training step that
                skips a non-finite update does not wait for the GPU to know it.
        """
        m = self.ema_momentum
        for teacher, student in zip(self.proj_head_t.parameters(), self.proj_head.parameters(),
                                    strict=True):
            if apply is None:
                teacher.mul_(m).add_(student, alpha=1.0 - m)
            else:  # the same two roundings, kept or dropped
                teacher.copy_(torch.where(apply, teacher.mul(m).add_(student, alpha=1.0 - m),
                                          teacher))
