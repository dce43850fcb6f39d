"""One CTFA training step as one module forward (so that DDP syncs all its gradients).

What one step computes (official ``dist_train_*_seg_neg_fp.py``), for a batch of ``b`` crops
of ``S×S`` pixels with ``h×w`` feature cells:

1. one encoder pass over the training crops and the second global views together (the
   reference encodes the crops once and the global views twice more, once for the teacher head
   and once for the student: the same forward pass, reused here);
2. multi-scale + flip CAMs of both classifiers, without gradient (the crops' plain CAMs are
   taken from step 1 instead of a second identical encoder pass);
3. ROI mask from the aux CAM; local crops cut from the separately colour-augmented copy,
   centred on uncertain/background pixels, with negative flags; one encoder pass over them;
   classifiers, decoders and projection heads;
4. classification losses, CTC between teacher global views and student global + local views;
5. PTC on the final tokens with the affinity mask of the aux-CAM pseudo label at feature
   resolution; the crop box is **scaled to the feature map** first (the reference passes it in
   crop pixels, which mislocates it and can drop the whole image's PTC supervision);
6. past the warm-up gate: CAM → pseudo label with the background thresholds → PAR refinement
   at half resolution → segmentation loss, dense-CRF energy regulariser and joint loss.

The reference also runs both decoders inside every CAM pass and discards their output; they
run here only on the training crops' final tokens.

``total = cls + cls_aux + w_ptc·PTC + w_ctc·CTC`` plus ``w_seg·seg + w_reg·reg +
w_joint·joint`` once past the gate. The EMA teacher is updated by the training loop after each
optimiser step (see :func:`ctfa_cli.training.loop.train`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctfa_cli.config import DatasetSpec, TrainConfig
from ctfa_cli.model.backbone import Features
from ctfa_cli.model.network import CTFANetwork
from ctfa_cli.objectives.cam import (
    cam_to_label,
    checked_boxes,
    label_to_aff_mask,
    multi_scale_cams,
    roi_mask,
    sample_local_crops,
    scale_box,
)
from ctfa_cli.objectives.losses import (
    cls_loss,
    ctc_loss,
    energy_loss,
    joint_loss,
    ptc_loss,
    seg_loss,
)
from ctfa_cli.objectives.refine import COLOUR_BANDS, pseudo_label_from_cams

Phase = Callable[[str], AbstractContextManager]


@dataclass
class StepOutput:
    """What one step computed.

    Attributes:
        loss: scalar total loss (with gradient).
        terms: detached scalar loss terms: ``cls``, ``cls_aux``, ``ptc``, ``ctc``, and past the
            gate ``seg``, ``reg``, ``joint``.
    """

    loss: Tensor
    terms: dict[str, Tensor]


def seg_terms_active(step: int, gate: int) -> bool:
    """Whether the seg/reg/joint terms count at 0-based step ``step``.

    The reference trains with ``n_iter <= gate`` → weights 0 (``n_iter`` 0-based), so the terms
    join at step ``gate + 1``: the first ``gate + 1`` steps are warm-up.
    """
    return step > gate


class CTFAStep(nn.Module):
    """The full CTFA objective of one training step.

    Args:
        network: the CTFA network (its parameters are this module's parameters).
        spec: dataset spec (background policy, normalisation, ignore index).
        cfg: training config (thresholds, crop sampling, loss weights, warm-up gate …).

    Attributes:
        phase: optional ``phase(name) -> context manager`` wrapped around each part of the
            step (``cams``, ``crops``, ``forward``, ``cls``, ``ctc``, ``ptc``, ``refine``,
            ``seg``, ``reg``, ``joint``); the benchmark uses it to time them.
    """

    def __init__(self, network: CTFANetwork, spec: DatasetSpec, cfg: TrainConfig) -> None:
        super().__init__()
        self.network = network
        self.spec = spec
        self.cfg = cfg
        self.phase: Phase | None = None

    def forward(self, batch: dict[str, Tensor], step: int) -> StepOutput:
        """Compute the total loss of one step.

        Args:
            batch: ``image`` float32 ``[b, C, S, S]`` normalised training crops, ``label``
                float ``[b, Cc]`` multi-hot image labels, ``img_box`` int ``[b, 4]``
                ``[h0, h1, w0, w1]`` real-image part of each crop, ``global_view`` float32
                ``[b, C, S, S]`` second global views, ``local_source`` float32 ``[b, C, S, S]``
                the colour-augmented copy the local crops are cut from (all on one device).
            step: 0-based global step; decides the warm-up gate (:func:`seg_terms_active`).

        Returns:
            :class:`StepOutput`. Randomness (local-crop centres) comes from the global torch
            RNG, which the training loop seeds per step.
        """
        # The batch's boxes were checked on the host when it was made (training.data).
        with checked_boxes():
            return self._forward(batch, step)

    def _forward(self, batch: dict[str, Tensor], step: int) -> StepOutput:
        cfg, spec, net = self.cfg, self.spec, self.network
        images, labels, img_box = batch["image"], batch["label"], batch["img_box"]
        b, _, height, width = images.shape

        with self._phase("forward"):
            both = net.features(torch.cat([images, batch["global_view"]]))
            feats = Features(final=both.final[:b], aux=both.aux[:b], cls=both.cls[:b])
        with self._phase("cams"):
            # The training crops' own CAMs come from the forward pass above; the multi-scale
            # pass adds the flips and the other scales.
            with torch.no_grad():
                plain = (net.classifier.cam(feats.final), net.aux_classifier.cam(feats.aux))
            cam, aux_cam = multi_scale_cams(net, images, cfg.cam_scales, plain=plain)
        with self._phase("crops"):
            if cfg.num_local_crops:
                roi = roi_mask(aux_cam, labels, cfg.high_thre, cfg.low_thre)
                local_views, flags = sample_local_crops(
                    batch["local_source"], roi, num_crops=cfg.num_local_crops,
                    crop_size=cfg.local_crop_size, neg_ratio=cfg.local_neg_ratio,
                )
            else:  # CTC between the two global views only
                local_views = images.new_zeros(0, *images.shape[1:])
                flags = images.new_ones(b, 2)
        with self._phase("forward"):
            logits, aux_logits = net.classify(feats)
            teacher_out, student_out = net.project_views(both.cls, local_views)
            seg_logits, fg_logits = net.decode(feats.final)

        terms: dict[str, Tensor] = {}
        with self._phase("cls"):
            terms["cls"] = cls_loss(logits, labels)
            terms["cls_aux"] = cls_loss(aux_logits, labels)
        with self._phase("ctc"):
            terms["ctc"] = ctc_loss(student_out, teacher_out, flags, temp=cfg.ctc_temp)
        with self._phase("ptc"):
            terms["ptc"] = ptc_loss(feats.final, self._affinity_mask(aux_cam, labels, img_box,
                                                                     feats.final.shape[-2:]))
        loss = (terms["cls"] + terms["cls_aux"] + cfg.w_ptc * terms["ptc"]
                + cfg.w_ctc * terms["ctc"])

        if seg_terms_active(step, cfg.seg_gate_iters):
            with self._phase("refine"):
                pseudo = pseudo_label_from_cams(images, cam, labels, spec, cfg, img_box=img_box)
            # NLL's 2-D backward (joint_loss) rejects channels-last logits ("grad_input must
            # be contiguous"), which a channels-last token map would give.
            size = (height, width)
            seg_up = F.interpolate(seg_logits, size=size, mode="bilinear",
                                   align_corners=False).contiguous()
            fg_up = F.interpolate(fg_logits, size=size, mode="bilinear",
                                  align_corners=False).contiguous()
            target = pseudo.long()
            with self._phase("seg"):
                terms["seg"] = seg_loss(seg_up, target, spec.ignore_index,
                                        has_background=spec.has_background)
            with self._phase("reg"):
                terms["reg"] = energy_loss(  # float32 logits also under bf16 autocast
                    images[:, :COLOUR_BANDS], seg_up.float(), pseudo, img_box,
                    mean=[m * 255 for m in spec.mean[:COLOUR_BANDS]],
                    std=[s * 255 for s in spec.std[:COLOUR_BANDS]],
                    weight=cfg.crf_weight, sigma_rgb=cfg.crf_sigma_rgb,
                    sigma_xy=cfg.crf_sigma_xy, scale_factor=cfg.crf_scale,
                    method=cfg.energy_filter,
                ).reshape(())
            with self._phase("joint"):
                terms["joint"] = joint_loss(fg_up, seg_up, target, spec.ignore_index)
            loss = (loss + cfg.w_seg * terms["seg"] + cfg.w_reg * terms["reg"]
                    + cfg.w_joint * terms["joint"])
        else:
            # The reference adds these terms with weight 0 during warm-up, so the decoders get
            # zero (not absent) gradients: AdamW decays their weights and counts their steps
            # from step 0. Adding their outputs times 0 does the same without the refinement,
            # and keeps every parameter in the graph, as DDP requires.
            loss = loss + 0.0 * (seg_logits.sum() + fg_logits.sum())

        return StepOutput(loss=loss, terms={k: v.detach() for k, v in terms.items()})

    def _affinity_mask(self, aux_cam: Tensor, labels: Tensor, img_box: Tensor,
                       size: torch.Size) -> Tensor:
        """PTC targets ``[b, n, n]`` from the aux-CAM pseudo label at feature resolution."""
        cfg, spec = self.cfg, self.spec
        small = F.interpolate(aux_cam, size=size, mode="bilinear", align_corners=False)
        box = scale_box(img_box, tuple(aux_cam.shape[-2:]), tuple(size))
        _, label = cam_to_label(
            small, labels, bkg_thre=cfg.bkg_thre, img_box=box, ignore_mid=True,
            high_thre=cfg.high_thre, low_thre=cfg.low_thre, ignore_index=spec.ignore_index,
            has_background=spec.has_background,
        )
        return label_to_aff_mask(label, spec.ignore_index)

    def _phase(self, name: str) -> AbstractContextManager:
        return self.phase(name) if self.phase is not None else contextlib.nullcontext()
