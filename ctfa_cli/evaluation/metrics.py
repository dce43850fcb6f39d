"""Segmentation metrics from one confusion matrix accumulated over a whole split.

Definitions (per class ``c``, with ``M[t, p]`` the count of pixels of true class ``t`` predicted
as ``p``):

* ``TP = M[c, c]``, ``precision = TP / Σ_t M[t, c]`` (of what was predicted ``c``),
  ``recall = TP / Σ_p M[c, p]`` (of what truly is ``c``),
  ``F1 = 2·P·R / (P + R)``, ``IoU = TP / (Σ_t M[t, c] + Σ_p M[c, p] − TP)``.
* ``mIoU`` and ``mF1`` average over the classes **present in the ground truth** (a class absent
  from the split would otherwise count as 0 or be undefined). A present class that is never
  predicted right (TP = 0) has F1 = 0 and counts in ``mF1``.
* ``mf1_official`` is mF1 as the official ``utils/evaluate.py::scores`` computes it: the same
  per-class F1 from the confusion matrix, but where its NumPy division gives NaN — a present class
  never predicted at all, or predicted only where it is not (TP = 0, so P + R = 0) — the class is
  left out of the mean (``np.nanmean``) instead of counting 0. It is never below ``mf1`` and is
  the figure to put beside the paper's F1 columns; ``mf1`` is the stricter one.
* ``OA = trace(M) / ΣM``; Cohen's ``kappa = (OA − p_e) / (1 − p_e)`` with
  ``p_e = Σ_c (row_c · col_c) / (ΣM)²``.

The class count comes from the dataset spec (the reference code assumed 6 classes everywhere).
Pixels whose target equals ``ignore_index`` are not counted; predictions equal to
``ignore_index`` (e.g. pseudo-label pixels left undecided) are counted as wrong for their target
class and reported separately as ``ignored_predictions``.
"""

from __future__ import annotations

import torch


class ConfusionMatrix:
    """Accumulates a ``[C, C]`` confusion matrix (rows: ground truth, columns: prediction).

    Args:
        num_classes: number of classes ``C``.
        ignore_index: target value that is skipped.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        # Per true class: pixels the prediction left undecided (value ignore_index).
        self.undecided = torch.zeros(num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch.

        Args:
            pred: integer class predictions, any shape (e.g. ``[B, H, W]``).
            target: integer ground truth of the same shape; ``ignore_index`` is skipped.

        Raises:
            ValueError: shapes differ, or a value is outside ``[0, C)`` and not ignore.
        """
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        pred = pred.reshape(-1).to("cpu", torch.int64)
        target = target.reshape(-1).to("cpu", torch.int64)
        valid = target != self.ignore_index
        pred, target = pred[valid], target[valid]
        undecided = pred == self.ignore_index
        pred, target_counted = pred[~undecided], target[~undecided]
        c = self.num_classes
        if target.numel() and (target.min() < 0 or target.max() >= c):
            raise ValueError(f"target holds values outside [0, {c}) other than {self.ignore_index}")
        if pred.numel() and (pred.min() < 0 or pred.max() >= c):
            raise ValueError(f"prediction holds values outside [0, {c})")
        self.matrix += torch.bincount(target_counted * c + pred, minlength=c * c).reshape(c, c)
        # An undecided prediction is still a miss for its true class (it lowers recall and IoU).
        self.undecided += torch.bincount(target[undecided], minlength=c)

    def merge(self, other: ConfusionMatrix) -> None:
        """Add another matrix of the same class count (e.g. from another worker)."""
        self.matrix += other.matrix
        self.undecided += other.undecided

    def all_reduce(self) -> None:
        """Sum the matrix over the ranks of an initialised ``torch.distributed`` group."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        packed = torch.cat([self.matrix.reshape(-1), self.undecided]).to(backend_device)
        dist.all_reduce(packed)
        packed = packed.cpu()
        c = self.num_classes
        self.matrix = packed[: c * c].reshape(c, c)
        self.undecided = packed[c * c :]

    def compute(self) -> dict:
        """Return the metrics as plain Python numbers.

        Returns:
            ``miou``, ``mf1``, ``mf1_official``, ``oa``, ``kappa`` (floats), per-class lists
            ``iou``, ``f1``,
            ``precision``, ``recall`` (NaN where undefined), ``present`` (bools: class in the
            ground truth), ``pixels`` (counted pixels) and ``ignored_predictions``.
        """
        m = self.matrix.to(torch.float64)
        tp = m.diagonal()
        actual = m.sum(1) + self.undecided.to(torch.float64)
        predicted = m.sum(0)
        total = actual.sum()
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), nan)
        recall = torch.where(actual > 0, tp / actual.clamp(min=1), nan)
        denom = precision + recall
        f1 = torch.where(denom > 0, 2 * precision * recall / denom, torch.zeros_like(denom))
        f1 = torch.where(torch.isnan(precision) | torch.isnan(recall), nan, f1)
        f1 = torch.where((actual > 0) & (predicted == 0), torch.zeros_like(f1), f1)
        # The official F1: NaN (left out of the mean) wherever 0/0 occurs; rows without the
        # undecided predictions, as the reference's histogram has no place for them.
        rows = m.sum(1)
        official = torch.where(tp > 0, 2 * tp / (rows + predicted), nan)  # = 2PR / (P + R)
        union = actual + predicted - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
        present = actual > 0
        # float64 tensor arithmetic: an empty matrix (0/0), a mean over no class and kappa with
        # chance agreement 1 (0/0) all give NaN without a branch of their own.
        oa = tp.sum() / total
        expected = (actual * predicted).sum() / total**2
        kappa = (oa - expected) / (1 - expected)
        return {
            "miou": float(iou[present].mean()),
            "mf1": float(f1[present].mean()),
            "mf1_official": float(official.nanmean()),
            "oa": float(oa),
            "kappa": float(kappa),
            "iou": iou.tolist(),
            "f1": f1.tolist(),
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "present": present.tolist(),
            "pixels": int(total),
            "ignored_predictions": int(self.undecided.sum()),
        }
