"""Evaluating a CTFA model on a split of DATA_DIR: the one place where chips meet the model.

* :func:`predict_chips` runs the model over the chips of a split and yields one
  :class:`ChipPrediction` per chip. ``ctfa evaluate``, ``ctfa pseudolabel``, the overlays and
  the validation of the training loop all go through it, so there is one inference path.
* :func:`evaluate_split` accumulates one :class:`~ctfa_cli.evaluation.metrics.ConfusionMatrix`
  per target over the whole split (summed over ranks under ``torchrun``).
* :func:`evaluate_checkpoint` is ``ctfa evaluate``: a bundle and a DATA_DIR in, metrics, a
  confusion-matrix PNG and overlay PNGs out.

Targets (what is compared with the ground-truth masks):

* ``seg``: arg-max of the segmentation branch (``--tta``: softmax averaged over scales
  0.75, 1.0, 1.25 and their horizontal flips, exactly as ``ctfa predict --tta``).
* ``cam`` / ``aux_cam``: multi-scale + flip CAMs (``cfg.cam_scales``) of the final / auxiliary
  classifier turned into labels with ``cfg.bkg_thre``. As in the official CAM evaluation, the
  CAMs are restricted to the chip's **ground-truth image-level labels**, so these numbers
  measure localisation given the tags, not classification.
* ``seg_crf``: the segmentation probabilities (as ``seg`` computes them) post-processed by the
  fully connected CRF of the official evaluation (:func:`kernels.dense_crf.dense_crf`, lattice,
  the official parameters unless others are given), with the chip's first three bands as its
  colours: the paper's tables report this figure.
* ``pseudo``: the refined pseudo label of training (CAM of the final classifier restricted to
  the image-level labels → high/low background thresholds → PAR at half resolution), on the
  whole chip. Pixels it leaves undecided (``ignore_index``) count as misses of their true class
  and their number is reported as ``ignored_predictions``.

Chips are evaluated at their own size (``input_size=None``), as the official test scripts do;
the training loop passes ``input_size=cfg.crop_size`` because the official validation resizes
every image to the training crop size and the predictions back to the mask size.

Protocols of ``seg`` and ``seg_crf``: ``ctfa`` (default) is the softmax of one pass (``--tta``:
averaged over :data:`~ctfa_cli.inference.predict.TTA_SCALES` and flips, as ``ctfa predict``);
``official`` is ``tools/infer_seg_*.py`` of the official code: at each of
:data:`OFFICIAL_SCALES` the chip and its horizontal flip go through the network, their logits
are resized once, straight to the chip size, and added (the flip flipped back); the
element-wise maximum over the scales is the logit map whose arg-max is ``seg`` (their
``seg_pred``) and whose softmax feeds the CRF (``seg_crf``). Two things differ from the
scripts, both documented fixes: ``seg_crf`` is scored against the masks (the scripts score the
test split's CRF labels against the image's first channel, ``label = image[:, :, 0]``), and a
scaled size that is not a multiple of the patch size is rounded to one (the scripts' 512-px
chips never need it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from ctfa_cli.config import DatasetSpec, TrainConfig
from ctfa_cli.datasets.datadir import DataDir, write_json
from ctfa_cli.errors import CtfaError, CtfaUsageError
from ctfa_cli.evaluation import report
from ctfa_cli.evaluation.metrics import ConfusionMatrix
from ctfa_cli.inference.predict import BundlePredictor, resolve_device
from ctfa_cli.io import claim_folder
from ctfa_cli.model.bundle import Bundle, load_bundle
from ctfa_cli.objectives.cam import cam_to_label, multi_scale_cams
from ctfa_cli.objectives.refine import pseudo_label_from_cams
from ctfa_cli.precision import autocast, check_amp
from ctfa_cli.progress import progress_bar
from ctfa_cli.training.data import normalize
from kernels.dense_crf import OFFICIAL_CRF, CRFParams, dense_crf

log = logging.getLogger("ctfa.evaluation.evaluate")

TARGETS = ("seg", "seg_crf", "cam", "aux_cam", "pseudo")
SEG_TARGETS = ("seg", "seg_crf")
PROTOCOLS = ("ctfa", "official")
#: Scales of the official segmentation evaluation (``--scales`` of ``infer_seg_*.py``).
OFFICIAL_SCALES = (1.0, 1.5, 1.25)
CAM_TARGETS = ("cam", "aux_cam", "pseudo")
# The folder ``ctfa evaluate`` writes; overlays show chips spread evenly over the split.
METRICS_JSON = "metrics.json"
CONFUSION_PNG = "confusion.png"
CONFUSION_CRF_PNG = "confusion_crf.png"
OVERLAYS_DIR = "overlays"
NUM_OVERLAYS = 6


@dataclass
class ChipPrediction:
    """The model's outputs on one chip, with the chip itself.

    Attributes:
        row: the chip's row of ``chips.gpkg`` without geometry (chip_id, scene_id, split,
            image, mask … as plain Python values).
        image: uint8 ``[bands, H, W]`` as stored in DATA_DIR.
        mask: uint8 ``[H, W]`` ground truth (``ignore_index`` ignored), or None without mask.
        labels: float32 ``[num_cam_classes]`` multi-hot image-level labels of the chip.
        predictions: target name → uint8 ``[H, W]`` class indices (``ignore_index`` where a
            CAM target or the pseudo label leaves a pixel undecided).
        cams: ``"cam"`` / ``"aux_cam"`` → float32 ``[num_cam_classes, H, W]`` in ``[0, 1)``,
            multiplied by ``labels`` (absent classes are 0); filled only with ``keep_cams``.
    """

    row: dict[str, Any]
    image: np.ndarray
    mask: np.ndarray | None
    labels: np.ndarray
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    cams: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def chip_id(self) -> str:
        """The chip's name (``<scene_id>_r<row>_c<col>``)."""
        return str(self.row["chip_id"])


def check_targets(targets: Sequence[str]) -> tuple[str, ...]:
    """Validate target names and drop repeats (order kept).

    Raises:
        CtfaUsageError: no target, or an unknown one.
    """
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise CtfaUsageError(f"unknown target {(unknown or [''])[0]!r}; choose one of "
                             f"{', '.join(TARGETS)}")
    return tuple(dict.fromkeys(targets))


def check_model_fits(spec: DatasetSpec, data: DataDir, model_path: Path | None = None) -> None:
    """Refuse a model whose classes or bands cannot be scored on ``data``.

    A different class count or band count is an error; the same counts under other class or
    band names are most likely another dataset, which is logged as a warning.

    Args:
        spec: the dataset spec the model was trained on (from its bundle).
        data: the DATA_DIR to run it on.
        model_path: the checkpoint file, named in the message when given.

    Raises:
        CtfaError: class count or band count differ; the message names both counts.
    """
    what = f"{model_path}: checkpoint" if model_path is not None else "the model"
    if spec.num_classes != data.spec.num_classes:
        raise CtfaError(f"{what} has {spec.num_classes} classes ({spec.name}) but DATA_DIR "
                        f"{data.root} has {data.spec.num_classes} ({data.spec.name}); use a "
                        "checkpoint trained on this dataset")
    if spec.in_chans != data.spec.in_chans:
        raise CtfaError(f"{what} reads {spec.in_chans} bands {spec.bands} but DATA_DIR "
                        f"{data.root} has {data.spec.in_chans} {data.spec.bands}; use a "
                        "checkpoint trained on this dataset")
    if spec.classes != data.spec.classes or spec.bands != data.spec.bands:
        log.warning("the model was trained on classes %s / bands %s, DATA_DIR %s has %s / %s; "
                    "scoring class i against class i", spec.classes, spec.bands, data.root,
                    data.spec.classes, data.spec.bands)


def predict_chips(
    model: torch.nn.Module,
    spec: DatasetSpec,
    cfg: TrainConfig,
    data: DataDir,
    split: str,
    *,
    targets: Sequence[str] = ("seg",),
    tta: bool = False,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    input_size: int | None = None,
    keep_cams: bool = False,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
    amp: str = "none",
    protocol: str = "ctfa",
    crf: CRFParams = OFFICIAL_CRF,
) -> Iterator[ChipPrediction]:
    """Run the model over the chips of a split, one :class:`ChipPrediction` per chip.

    Chips of the same size are batched together (up to ``batch_size``), in index order. The
    model is put in eval mode and moved to ``device`` while the generator runs; its former
    mode is restored when the generator finishes or is closed.

    Args:
        model: a :class:`~ctfa_cli.model.network.CTFANetwork`.
        spec: the spec the model was trained on (normalisation, classes, background policy).
        cfg: its training config (``cam_scales``, ``bkg_thre``, ``high_thre``, ``low_thre``,
            ``par_dilations``, ``par_iters``).
        data: the DATA_DIR.
        split: split to run on.
        targets: any of :data:`TARGETS` (see the module docstring).
        tta: multi-scale + flip test-time augmentation of ``seg`` (CAMs are always
            multi-scale + flip).
        device: where the model runs.
        batch_size: chips per forward pass.
        input_size: resize every chip to ``input_size × input_size`` (bilinear) for the model
            and the predictions back to the chip size; None: the chip's own size.
        keep_cams: also return the (label-restricted) CAMs of each chip.
        rank: this process' share is every ``world_size``-th chip starting at ``rank``.
        world_size: number of processes sharing the split.
        progress: show a progress bar on stderr (only when it is a terminal).
        amp: run the network under bfloat16 autocast (``"bf16"``, see
            :func:`ctfa_cli.precision.autocast`) or in float32 (``"none"``); CAMs and
            probabilities are float32 either way.
        protocol: how ``seg``/``seg_crf`` are computed: ``ctfa`` or ``official`` (see the
            module docstring).
        crf: the CRF of ``seg_crf``.

    Yields:
        :class:`ChipPrediction`, in split order (of this rank's share).

    Raises:
        CtfaError: the split is empty, a chip is unreadable, or the model does not fit
            DATA_DIR (see :func:`check_model_fits`).
        CtfaUsageError: an unknown target, ``amp`` or protocol, or ``tta`` with the official
            protocol (it has its own scales).
    """
    targets = check_targets(targets)
    check_amp(amp)
    if protocol not in PROTOCOLS:
        raise CtfaUsageError(f"--protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    if protocol == "official" and tta:
        raise CtfaUsageError("--tta does not apply to --protocol official, which has its own "
                             f"scales ({', '.join(map(str, OFFICIAL_SCALES))}, with flips)")
    check_model_fits(spec, data)
    rows = data.split(split)
    rows = rows.drop(columns=rows.geometry.name).to_dict("records")[rank::world_size]
    device = torch.device(device)
    was_training = model.training
    seg = None
    if any(t in SEG_TARGETS for t in targets):
        if protocol == "official":
            def seg(images: Tensor, size) -> Tensor:
                return official_seg_logits(model, images, size, amp=amp).softmax(1)
        else:
            one_pass = BundlePredictor(Bundle(model=model, spec=spec, cfg=cfg), device, tta=tta,
                                       amp=amp)

            def seg(images: Tensor, size) -> Tensor:
                return _resize(one_pass(images), size)
    model.to(device).eval()
    try:
        with progress_bar(f"{split}: {', '.join(targets)}", len(rows), enabled=progress,
                          transient=True) as advance:
            for batch in _same_size_batches(rows, batch_size):
                chips = [_read(data, row) for row in batch]
                yield from _predict_batch(model, spec, cfg, chips, targets, seg, device,
                                          input_size, keep_cams, amp, crf)
                advance(len(batch))
    finally:
        model.train(was_training)


def evaluate_split(
    model: torch.nn.Module,
    spec: DatasetSpec,
    cfg: TrainConfig,
    data: DataDir,
    split: str,
    *,
    targets: Sequence[str] = ("seg",),
    tta: bool = False,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    progress: bool = True,
    input_size: int | None = None,
    on_chip: Callable[[ChipPrediction], None] | None = None,
    amp: str = "none",
    protocol: str = "ctfa",
    crf: CRFParams = OFFICIAL_CRF,
) -> dict[str, dict]:
    """Metrics of each target on a split, from one confusion matrix per target.

    Under an initialised ``torch.distributed`` group (``torchrun``) each rank evaluates every
    ``world_size``-th chip and the matrices are summed over ranks, so **every rank must call
    this**; all ranks return the same metrics.

    Args:
        model, spec, cfg, data, split, targets, tta, device, batch_size, input_size, amp,
            protocol, crf: see :func:`predict_chips`.
        progress: show a progress bar on stderr (rank 0, terminal only).
        on_chip: called with every :class:`ChipPrediction` of this rank (e.g. to keep a few
            for overlays) after it was scored.

    Returns:
        target → the dict of :meth:`ConfusionMatrix.compute` (``miou``, ``mf1``, ``oa``,
        ``kappa``, per-class ``iou``/``f1``/``precision``/``recall``, ``present``, ``pixels``,
        ``ignored_predictions``) plus ``confusion`` (``[C][C]`` pixel counts, rows ground
        truth, columns prediction) and ``undecided`` (``[C]`` pixels of each true class the
        prediction left undecided).

    Raises:
        CtfaError: a chip of the split has no mask, or see :func:`predict_chips`.
        CtfaUsageError: an unknown target or ``amp``.
    """
    targets = check_targets(targets)
    rows = data.split(split)
    unmasked = rows[rows["mask"].isna()]
    if len(unmasked):
        raise CtfaError(f"{data.root}: {len(unmasked)} chip(s) of split {split!r} have no mask "
                        f"(e.g. {unmasked['chip_id'].iloc[0]}); evaluation needs ground truth: "
                        "choose a split with masks")
    rank, world_size = _distributed_share()
    matrices = {t: ConfusionMatrix(spec.num_classes, spec.ignore_index) for t in targets}
    chips = predict_chips(model, spec, cfg, data, split, targets=targets, tta=tta,
                          device=device, batch_size=batch_size, input_size=input_size,
                          rank=rank, world_size=world_size, progress=progress and rank == 0,
                          amp=amp, protocol=protocol, crf=crf)
    for chip in chips:
        mask = torch.from_numpy(chip.mask)
        for target in targets:
            matrices[target].update(torch.from_numpy(chip.predictions[target]), mask)
        if on_chip is not None:
            on_chip(chip)
    results = {}
    for target, matrix in matrices.items():
        if world_size > 1:
            matrix.all_reduce()
        results[target] = {**matrix.compute(), "confusion": matrix.matrix.tolist(),
                           "undecided": matrix.undecided.tolist()}
    return results


@dataclass
class EvaluationReport:
    """Outcome of :func:`evaluate_checkpoint`.

    Attributes:
        model: the checkpoint.
        data: the DATA_DIR.
        split: the split evaluated.
        target: the target evaluated.
        tta: whether test-time augmentation was used.
        amp: the precision the network ran in (``none`` or ``bf16``).
        protocol: ``ctfa`` or ``official`` (see the module docstring).
        crf_metrics: the ``seg_crf`` metrics beside ``metrics`` (with ``crf``), else None.
        spec: the dataset spec (class names, palette).
        metrics: the target's metrics (see :func:`evaluate_split`).
        out: the folder holding ``metrics.json``, ``confusion.png`` and ``overlays/``.
        files: every file written, ``metrics.json`` first.
    """

    model: Path
    data: Path
    split: str
    target: str
    tta: bool
    amp: str
    spec: DatasetSpec
    metrics: dict
    out: Path
    files: list[Path]
    protocol: str = "ctfa"
    crf_metrics: dict | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready summary (NaN written as null)."""
        return report.jsonable({
            "model": str(self.model), "data": str(self.data), "split": self.split,
            "target": self.target, "tta": self.tta, "amp": self.amp,
            "protocol": self.protocol, "classes": list(self.spec.classes),
            "metrics": self.metrics, "metrics_crf": self.crf_metrics, "out": str(self.out),
            "files": [str(p) for p in self.files],
        })


def default_eval_dir(model_path: Path, split: str, target: str, tta: bool,
                     protocol: str = "ctfa", crf: bool = False) -> Path:
    """``RUN_DIR/eval_<split>_<target>[_tta][_official][_crf]``, RUN_DIR being the folder that
    holds the checkpoint's ``checkpoints/`` folder (or the checkpoint's own folder elsewhere)."""
    model_path = Path(model_path)
    parent = model_path.parent
    run_dir = parent.parent if parent.name == "checkpoints" else parent
    suffix = ("_tta" if tta else "") + ("_official" if protocol == "official" else "") + \
        ("_crf" if crf else "")
    return run_dir / f"eval_{split}_{target}{suffix}"


def evaluate_checkpoint(
    model_path: Path,
    data_dir: Path,
    *,
    split: str = "test",
    target: str = "seg",
    tta: bool = False,
    out: Path | None = None,
    overwrite: bool = False,
    device: str = "auto",
    batch_size: int = 8,
    num_overlays: int = NUM_OVERLAYS,
    progress: bool = True,
    amp: str = "none",
    crf: CRFParams | None = None,
    protocol: str = "ctfa",
) -> EvaluationReport:
    """``ctfa evaluate``: score a checkpoint on a split and write the report files.

    Writes into ``out`` (default :func:`default_eval_dir`): ``metrics.json`` (the
    :meth:`EvaluationReport.to_json` summary), ``confusion.png`` (row-normalised confusion
    matrix) and ``overlays/<chip_id>.png`` (image | ground truth | prediction) for
    ``num_overlays`` chips spread evenly over the split. Every file is written under a
    temporary name, then renamed. With ``crf`` (``seg`` only) the ``seg_crf`` target is scored
    beside it (``crf_metrics``, ``confusion_crf.png``, and its prediction in the overlays'
    place of the plain one); ``protocol`` picks how both are computed.

    Raises:
        CtfaError: DATA_DIR or checkpoint missing or invalid, a class-count mismatch, a split
            without masks, or ``out`` not empty without ``overwrite``.
        CtfaUsageError: unknown target, device, ``amp`` or protocol, or ``tta``, ``crf`` or the
            official protocol with another target than ``seg``.
    """
    (target,) = check_targets([target])
    check_amp(amp)
    if target != "seg":
        for given, flag in ((tta, "--tta"), (crf is not None, "--crf"),
                            (protocol != "ctfa", "--protocol")):
            if given:
                raise CtfaUsageError(f"{flag} applies to --target seg only; the {target} target "
                                     "always uses multi-scale + flip CAMs (cam_scales of the "
                                     "checkpoint)")
    data = DataDir.open(data_dir)
    resolved = resolve_device(device)
    bundle = load_bundle(model_path, resolved)
    check_model_fits(bundle.spec, data, model_path)
    out = Path(out) if out is not None else default_eval_dir(model_path, split, target, tta,
                                                             protocol, crf is not None)
    claim_folder(out, overwrite, owned=(METRICS_JSON, CONFUSION_PNG, CONFUSION_CRF_PNG,
                                        OVERLAYS_DIR))
    total = len(data.split(split))
    chosen = set(np.linspace(0, total - 1, min(num_overlays, total)).round().astype(int))
    kept: list[ChipPrediction] = []
    seen = 0

    def keep_some(chip: ChipPrediction) -> None:
        nonlocal seen
        if seen in chosen:
            kept.append(chip)
        seen += 1

    log.info("evaluating %s on %s split %s: target %s%s on %s%s", model_path, data.root, split,
             target, " with TTA" if tta else "", resolved, " in bfloat16" if amp == "bf16" else "")
    targets = (target, "seg_crf") if crf is not None else (target,)
    scores = evaluate_split(bundle.model, bundle.spec, bundle.cfg, data, split,
                            targets=targets, tta=tta, device=resolved, batch_size=batch_size,
                            progress=progress, on_chip=keep_some, amp=amp, protocol=protocol,
                            crf=crf or OFFICIAL_CRF)
    files = [out / METRICS_JSON, out / CONFUSION_PNG]
    result = EvaluationReport(model=Path(model_path), data=data.root, split=split, target=target,
                              tta=tta, amp=amp, spec=bundle.spec, metrics=scores[target],
                              out=out, files=files, protocol=protocol,
                              crf_metrics=scores.get("seg_crf"))
    report.write_confusion_png(files[1], scores[target], bundle.spec.classes)
    if crf is not None:
        files.append(out / CONFUSION_CRF_PNG)
        report.write_confusion_png(files[-1], scores["seg_crf"], bundle.spec.classes)
    shown = targets[-1]  # the CRF label when there is one: the figure the paper reports
    for chip in kept:
        path = out / OVERLAYS_DIR / f"{chip.chip_id}.png"
        report.write_overlay_png(path, chip.image, chip.mask, chip.predictions[shown],
                                 bundle.spec, prediction_title=shown)
        files.append(path)
    write_json(files[0], result.to_json())
    log.info("wrote %s", out)
    return result


# --- internals ----------------------------------------------------------------------------------


def _distributed_share() -> tuple[int, int]:
    """``(rank, world_size)`` of an initialised process group, else ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _same_size_batches(rows: list[dict], batch_size: int) -> Iterator[list[dict]]:
    """Consecutive rows of equal ``(height, width)``, at most ``batch_size`` at a time."""
    batch: list[dict] = []
    for row in rows:
        if batch and (len(batch) == batch_size or _size(row) != _size(batch[0])):
            yield batch
            batch = []
        batch.append(row)
    if batch:
        yield batch


def _size(row: dict) -> tuple[int, int]:
    return int(row["height"]), int(row["width"])


def _read(data: DataDir, row: dict) -> ChipPrediction:
    image, mask = data.read_chip(row)
    return ChipPrediction(row=row, image=image, mask=mask, labels=data.multi_hot(row))


@torch.no_grad()
def official_seg_logits(model, images: Tensor, size: Sequence[int], *,
                        amp: str = "none") -> Tensor:
    """The official evaluation's segmentation logits (see the module docstring).

    Args:
        model: a :class:`~ctfa_cli.model.network.CTFANetwork` in eval mode.
        images: ``[B, in_chans, h, w]`` normalised chips.
        size: ``(H, W)`` of the masks the logits are resized to.
        amp: precision of the network (see :func:`ctfa_cli.precision.autocast`).

    Returns:
        ``[B, C, H, W]`` float32: per scale of :data:`OFFICIAL_SCALES` the logits of the
        scaled chip plus those of its flip (flipped back), the maximum over the scales.
    """
    patch = model.encoder.patch_size[0]
    height, width = images.shape[-2:]
    best: Tensor | None = None
    for scale in OFFICIAL_SCALES:
        scaled = [max(1, round(int(n * scale) / patch)) * patch for n in (height, width)]
        x = F.interpolate(images, size=scaled, mode="bilinear", align_corners=False)
        with autocast(amp, images.device):
            both = model.segment(torch.cat([x, x.flip(-1)]), size=tuple(size)).float()
        logits = both[:len(images)] + both[len(images):].flip(-1)
        best = logits if best is None else torch.maximum(best, logits)
    return best


def crf_colours(chips: list[ChipPrediction]) -> Tensor:
    """``[B, 3, H, W]`` float32 colours of the CRF's appearance kernel: each chip's first three
    bands as stored (uint8, as the official scripts read the chip PNGs; the first band repeated
    for chips of fewer bands)."""
    stacked = []
    for chip in chips:
        image = torch.from_numpy(chip.image[:3]).float()
        stacked.append(image[:1].expand(3, -1, -1) if len(image) < 3 else image)
    return torch.stack(stacked)


@torch.no_grad()
def _predict_batch(model, spec: DatasetSpec, cfg: TrainConfig, chips: list[ChipPrediction],
                   targets: tuple[str, ...], seg, device: torch.device, input_size: int | None,
                   keep_cams: bool, amp: str, crf: CRFParams) -> list[ChipPrediction]:
    """Fill ``predictions`` (and ``cams``) of a batch of same-size chips."""
    size = chips[0].image.shape[-2:]
    images = torch.stack([normalize(torch.from_numpy(c.image), spec) for c in chips]).to(device)
    if input_size is not None:
        images = F.interpolate(images, size=(input_size, input_size), mode="bilinear",
                               align_corners=False)
    outputs: dict[str, Tensor] = {}
    if seg is not None:
        probs = seg(images, size)  # [B, C, H, W] at the chip size
        outputs["seg"] = probs.argmax(dim=1)
        if "seg_crf" in targets:
            outputs["seg_crf"] = dense_crf(probs, crf_colours(chips).to(device), crf).argmax(1)
    if keep_cams or any(t in CAM_TARGETS for t in targets):
        labels = torch.from_numpy(np.stack([c.labels for c in chips])).to(device)
        with autocast(amp, device):
            cams = dict(zip(("cam", "aux_cam"), multi_scale_cams(model, images, cfg.cam_scales),
                            strict=True))
        for name in ("cam", "aux_cam"):
            if name in targets:
                outputs[name] = _cam_labels(_resize(cams[name], size), labels, spec, cfg)
        if "pseudo" in targets:
            pseudo = pseudo_label_from_cams(images, cams["cam"], labels, spec, cfg)
            outputs["pseudo"] = _resize(pseudo[:, None], size, mode="nearest")[:, 0]
        if keep_cams:
            valid = {n: _resize(c, size) * labels[:, :, None, None] for n, c in cams.items()}
    for index, chip in enumerate(chips):
        chip.predictions = {t: outputs[t][index].to("cpu", torch.uint8).numpy() for t in targets}
        if keep_cams:
            chip.cams = {n: c[index].cpu().numpy() for n, c in valid.items()}
    return chips


def _cam_labels(cam: Tensor, labels: Tensor, spec: DatasetSpec, cfg: TrainConfig) -> Tensor:
    """CAM → label with the background threshold, as the official CAM evaluation.

    Args:
        cam: float ``[B, Cc, H, W]`` CAMs in ``[0, 1]``.
        labels: ``[B, Cc]`` multi-hot image-level labels (the CAMs are restricted to them).
        spec: background policy and ignore index.
        cfg: ``bkg_thre``.

    Returns:
        int64 ``[B, H, W]`` class indices (``ignore_index`` where undecided).
    """
    return cam_to_label(cam, labels, bkg_thre=cfg.bkg_thre, ignore_index=spec.ignore_index,
                        has_background=spec.has_background)


def _resize(x: Tensor, size: Sequence[int], mode: str = "bilinear") -> Tensor:
    """``x [B, K, h, w]`` at ``size`` (a no-op when it is already there)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=tuple(size), mode="nearest")
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)
