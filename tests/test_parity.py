"""Numerical parity with the official CTFA implementation (golden vectors, FORMAT.md).

One parametrised test runs every ``*.npz`` case of the parity folder through the matching
``ctfa_cli`` / ``kernels`` function, chosen by ``meta["component"]``. An unknown component fails:
a new case can never pass silently. ``pytest -k parity`` runs it (and the other parity tests).

The folder is ``$CTFA_PARITY_DIR`` when set, else ``../shared/parity`` beside the repository (the
full set, with the 13 MB whole-step case ``train_step__*``), else the copy of the component
cases in ``tests/data/parity/``. Whole-step cases (``train_step``, FORMAT.md section 14) are
replayed by :mod:`tests.training.step_parity` with ctfa's own step, optimiser and EMA; their
tolerances are stated there. The default folder must hold at least one of them.

Tolerances: float results ``rtol=1e-4`` and ``atol=1e-5`` scaled by the array's magnitude when
that is below 1 (``atol = 1e-5 · min(1, max|expected|)``): the energy-loss gradients are
~1e-6 (the loss weight is 1e-7) and a fixed ``atol=1e-5`` would accept any value there. Integer
results exactly, with the reference's dtype. Learning rates (float64 arithmetic on Python
floats) to ``rtol=1e-9``. Refined pseudo labels: see :func:`_refine_pseudo_label`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

SHARED_PARITY_DIR = Path(__file__).resolve().parents[2] / "shared" / "parity"
BUNDLED_PARITY_DIR = Path(__file__).parent / "data" / "parity"
PARITY_DIR = Path(os.environ.get(
    "CTFA_PARITY_DIR", SHARED_PARITY_DIR if SHARED_PARITY_DIR.is_dir() else BUNDLED_PARITY_DIR))
CASES = sorted(PARITY_DIR.glob("*.npz"))

RTOL, ATOL = 1e-4, 1e-5
#: Refined labels may differ from the reference only on this share of pixels, and only in
#: cases whose recorded arg-max margin (``diag_min_argmax_margin_in_box``) is a near-tie.
REFINE_MAX_FLIPPED = 1e-3
REFINE_NEAR_TIE = 1e-4


class Case:
    """One golden-vector file: ``inputs`` (``in_*``), ``outputs`` (``out_*``),
    ``grads`` (``grad_*``) as numpy arrays, and ``meta`` (the parsed JSON)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with np.load(path) as z:
            self.meta = json.loads(str(z["meta"]))
            arrays = {k: z[k] for k in z.files if k != "meta"}
        self.inputs = {k[3:]: v for k, v in arrays.items() if k.startswith("in_")}
        self.outputs = {k[4:]: v for k, v in arrays.items() if k.startswith("out_")}
        self.grads = {k[5:]: v for k, v in arrays.items() if k.startswith("grad_")}

    def tensor(self, name: str, *, grad: bool = False) -> torch.Tensor:
        """Input ``name`` as a tensor (a leaf that records its gradient when ``grad``)."""
        t = torch.from_numpy(np.array(self.inputs[name]))
        return t.requires_grad_(True) if grad else t


def assert_float(actual, expected: np.ndarray, name: str, *, rtol: float = RTOL) -> None:
    """Compare a float result to the reference with the module's tolerances."""
    actual = actual.detach().cpu().numpy() if isinstance(actual, torch.Tensor) else actual
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=ATOL * min(1.0, scale),
                               err_msg=name)


def assert_exact(actual: torch.Tensor, expected: np.ndarray, name: str) -> None:
    """Compare an integer result to the reference: same dtype, same values."""
    actual = actual.detach().cpu().numpy()
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    np.testing.assert_array_equal(actual, expected, err_msg=name)


def check_loss_and_grads(case: Case, loss: torch.Tensor, leaves: dict[str, torch.Tensor]) -> None:
    """Compare ``out_loss`` and every ``grad_<input>`` (backward of ``loss``)."""
    assert_float(loss, case.outputs["loss"], "loss")
    loss.sum().backward()
    assert case.grads, "a loss case without gradients"
    for name, expected in case.grads.items():
        assert_float(leaves[name].grad, expected, f"grad_{name}")


def float_leaves(case: Case) -> dict[str, torch.Tensor]:
    """Every input as a tensor; float inputs record their gradient."""
    return {name: case.tensor(name, grad=value.dtype.kind == "f")
            for name, value in case.inputs.items()}


# --- adapters: one per component -------------------------------------------------------------


def _par(case: Case) -> None:
    from kernels.par import par

    out = par(case.tensor("imgs"), case.tensor("masks"), case.meta["dilations"],
              case.meta["num_iter"])
    assert_float(out, case.outputs["masks"], "masks")


def _cam_to_label_plain(case: Case) -> None:
    from ctfa_cli.objectives.cam import cam_to_label

    m = case.meta
    # The plain path silently ignores ignore_mid/high/low (some cases pass them).
    label = cam_to_label(case.tensor("cam"), case.tensor("cls_label"), bkg_thre=m["bkg_thre"],
                         ignore_mid=m["ignore_mid"], high_thre=m["high_thre"],
                         low_thre=m["low_thre"])
    assert_exact(label, case.outputs["pseudo_label"], "pseudo_label")


def _cam_to_label_boxed(case: Case) -> None:
    from ctfa_cli.objectives.cam import cam_to_label

    m = case.meta
    valid_cam, label = cam_to_label(
        case.tensor("cam"), case.tensor("cls_label"), img_box=case.tensor("img_box"),
        bkg_thre=m["bkg_thre"], ignore_mid=m["ignore_mid"], high_thre=m["high_thre"],
        low_thre=m["low_thre"], ignore_index=m["ignore_index"],
    )
    assert_float(valid_cam, case.outputs["valid_cam"], "valid_cam")
    assert_exact(label, case.outputs["pseudo_label"], "pseudo_label")


def _roi_mask(case: Case) -> None:
    from ctfa_cli.objectives.cam import roi_mask

    roi = roi_mask(case.tensor("cam"), case.tensor("cls_label"), case.meta["hig_thre"],
                   case.meta["low_thre"])
    assert_exact(roi, case.outputs["roi_mask"], "roi_mask")


def _aff_mask(case: Case) -> None:
    from ctfa_cli.objectives.cam import label_to_aff_mask

    aff = label_to_aff_mask(case.tensor("cam_label"), ignore_index=case.meta["ignore_index"])
    assert_exact(aff, case.outputs["aff_mask"], "aff_mask")


def _refine_pseudo_label(case: Case) -> None:
    """Exact, except that near-tie cases may flip at most 0.1% of the pixels.

    The reference's final arg-max came within ``diag_min_argmax_margin_in_box`` (as small as
    5e-7) of a tie; a different float summation order in PAR can flip such pixels. Flips are
    allowed only when that recorded margin is below 1e-4, on at most 0.1% of the pixels, and a
    flipped pixel must still hold a legal label; every other pixel must be equal.
    """
    from ctfa_cli.objectives.refine import refine_pseudo_label

    m = case.meta
    out = refine_pseudo_label(
        case.tensor("images_denorm"), case.tensor("cams"), case.tensor("cls_labels"),
        high_thre=m["high_thre"], low_thre=m["low_thre"], ignore_index=m["ignore_index"],
        img_box=case.tensor("img_box"), down_scale=m["down_scale"],
        dilations=m["par_dilations"], num_iter=m["par_num_iter"],
    ).numpy()
    expected = case.outputs["refined_label"]
    assert out.dtype == expected.dtype and out.shape == expected.shape
    flipped = out != expected
    allowed = 0
    if m["diag_min_argmax_margin_in_box"] < REFINE_NEAR_TIE:
        allowed = math.floor(REFINE_MAX_FLIPPED * expected.size)
    assert flipped.sum() <= allowed, f"{flipped.sum()} pixels differ (allowed {allowed})"
    num_fg = case.inputs["cls_labels"].shape[1]
    legal = np.isin(out, [*range(num_fg + 1), m["ignore_index"]])
    assert legal.all(), "refined label holds values outside 0..C and ignore"


def _ptc_loss(case: Case) -> None:
    from ctfa_cli.objectives.losses import ptc_loss

    leaves = float_leaves(case)
    check_loss_and_grads(case, ptc_loss(leaves["fmap"], leaves["aff_mask"]), leaves)


def _seg_loss(case: Case) -> None:
    """Where the reference loss is NaN (a group without pixels), ours must be finite and
    equal to the defined term alone (the undefined term contributes zero, by design)."""
    from ctfa_cli.objectives.losses import seg_loss

    leaves = float_leaves(case)
    ignore = case.meta["ignore_index"]
    loss = seg_loss(leaves["pred"], leaves["label"], ignore_index=ignore)
    expected = case.outputs["loss"]
    if np.isnan(expected).any():
        assert torch.isfinite(loss).all(), "seg_loss must stay finite where the reference is NaN"
        pred, label = leaves["pred"].detach(), leaves["label"].long()
        terms = []
        for group in (label == 0, (label != 0) & (label != ignore)):
            if group.any():
                terms.append(F.cross_entropy(pred, label.masked_fill(~group, ignore),
                                             ignore_index=ignore))
        defined = 0.5 * sum(terms) if terms else torch.tensor(0.0)
        assert_float(loss, np.asarray(defined.numpy(), dtype=expected.dtype), "loss")
        loss.backward()
        for name, grad in case.grads.items():
            assert_float(leaves[name].grad, grad, f"grad_{name}")
        return
    check_loss_and_grads(case, loss, leaves)


def _joint_loss(case: Case) -> None:
    from ctfa_cli.objectives.losses import joint_loss

    leaves = float_leaves(case)
    loss = joint_loss(leaves["foreground_logits"], leaves["seg_logits"], leaves["label"],
                      ignore_index=case.meta["ignore_index"])
    check_loss_and_grads(case, loss, leaves)


def _ctc_loss(case: Case) -> None:
    from ctfa_cli.objectives.losses import ctc_loss

    leaves = float_leaves(case)
    assert leaves["student_out"].shape[0] == case.meta["ncrops"] * leaves["flags"].shape[0]
    loss = ctc_loss(leaves["student_out"], leaves["teacher_out"], leaves["flags"].detach(),
                    temp=case.meta["temp"])
    check_loss_and_grads(case, loss, leaves)


def _energy_loss(case: Case) -> None:
    from kernels.dense_crf import energy_loss

    m = case.meta
    leaves = {"logit": case.tensor("logit", grad=True)}
    loss = energy_loss(case.tensor("img"), leaves["logit"], case.tensor("label"),
                       case.tensor("img_box"), mean=m["mean"], std=m["std"], weight=m["weight"],
                       sigma_rgb=m["sigma_rgb"], sigma_xy=m["sigma_xy"],
                       scale_factor=m["scale_factor"])
    check_loss_and_grads(case, loss, leaves)


def _bilateral_filter(case: Case) -> None:
    from kernels.bilateral import bilateral_filter

    out = bilateral_filter(case.tensor("images"), case.tensor("ins"), case.meta["sigma_rgb"],
                           case.meta["sigma_xy"])
    assert_float(out, case.outputs["outs"], "outs")


def _param_counts(case: Case) -> None:
    """Parameter counts per part, in total, and per optimiser group.

    The reference backbone also builds an ImageNet head (768→1000: weight and bias, 2 tensors,
    ``out_encoder_unused_head_numel`` parameters, trainable, optimiser group 0) that is never
    used; ours leaves it out, so it is subtracted from the reference wherever it is counted:
    the encoder's total and trainable counts, the overall totals, the tensor count, and group 0
    (numel and tensor count).
    """
    from ctfa_cli.model.network import CTFANetwork
    from ctfa_cli.training.optim import param_groups

    m, out = case.meta, case.outputs
    head, head_tensors = int(out["encoder_unused_head_numel"]), 2
    # Counting needs no storage: build on the meta device.
    with torch.device("meta"):
        model = CTFANetwork(num_cam_classes=m["num_classes"] - 1, num_classes=m["num_classes"],
                            backbone=m["backbone"], pretrained=False, aux_layer=m["aux_layer"])

    expected_total = out["numel_total"].copy()
    expected_trainable = out["numel_trainable"].copy()
    encoder = m["submodules"].index("encoder")
    expected_total[encoder] -= head
    expected_trainable[encoder] -= head
    for i, name in enumerate(m["submodules"]):
        params = list(getattr(model, name).parameters())
        total = sum(p.numel() for p in params)
        trainable = sum(p.numel() for p in params if p.requires_grad)
        assert total == expected_total[i], f"{name}: {total} parameters"
        assert trainable == expected_trainable[i], f"{name}: {trainable} trainable"
        assert total - trainable == out["numel_frozen"][i], f"{name}: frozen"

    params = list(model.parameters())
    assert sum(p.numel() for p in params) == out["total"] - head
    assert sum(p.numel() for p in params if p.requires_grad) == out["total_trainable"] - head
    assert len(params) == out["num_tensors"] - head_tensors

    groups = param_groups(model)
    expected_numel = out["param_group_numel"].copy()
    expected_tensors = out["param_group_ntensors"].copy()
    expected_numel[0] -= head
    expected_tensors[0] -= head_tensors
    assert [sum(p.numel() for p in g) for g in groups] == expected_numel.tolist()
    assert [len(g) for g in groups] == expected_tensors.tolist()


def _poly_lr(case: Case) -> None:
    from ctfa_cli.training.optim import poly_lr

    m = case.meta
    lrs = [
        [poly_lr(int(step), m["lr"], warmup_iters=m["warmup_iter"],
                 warmup_ratio=m["warmup_ratio"], max_iters=m["max_iter"], power=m["power"])
         * mult for mult in m["group_lr_mult"]]
        for step in case.inputs["steps"]
    ]
    assert_float(np.array(lrs, dtype=np.float64), case.outputs["lr"], "lr", rtol=1e-9)


def _train_step(case: Case) -> None:
    from tests.training.step_parity import check_train_step_case

    check_train_step_case(case.path)


ADAPTERS: dict[str, Callable[[Case], None]] = {
    "par": _par,
    "cam_to_label_plain": _cam_to_label_plain,
    "cam_to_label_boxed": _cam_to_label_boxed,
    "roi_mask": _roi_mask,
    "aff_mask": _aff_mask,
    "refine_pseudo_label": _refine_pseudo_label,
    "ptc_loss": _ptc_loss,
    "seg_loss": _seg_loss,
    "joint_loss": _joint_loss,
    "ctc_loss": _ctc_loss,
    "energy_loss": _energy_loss,
    "bilateral_filter": _bilateral_filter,
    "param_counts": _param_counts,
    "poly_lr": _poly_lr,
    "train_step": _train_step,
}


# An empty directory must fail, not collect zero tests.
@pytest.mark.parametrize("path", CASES or [PARITY_DIR], ids=lambda p: p.stem)
def test_parity(path: Path) -> None:
    if path.suffix != ".npz":
        pytest.fail(f"{path}: no *.npz parity cases found; set CTFA_PARITY_DIR to their folder")
    case = Case(path)
    component = case.meta.get("component")
    adapter = ADAPTERS.get(component)
    if adapter is None:
        pytest.fail(f"{path.name}: unknown component {component!r}; add an adapter")
    adapter(case)


def test_parity_folder_holds_whole_step_cases() -> None:
    """The whole-step replay is not optional: a folder without ``train_step__*`` cases (e.g.
    the bundled component copy, when ``../shared`` is missing) fails here instead of passing
    on the components alone."""
    if not sorted(PARITY_DIR.glob("train_step__*.npz")):
        pytest.fail(f"{PARITY_DIR}: no train_step__*.npz case; put ../shared/parity beside the "
                    "repository or set CTFA_PARITY_DIR to a folder that has them")
