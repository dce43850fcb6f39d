"""Whole-step parity: two official CTFA training steps replayed with ctfa's own code.

The ``train_step__*.npz`` cases (``../shared/parity/FORMAT.md`` section 14) hold two consecutive
steps of the official ``dist_train_*_seg_neg_fp.py`` loop: initial weights under the official
parameter names, two batches, the local crops the official ``crop_from_roi_neg`` drew, and
every loss term, step 1's intermediates, gradient norms, learning rates and parameter checksums.

:func:`check_train_step_case` builds a :class:`~ctfa_cli.model.network.CTFANetwork` with the
case's small ViT through timm, loads the weights, and runs ctfa's :class:`CTFAStep`
and the optimiser of :func:`build_optimizer` for two steps through the loop's own
:func:`ctfa_cli.training.loop.train_step` (zero_grad → step forward → backward → clip →
schedule step → optimiser step → EMA). Only two things are replaced, neither changing any
computation:

* ``sample_local_crops`` returns the stored crops and flags (the official draw is a
  ``torch.randperm`` of the global generator that no other implementation reproduces). The
  replacement first checks that it is handed the **separate local-crop source** ``crops[2]``
  and that each stored crop is that source cut at the stored corner;
* spies record the intermediates (CAMs, ROI mask, pseudo labels, logits, decoder outputs,
  projections) as they pass, and hand back the real values.

Deliberate differences from the reference, and how the comparison treats them (docs/testing.md):

* **EMA timing.** The reference updates the teacher at the start of each forward (so the first
  update averages two equal heads); ctfa updates it right after each optimiser step. The
  teacher used in every forward is the same (step 1: the initial head, equal to the reference's
  up to one ulp; step 2: ``0.9·t0 + 0.1·s1``), but a checksum taken *after* step K holds K
  updates in both, ctfa's using students 1..K and the reference's students 0..K-1. So ctfa's
  teacher after step 1 is compared with the reference's after step 2, and ctfa's teacher
  after step 2 by its sum, which is linear: ``0.9·Σt_ref,2 + 0.1·Σs_ref,2``.
* **PTC box units.** ctfa scales the crop box to the feature map; the reference slices the
  feature-resolution label with the box in crop pixels. Where the two give different masks
  (a box that does not start at 0 or end at the crop edge), the case is replayed with the
  reference's units (``scale_box`` returns the box unchanged, which is exactly the reference's
  clamped slicing); the fix itself is tested in tests/objectives/test_cam.py.
* **Empty-group segmentation loss.** Where the reference's ``seg`` is NaN (no background or no
  foreground pixel), ctfa's must be finite and the total is compared with the reference's terms
  and ctfa's ``seg``; the gradients are equal (the empty term has no gradient in both).

Tolerances (measured margins in docs/testing.md):

* loss terms: ``rtol 1e-4``, plus an ``atol`` of 2 float32 ulps of the total in the term's
  units (``2·eps·Σ|w·term| / w``); the total: ctfa's own weighted terms to 8 ulps (term by
  term: in the public case the smallest weighted term, ``w_reg·reg``, is 160× that);
* logits, CAMs, projections, decoder outputs: ``rtol 1e-4``, ``atol 1e-5·max|ref|``
  (float32 with other summation orders: timm's fused attention, one encoder pass over the
  training crops and the global views together, the fused AdamW kernel; the reference's
  values themselves differ from a float64 evaluation by about 1e-6);
* gradients (pre-clip): ``rtol 1e-3``, ``atol 1e-4·max|ref|`` per tensor, norms ``rtol 1e-3``:
  the loss includes the PAR-refined pseudo label and the ROI-dependent flags, which are
  discrete; a handful of label pixels can flip at a near-tie;
* ROI mask, pseudo labels: at most 0.1 % of pixels may differ (CAM values a few ulps apart at
  a threshold or an arg-max tie); the aux pseudo label exactly;
* learning rates ``rtol 1e-9`` (Python floats);
* parameters after each step: the 7 stored tensors elementwise with ``atol = 2e-3·lr``
  (fresh Adam moments make step 1's update ``±lr`` per element, so only the sign of each
  gradient element matters; an element whose gradient is ~0 may go either way, which is
  allowed on at most 0.1 % of its elements), checksums ``rtol 1e-4`` (sums) and ``1e-5``
  (sums of squares) with ``atol`` of 2·lr per 0.1 % of the tensor's elements.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from unittest import mock

import numpy as np
import timm
import torch

# Tolerances (see the module docstring).
VALUE_RTOL, VALUE_ATOL = 1e-4, 1e-5
GRAD_RTOL, GRAD_ATOL = 1e-3, 1e-4
MAX_FLIPPED = 1e-3
LR_RTOL = 1e-9
F32_EPS = float(np.finfo(np.float32).eps)

TIMM_BASE = "vit_tiny_patch16_224"  # timm's ViT class with qkv bias and LayerNorm eps 1e-6


class StepCase:
    """One ``train_step`` file: arrays by their full key, and the parsed ``meta``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with np.load(path) as z:
            self.meta = json.loads(str(z["meta"]))
            self.arrays = {k: z[k] for k in z.files if k != "meta"}

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def tensor(self, key: str) -> torch.Tensor:
        return torch.from_numpy(np.array(self.arrays[key]))


# --- assertions ---------------------------------------------------------------------------------


def close(actual, expected: np.ndarray, name: str, *, rtol: float = VALUE_RTOL,
          atol_scale: float = VALUE_ATOL, atol: float = 0.0) -> None:
    """``actual ≈ expected`` with ``atol = atol_scale·max|expected| + atol``."""
    if isinstance(actual, torch.Tensor):
        actual = actual.detach().double().numpy()
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    atol = atol_scale * scale + atol
    if MARGINS is not None:
        err = np.abs(actual - expected)
        MARGINS.append((name, float(np.max(err / (rtol * np.abs(expected) + atol + 1e-300)))))
        return
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=name)


#: When a list, :func:`close` records ``(name, max error / tolerance)`` instead of asserting
#: (``python -m tests.training.step_parity CASE`` prints them: the margins in docs/testing.md).
MARGINS: list[tuple[str, float]] | None = None


def mostly_equal(actual: torch.Tensor, expected: np.ndarray, name: str,
                 allowed: int | None = None) -> None:
    """Integer maps equal except on at most :data:`MAX_FLIPPED` of the pixels (``allowed``)."""
    actual = actual.detach().numpy()
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    differ = int((actual.astype(np.int64) != expected.astype(np.int64)).sum())
    allowed = int(MAX_FLIPPED * expected.size) if allowed is None else allowed
    if MARGINS is not None:
        MARGINS.append((f"{name} (pixels differing, {allowed} allowed)", float(differ)))
        return
    assert differ <= allowed, f"{name}: {differ} of {expected.size} pixels differ ({allowed})"


# --- model and configuration from the case --------------------------------------------------


def official_to_ctfa(name: str) -> str | None:
    """ctfa's parameter name for an official one (None: the unused ImageNet head)."""
    if name.startswith("encoder.head."):
        return None
    if name.startswith("encoder."):
        return "encoder.vit." + name.removeprefix("encoder.")
    # The reference's nn.utils.weight_norm vs torch.nn.utils.parametrizations.weight_norm.
    name = name.replace("last_layer.weight_g", "last_layer.parametrizations.weight.original0")
    return name.replace("last_layer.weight_v", "last_layer.parametrizations.weight.original1")


def case_spec(case: StepCase):
    from ctfa_cli.config import DatasetSpec

    m = case.meta
    n = m["num_classes"]
    norm = m["data"]["normalisation"]
    return DatasetSpec(name="parity", classes=[f"class{i}" for i in range(n)],
                       palette=[[i, i, i] for i in range(n)], has_background=True,
                       mean=norm["mean"], std=norm["std"],
                       ignore_index=m["script_cfg"]["ignore_index"])


def case_config(case: StepCase):
    """The script's hyper-parameters (``meta.script_cfg``) as a ctfa TrainConfig."""
    from ctfa_cli.config import TrainConfig

    m, s = case.meta, case.meta["script_cfg"]
    mult = s["lr_mult"]
    assert mult[0] == mult[1] and mult[2] == mult[3], mult
    energy = s["energy"]
    return TrainConfig(
        backbone=TIMM_BASE, pretrained=False, aux_layer=s["aux_layer"],
        ema_momentum=s["momentum"], crop_size=m["crop_size"], batch_size=m["B"],
        max_iters=s["max_iters"], warmup_iters=s["warmup_iters"], warmup_ratio=s["warmup_lr"],
        lr=s["lr"], head_lr_mult=mult[2] / mult[0], weight_decay=s["wt_decay"],
        betas=tuple(s["betas"]), power=s["power"], grad_clip=s["clip_max_norm"],
        cam_scales=s["cam_scales"], bkg_thre=s["bkg_thre"], high_thre=s["high_thre"],
        low_thre=s["low_thre"], par_dilations=s["par_dilations"], par_iters=s["par_num_iter"],
        num_local_crops=m["n_local_crops"], local_crop_size=m["local_crop_size"],
        ctc_temp=s["temp"], w_ptc=s["w_ptc"], w_ctc=s["w_ctc"], w_seg=s["w_seg"],
        w_reg=s["w_reg"], w_joint=s["w_joi"], seg_gate_iters=s["warmup_gate"],
        crf_weight=energy["weight"], crf_sigma_rgb=energy["sigma_rgb"],
        crf_sigma_xy=energy["sigma_xy"], crf_scale=energy["scale_factor"],
        num_workers=0, device="cpu",
    )


def build_network(case: StepCase):
    """A CTFANetwork with the case's ViT (built by timm) and the stored initial weights."""
    from ctfa_cli.model.network import CTFANetwork

    m = case.meta
    kw = m["backbone"]["kwargs"]
    dims = {"patch_size": kw["patch_size"], "embed_dim": kw["embed_dim"], "depth": kw["depth"],
            "num_heads": kw["num_heads"], "mlp_ratio": kw["mlp_ratio"],
            "img_size": kw["img_size"], "qkv_bias": kw["qkv_bias"]}
    create = timm.create_model
    # ctfa's wrapper builds its ViT by name; the case's dimensions go in as timm kwargs.
    with mock.patch.object(timm, "create_model", partial(_create_with, create, dims)):
        net = CTFANetwork(m["C_fg"], m["num_classes"], backbone=TIMM_BASE, pretrained=False,
                          aux_layer=m["network_kwargs"]["aux_layer"],
                          ema_momentum=m["network_kwargs"]["init_momentum"])
    params = dict(net.named_parameters())
    loaded = set()
    with torch.no_grad():
        for name in m["param_names"]:
            ours = official_to_ctfa(name)
            if ours is None:
                continue
            source = name.replace("proj_head_t.", "proj_head.")  # the teacher is not stored
            value = case.tensor(f"in_weights__{source}")
            assert params[ours].shape == value.shape, f"{name}: {params[ours].shape}"
            params[ours].copy_(value)
            assert params[ours].requires_grad == m["param_requires_grad"][name], name
            loaded.add(ours)
    assert loaded == set(params), f"not loaded: {sorted(set(params) - loaded)}"
    return net


def _create_with(create, dims, name, **kwargs):
    return create(name, **{**kwargs, **dims})


# --- the replay ---------------------------------------------------------------------------------


class _Record(dict):
    """Intermediates of the current step, filled by the spies."""


def _spy(record: _Record, key: str, fn, pick=lambda out: out):
    def spied(*args, **kwargs):
        out = fn(*args, **kwargs)
        record[key] = pick(out)
        return out
    return spied


def _injected_crops(record: _Record, case: StepCase, k: int, source: torch.Tensor):
    """Stand-in for ``sample_local_crops``: the official crops and flags of step ``k``."""
    crops = case.tensor(f"in_step{k}_local_crops")
    flags = case.tensor(f"in_step{k}_flags")
    yx = case[f"in_step{k}_local_crop_yx"]

    def sample(images_aug, roi, *, num_crops, crop_size, neg_ratio, generator=None):
        record["roi"] = roi.clone()
        # The local views are cut from the separately augmented copy (crops[2]), not from
        # the network input: the step must hand that source over.
        assert torch.equal(images_aug, source), "local crops are not cut from crops[2]"
        b = images_aug.shape[0]
        assert num_crops * b == crops.shape[0] and crop_size == crops.shape[-1]
        for i in range(b):
            for j in range(num_crops):
                y, x = yx[i, j]
                cut = images_aug[i, :, y:y + crop_size, x:x + crop_size]
                assert torch.equal(cut, crops[j * b + i]), f"stored crop {j} of image {i}"
        return crops.clone(), flags.clone()

    return sample


def _reference_box_units(case: StepCase, k: int, feat: int) -> bool:
    """Whether step ``k``'s PTC label differs between the reference's box (crop pixels on
    the feature map) and ctfa's scaled box; then the step is replayed in reference units."""
    from ctfa_cli.objectives.cam import box_mask, scale_box

    box = case.tensor(f"in_step{k}_img_box").to(torch.int64)
    s = case.meta["crop_size"]
    return not torch.equal(box_mask(box, feat, feat), box_mask(scale_box(box, s, feat), feat,
                                                                   feat))


TERMS = ("cls", "cls_aux", "ptc", "ctc", "seg", "reg", "joint")


def check_train_step_case(path: Path) -> None:
    """Replay a ``train_step`` case with ctfa's step, optimiser and EMA; compare everything."""
    import ctfa_cli.training.loop as loop_module
    import ctfa_cli.training.step as step_module
    from ctfa_cli.training.optim import build_optimizer
    from ctfa_cli.training.step import CTFAStep

    case = StepCase(path)
    m = case.meta
    assert m["component"] == "train_step"
    spec, cfg = case_spec(case), case_config(case)
    net = build_network(case)
    net.train()
    step_fn = CTFAStep(net, spec, cfg)
    optimizer = build_optimizer(net, cfg)
    params = [p for p in net.parameters() if p.requires_grad]  # as the loop clips them
    meter = loop_module._Meter(0, 0, torch.device("cpu"))
    named = dict(net.named_parameters())
    group_of = {id(p): g for g, group in enumerate(optimizer.param_groups)
                for p in group["params"]}
    group_by_name = dict(zip(m["param_names"], m["param_group"], strict=True))
    for name, g in group_by_name.items():
        ours = official_to_ctfa(name)
        if ours is not None:
            assert group_of.get(id(named[ours]), -1) == g, f"{name}: group"
    weights = m["loss_weights"]
    assert weights == {"cls": 1.0, "cls_aux": 1.0, "ptc": cfg.w_ptc, "ctc": cfg.w_ctc,
                       "seg": cfg.w_seg, "reg": cfg.w_reg, "joint": cfg.w_joint}
    teacher_after: dict[int, dict[str, torch.Tensor]] = {}
    student_head_after: dict[int, dict[str, torch.Tensor]] = {}

    for k in (1, 2):
        n_iter = int(case[f"in_step{k}_n_iter"])
        assert int(case[f"in_step{k}_global_step"]) == n_iter
        crops = case.tensor(f"in_step{k}_crops")
        inputs = case.tensor(f"in_step{k}_inputs")
        assert torch.equal(crops[0], inputs), "crops[0] is inputs"
        batch = {"image": inputs, "label": case.tensor(f"in_step{k}_cls_label"),
                 "img_box": case.tensor(f"in_step{k}_img_box"),
                 "global_view": crops[1].clone(), "local_source": crops[2].clone()}
        rec = _Record()
        feat = m["crop_size"] // m["backbone"]["kwargs"]["patch_size"]
        with ExitStack() as stack:
            patch = stack.enter_context
            patch(mock.patch.object(step_module, "sample_local_crops",
                                    _injected_crops(rec, case, k, batch["local_source"])))
            patch(mock.patch.object(step_module, "multi_scale_cams",
                                    _spy(rec, "cams", step_module.multi_scale_cams)))
            patch(mock.patch.object(step_module, "pseudo_label_from_cams",
                                    _spy(rec, "pseudo", step_module.pseudo_label_from_cams)))
            patch(mock.patch.object(step_module, "label_to_aff_mask",
                                    _record_args(rec, "pseudo_aux",
                                                 step_module.label_to_aff_mask)))
            patch(mock.patch.object(net, "classify", _spy(rec, "logits", net.classify)))
            patch(mock.patch.object(net, "decode", _spy(rec, "decoded", net.decode)))
            patch(mock.patch.object(net, "project_views",
                                    _spy(rec, "projections", net.project_views)))
            patch(mock.patch.object(net, "decode",
                                    _record_args(rec, "fmap", net.decode)))
            if _reference_box_units(case, k, feat):
                patch(mock.patch.object(step_module, "scale_box",
                                        lambda box, _from, _to: box.to(torch.int64)))

            # The loop's own step: forward, backward, clip, schedule, AdamW, EMA.
            outputs: list = []
            clip = _clip_spy(rec, named, m)
            patch(mock.patch.object(torch.nn.utils, "clip_grad_norm_", clip))
            loop_module.train_step(
                partial(_keep, outputs, step_fn), batch, n_iter, model=net,
                optimizer=optimizer, params=params, meter=meter, cfg=cfg, world_size=1,
                device=torch.device("cpu"))
        (out,) = outputs
        grad_norm, grad_norms = rec["grad_norm"], rec["grad_norms"]
        full_grads = rec["full_grads"]
        assert optimizer.global_step == n_iter + 1
        assert rec["max_norm"] == m["script_cfg"]["clip_max_norm"]

        _check_losses(case, k, out, cfg)
        close(grad_norm, case[f"out_step{k}_grad_norm"], f"step{k} grad_norm", rtol=GRAD_RTOL)
        _check_grad_norms(case, k, grad_norms)
        close(np.array([g["lr"] for g in optimizer.param_groups]), case[f"out_step{k}_lr"],
              f"step{k} lr", rtol=LR_RTOL)
        mostly_equal(rec["roi"], case[f"out_step{k}_roi_mask"], f"step{k} roi_mask")
        mostly_equal(rec["pseudo"], case[f"out_step{k}_pseudo_label"], f"step{k} pseudo_label")
        aux_label = rec["pseudo_aux"]
        mostly_equal(aux_label, case[f"out_step{k}_pseudo_label_aux"],
                     f"step{k} pseudo_label_aux", allowed=0)
        if k == 1:
            _check_intermediates(case, rec)
            for name, g in full_grads.items():
                close(g, case[f"grad_step1__{name}"], f"grad_step1__{name}", rtol=GRAD_RTOL,
                      atol_scale=GRAD_ATOL)
            lrs = {g: optimizer.param_groups[g]["lr"] for g in range(4)}
            for name in m["grad_keys"]:
                _check_updated(named[official_to_ctfa(name)],
                               case[f"out_after_step1__{name}"],
                               case[f"in_weights__{name}"], lrs[group_by_name[name]],
                               f"after step1 {name}")
        teacher_after[k] = {n: p.detach().clone() for n, p in net.proj_head_t.named_parameters()}
        student_head_after[k] = {n: p.detach().clone()
                                 for n, p in net.proj_head.named_parameters()}
        _check_checksums(case, k, net, optimizer)

    _check_teacher(case, teacher_after, student_head_after, cfg.ema_momentum)


def _keep(outputs: list, step_fn, batch, step):
    """``step_fn(batch, step)``, its output also appended to ``outputs``."""
    out = step_fn(batch, step)
    outputs.append(out)
    return out


def _clip_spy(record: _Record, named: dict, meta: dict):
    """``clip_grad_norm_`` that first records the pre-clip gradients (norms per parameter,
    the stored full gradients) and then records the norm it returns."""
    real = torch.nn.utils.clip_grad_norm_

    def clip(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        grads = {name: named[official_to_ctfa(name)].grad for name in meta["param_names"]
                 if official_to_ctfa(name) is not None}
        record["grad_norms"] = {name: (float(g.norm()) if g is not None else float("nan"))
                                for name, g in grads.items()}
        record["full_grads"] = {name: grads[name].clone() for name in meta["grad_keys"]}
        record["max_norm"] = max_norm
        norm = real(parameters, max_norm, *args, **kwargs)
        record["grad_norm"] = norm.detach().clone()
        return norm

    return clip


def _record_args(record: _Record, key: str, fn):
    def spied(label, *args, **kwargs):
        record[key] = label.clone()
        return fn(label, *args, **kwargs)
    return spied


def _check_losses(case: StepCase, k: int, out, cfg) -> None:
    """Every term on its own, then the total from them with the script's weights."""
    terms = out.terms
    assert set(terms) == set(TERMS), sorted(terms)
    ref = {t: float(np.asarray(case[f"out_step{k}_{t}"]).reshape(())) for t in TERMS}
    weights = case.meta["loss_weights"]
    # A term is also allowed the float32 rounding of the total it is part of (a CTC without
    # negative crops is ~1e-5, FORMAT.md section 14, and both sides round it differently).
    total_scale = sum(abs(weights[t] * ref[t]) for t in TERMS if np.isfinite(ref[t]))
    for t in TERMS:
        if t == "seg" and np.isnan(ref[t]):
            # The reference's empty-group NaN (FORMAT.md section 7); ctfa's term is finite.
            assert torch.isfinite(terms[t]), "seg must be finite where the reference is NaN"
            ref[t] = float(terms[t])
            continue
        close(terms[t], np.float64(ref[t]), f"step{k} {t}", atol_scale=0,
              atol=2 * F32_EPS * total_scale / weights[t])
    total = sum(weights[t] * ref[t] for t in TERMS)
    expected = float(np.asarray(case[f"out_step{k}_loss"]).reshape(()))
    if not np.isnan(expected):
        np.testing.assert_allclose(total, expected, rtol=1e-6, err_msg="reference total")
    close(out.loss, np.float64(total), f"step{k} loss")
    # Term by term: ctfa's total is its own weighted terms to float32 rounding, and each
    # weighted term (w_reg·reg is ~1.5e-4 of the total) is far above that rounding.
    parts = {t: weights[t] * float(terms[t]) for t in TERMS}
    rounding = 8 * F32_EPS * sum(abs(v) for v in parts.values())
    assert abs(float(out.loss.detach()) - sum(parts.values())) <= rounding, f"step{k} total"
    # The identity shows a missing term only if the term is above the rounding; in the public
    # case every one is (w_reg·reg by ~140×). Smaller ones are checked on their own above.
    if MARGINS is not None:
        MARGINS.append((f"step{k} smallest weighted term / total rounding (must be > 1)",
                        min(abs(v) for v in parts.values()) / rounding))


def _check_grad_norms(case: StepCase, k: int, norms: dict[str, float]) -> None:
    expected = case[f"out_step{k}_param_grad_norm"]
    names = case.meta["param_names"]
    scale = float(np.nanmax(expected))
    for name, value in zip(names, expected, strict=True):
        if name not in norms:  # the unused ImageNet head: no gradient in the reference either
            assert np.isnan(value), name
            continue
        if np.isnan(value):
            assert np.isnan(norms[name]), f"{name}: has a gradient, the reference has none"
            continue
        close(np.float64(norms[name]), value, f"step{k} grad norm {name}", rtol=GRAD_RTOL,
              atol_scale=0, atol=GRAD_ATOL * scale)


def _check_intermediates(case: StepCase, rec: _Record) -> None:
    cam, aux_cam = rec["cams"]
    close(cam, case["out_step1_cams"], "cams")
    close(aux_cam, case["out_step1_cams_aux"], "cams_aux")
    logits, aux_logits = rec["logits"]
    close(logits, case["out_step1_cls_logits"], "cls_logits")
    close(aux_logits, case["out_step1_cls_aux_logits"], "cls_aux_logits")
    # The final tokens of the training crops, as the decoders get them.
    close(rec["fmap"], case["out_step1_fmap"], "fmap")
    seg, fg = rec["decoded"]
    close(seg, case["out_step1_segs_lowres"], "segs_lowres")
    close(fg, case["out_step1_foreground_seg_lowres"], "foreground_seg_lowres")
    teacher, student = rec["projections"]
    close(teacher, case["out_step1_out_t"], "out_t")
    close(student, case["out_step1_out_s"], "out_s")


def _check_updated(param: torch.Tensor, expected: np.ndarray, initial: np.ndarray, lr: float,
                   name: str) -> None:
    """A parameter after step 1: ``±lr`` moves (fresh Adam) must agree element by element."""
    actual = param.detach().numpy()
    assert actual.shape == expected.shape, name
    wrong = np.abs(actual - expected) > 2e-3 * lr + 1e-6 * np.abs(expected)
    allowed = int(MAX_FLIPPED * expected.size)
    if MARGINS is not None:
        MARGINS.append((f"{name} (elements differing, {allowed} allowed)", float(wrong.sum())))
        return
    assert int(wrong.sum()) <= allowed, f"{name}: {int(wrong.sum())} elements differ"
    # The comparison means something only if the reference moved (Adam's first step: ±lr).
    moved = np.abs(expected - initial) > 0.5 * lr
    assert moved.mean() > 0.1, f"{name}: the reference barely moved (check the case)"


def _check_checksums(case: StepCase, k: int, net, optimizer) -> None:
    """Sums and sums of squares of every parameter after step ``k`` (the teacher apart)."""
    m = case.meta
    group_by_name = dict(zip(m["param_names"], m["param_group"], strict=True))
    named = dict(net.named_parameters())
    sums, sumsq = case[f"out_after_step{k}_param_sum"], case[f"out_after_step{k}_param_sumsq"]
    for i, name in enumerate(m["param_names"]):
        ours = official_to_ctfa(name)
        if ours is None or name.startswith("proj_head_t."):
            continue
        value = named[ours].detach().double()
        group = group_by_name[name]
        lr = optimizer.param_groups[group]["lr"]
        # each element moves by at most ~lr per step: allow 0.1 % of them to go the other way
        slack = 2 * lr * k * max(1.0, MAX_FLIPPED * value.numel())
        close(value.sum(), sums[i], f"after step{k} sum {name}", rtol=1e-4, atol_scale=0,
              atol=slack)
        close((value * value).sum(), sumsq[i], f"after step{k} sumsq {name}", rtol=1e-5,
              atol_scale=0, atol=slack * float(value.abs().max()) * 2)


def _check_teacher(case: StepCase, teacher: dict[int, dict[str, torch.Tensor]],
                   student: dict[int, dict[str, torch.Tensor]], momentum: float) -> None:
    """The teacher, one pending EMA update shifted (see the module docstring)."""
    m = case.meta
    index = {name: i for i, name in enumerate(m["param_names"])}
    initial = {n: case.tensor(f"in_weights__proj_head.{_official_head_name(n)}")
               for n in teacher[1]}
    ref_sum2, ref_sumsq2 = case["out_after_step2_param_sum"], case["out_after_step2_param_sumsq"]
    lr = float(case["out_step1_lr"][2])  # the projection head's group
    for n, t1 in teacher[1].items():
        official = f"proj_head_t.{_official_head_name(n)}"
        i = index[official]
        # Each student element moved by about ±lr, and enters the teacher with weight 1-m:
        # the same allowance as the student checksums, times 1-m.
        slack = (1.0 - momentum) * 2 * lr * max(1.0, MAX_FLIPPED * t1.numel())
        # ctfa after step 1 = 0.9·t0 + 0.1·s1 = the reference after step 2 (its first update
        # averaged t0 with itself).
        close(t1.double().sum(), np.float64(ref_sum2[i]), f"teacher after 1 sum {n}",
              rtol=1e-5, atol_scale=0, atol=slack)
        close((t1.double() ** 2).sum(), np.float64(ref_sumsq2[i]),
              f"teacher after 1 sumsq {n}", rtol=1e-5, atol_scale=0,
              atol=slack * 2 * float(t1.abs().max()))
        # The teacher moves only by the EMA rule (float32 ops, as the reference).
        expected1 = initial[n] * momentum + student[1][n] * (1.0 - momentum)
        assert torch.allclose(t1, expected1, rtol=0, atol=2.5e-7 * float(expected1.abs().max())
                              + 1e-12), n
        expected2 = t1 * momentum + student[2][n] * (1.0 - momentum)
        assert torch.allclose(teacher[2][n], expected2, rtol=0,
                              atol=2.5e-7 * float(expected2.abs().max()) + 1e-12), n
        # Σ(ctfa after 2) = 0.9·Σ(reference teacher after 2) + 0.1·Σ(reference student after 2)
        s_ref = case["out_after_step2_param_sum"][index[f"proj_head.{_official_head_name(n)}"]]
        expected_sum = momentum * ref_sum2[i] + (1.0 - momentum) * s_ref
        close(teacher[2][n].double().sum(), np.float64(expected_sum),
              f"teacher after 2 sum {n}", rtol=1e-5, atol_scale=0, atol=2 * slack)


def _official_head_name(ours: str) -> str:
    return (ours.replace("last_layer.parametrizations.weight.original0", "last_layer.weight_g")
            .replace("last_layer.parametrizations.weight.original1", "last_layer.weight_v"))


if __name__ == "__main__":
    import sys

    MARGINS = []
    check_train_step_case(Path(sys.argv[1]))
    for name, ratio in MARGINS:
        print(f"{ratio:10.4f}  {name}")
