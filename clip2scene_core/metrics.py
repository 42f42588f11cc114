"""Segmentation metrics: confusion matrices, per-class IoU and mIoU, with unlabelled points counted as wrong."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .vocabulary import IGNORE


class ConfusionMatrix:
    """Counts of (true class, predicted class) over points.

    matrix: (C, C + 1) int64; the last column counts points the model left unlabelled (prediction
    IGNORE), which are therefore false negatives of their true class. Points whose true class is
    IGNORE are not counted.
    """

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes + 1), dtype=np.int64)

    def update(self, predicted: np.ndarray, target: np.ndarray) -> None:
        predicted = np.asarray(predicted, dtype=np.int64).ravel()
        target = np.asarray(target, dtype=np.int64).ravel()
        if predicted.shape != target.shape:
            raise ValueError(f"{len(predicted)} predictions for {len(target)} targets")
        keep = target != IGNORE
        predicted, target = predicted[keep], target[keep]
        if len(target) and (target.max() >= self.num_classes or predicted.max(initial=0) >= self.num_classes):
            raise ValueError(f"class index out of range for {self.num_classes} classes")
        column = np.where(predicted == IGNORE, self.num_classes, predicted)
        self.matrix += np.bincount(target * (self.num_classes + 1) + column,
                                   minlength=self.num_classes * (self.num_classes + 1)).reshape(self.matrix.shape)

    def __iadd__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        self.matrix += other.matrix
        return self

    @property
    def true_positives(self) -> np.ndarray:
        return np.diag(self.matrix[:, :self.num_classes])

    def iou(self) -> np.ndarray:
        """(C,) IoU per class; NaN for classes neither present nor predicted."""
        tp = self.true_positives
        support = self.matrix.sum(axis=1)                      # all points of the class, unlabelled included
        predicted = self.matrix[:, :self.num_classes].sum(axis=0)
        union = support + predicted - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    def miou(self) -> float:
        """Mean IoU over the classes present in the ground truth (the usual benchmark convention)."""
        iou = self.iou()
        present = self.matrix.sum(axis=1) > 0
        return float(np.nanmean(iou[present])) if present.any() else float("nan")

    def accuracy(self) -> float:
        total = self.matrix.sum()
        return float(self.true_positives.sum() / total) if total else float("nan")

    def coverage(self) -> float:
        """Fraction of evaluated points that got a label at all."""
        total = self.matrix.sum()
        return float(1 - self.matrix[:, -1].sum() / total) if total else float("nan")


def harmonic_mean(a: float, b: float) -> float:
    """2ab / (a + b): hIoU from seen and unseen mIoU (0 when both are 0, NaN when either is)."""
    if np.isnan(a) or np.isnan(b):
        return float("nan")
    return 0.0 if a + b == 0 else float(2 * a * b / (a + b))


def seen_unseen(matrix: ConfusionMatrix, seen: np.ndarray) -> dict[str, float]:
    """mIoU over the seen classes present, over the unseen classes present, and their harmonic mean (hIoU), as
    the zero-shot 3D segmentation literature reports them; seen: (C,) bool. Every class competes for every point
    (the generalised zero-shot setting)."""
    iou = matrix.iou()
    present = matrix.matrix.sum(axis=1) > 0
    scores = {}
    for name, mask in (("seen_miou", seen), ("unseen_miou", ~seen)):
        chosen = present & mask
        scores[name] = float(np.nanmean(iou[chosen])) if chosen.any() else float("nan")
    scores["hiou"] = harmonic_mean(scores["seen_miou"], scores["unseen_miou"])
    return scores


@dataclass
class Evaluation:
    """Metrics over all points and over the points some camera sees; seen: the classes trained from ground
    truth (MCFA's setting), when there were any."""

    class_names: list[str]
    all_points: ConfusionMatrix
    in_view: ConfusionMatrix
    seen: list[str] = field(default_factory=list)

    @classmethod
    def empty(cls, class_names: list[str], seen: list[str] | None = None) -> Evaluation:
        return cls(list(class_names), ConfusionMatrix(len(class_names)), ConfusionMatrix(len(class_names)),
                   list(seen or []))

    @property
    def seen_mask(self) -> np.ndarray:
        return np.isin(np.array(self.class_names), self.seen)

    def update(self, predicted: np.ndarray, target: np.ndarray, seen: np.ndarray) -> None:
        self.all_points.update(predicted, target)
        self.in_view.update(predicted[seen], target[seen])

    def to_dict(self) -> dict:
        def section(matrix: ConfusionMatrix) -> dict:
            return {"miou": _nan_to_none(matrix.miou()), "accuracy": _nan_to_none(matrix.accuracy()),
                    "coverage": _nan_to_none(matrix.coverage()), "points": int(matrix.matrix.sum()),
                    "iou": {name: _nan_to_none(v) for name, v in zip(self.class_names, matrix.iou())},
                    "confusion": matrix.matrix.tolist()}
        result = {"classes": self.class_names, "all_points": section(self.all_points),
                  "in_view": section(self.in_view)}
        if self.seen:
            result["seen_classes"] = list(self.seen)
            result["unseen_classes"] = [name for name in self.class_names if name not in self.seen]
            for key, matrix in (("all_points", self.all_points), ("in_view", self.in_view)):
                result[key].update({k: _nan_to_none(v) for k, v in seen_unseen(matrix, self.seen_mask).items()})
        return result

    def table(self) -> str:
        lines = [f"{'class':<22} {'IoU all':>8} {'IoU in-view':>12} {'points':>10}" + ("  split" if self.seen else "")]
        support = self.all_points.matrix.sum(axis=1)
        for name, a, v, n in zip(self.class_names, self.all_points.iou(), self.in_view.iou(), support):
            split = ("  seen" if name in self.seen else "  unseen") if self.seen else ""
            lines.append(f"{name:<22} {_percent(a):>8} {_percent(v):>12} {n:>10}{split}")
        lines.append(f"{'mIoU':<22} {_percent(self.all_points.miou()):>8} {_percent(self.in_view.miou()):>12} "
                     f"{int(support.sum()):>10}")
        if self.seen:
            every, view = seen_unseen(self.all_points, self.seen_mask), seen_unseen(self.in_view, self.seen_mask)
            for key, label in (("seen_miou", "seen mIoU"), ("unseen_miou", "unseen mIoU"), ("hiou", "hIoU")):
                lines.append(f"{label:<22} {_percent(every[key]):>8} {_percent(view[key]):>12}")
        lines.append(f"{'labelled fraction':<22} {_percent(self.all_points.coverage()):>8} "
                     f"{_percent(self.in_view.coverage()):>12}")
        return "\n".join(lines)


def _percent(value: float) -> str:
    return "-" if np.isnan(value) else f"{100 * value:.1f}"


def _nan_to_none(value: float):
    return None if np.isnan(value) else float(value)
