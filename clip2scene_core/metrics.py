"""Segmentation metrics: confusion matrices, per-class IoU and mIoU, with unlabelled points counted as wrong; and
the neighbour fill that gives the teacher's projection a fair baseline over all points."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .vocabulary import IGNORE

# The "teacher + neighbour fill" baseline: an unlabelled point takes the majority label of its FILL_K nearest
# labelled points of the same sweep within FILL_RADIUS_M (3D).
FILL_K = 5
FILL_RADIUS_M = 2.0


def fill_from_neighbours(points: np.ndarray, labels: np.ndarray, k: int = FILL_K,
                         radius_m: float = FILL_RADIUS_M) -> np.ndarray:
    """(N,) int64 labels with each unlabelled point (IGNORE) given the majority label of its k nearest labelled
    points within radius_m (3D Euclidean, inclusive); a tie between classes goes to the class of the nearest of
    the tied points; a point with no labelled point within radius_m stays IGNORE. Labelled points keep their label.

    points: (N, >= 3), the first three columns x, y, z in metres; labels: (N,) class index or IGNORE.
    Exact, with a voxel grid in levels: the labelled points in the 3x3x3 cells of size c around a point hold every
    labelled point within c of it, so a point with k of them within c has its k nearest; the others go on to the
    next cell size, in eighths of radius_m up to c = radius_m.
    """
    xyz = np.asarray(points, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64).ravel()
    if xyz.ndim != 2 or xyz.shape[1] < 3 or len(xyz) != len(labels):
        raise ValueError(f"points must be (N, >= 3) with one label each, got {xyz.shape} and {labels.shape}")
    if int(k) < 1 or not np.isfinite(radius_m) or radius_m <= 0:
        raise ValueError(f"neighbour fill needs k >= 1 and a radius > 0 m, got k={k}, radius_m={radius_m}")
    xyz, k = xyz[:, :3], int(k)
    filled = labels.copy()
    finite = np.isfinite(xyz).all(axis=1)  # a point without coordinates neither votes nor is filled
    known = (labels != IGNORE) & finite
    pending = np.flatnonzero((labels == IGNORE) & finite)
    if not len(pending) or not known.any():
        return filled
    reference, reference_labels = xyz[known], labels[known]
    num_classes = int(reference_labels.max()) + 1
    for cell in radius_m * np.arange(1, 9) / 8:  # each point resolved at about its k-th neighbour's distance
        last = cell >= radius_m
        unresolved = []
        for start in range(0, len(pending), _FILL_BLOCK):
            block = pending[start:start + _FILL_BLOCK]
            query, index, squared = _pairs_within(xyz[block], reference, cell)
            enough = np.bincount(query, minlength=len(block)) >= k
            if not last:
                unresolved.append(block[~enough])
                keep = enough[query]
                query, index, squared = query[keep], index[keep], squared[keep]
            if not len(query):
                continue
            order = np.argsort(query + squared / (2 * cell * cell), kind="stable")  # per query, nearest first
            query, index = query[order], index[order]
            first = np.searchsorted(query, query, "left")
            nearest = np.arange(len(query)) - first < k
            query, votes_for = query[nearest], reference_labels[index[nearest]]
            counts = np.bincount(query * num_classes + votes_for, minlength=len(block) * num_classes)
            support = counts[query * num_classes + votes_for]
            best = np.zeros(len(block), np.int64)
            np.maximum.at(best, query, support)
            tied = support == best[query]
            chosen, at = np.unique(query[tied], return_index=True)     # the nearest point of a best class
            filled[block[chosen]] = votes_for[tied][at]
        if last:
            break
        pending = np.concatenate(unresolved) if unresolved else pending[:0]
        if not len(pending):
            break
    return filled


_FILL_BLOCK = 4096  # query points per block of fill_from_neighbours (bounds its pair arrays)


def _pairs_within(query: np.ndarray, reference: np.ndarray, cell: float) -> tuple[np.ndarray, ...]:
    """(query index, reference index, squared distance) of every pair within `cell` metres, found through the
    3x3x3 grid cells of size `cell` around each query point."""
    origin = np.minimum(query.min(axis=0), reference.min(axis=0)) - cell
    query_cells = np.floor((query - origin) / cell).astype(np.int64)
    reference_cells = np.floor((reference - origin) / cell).astype(np.int64)
    outside = ((reference_cells > query_cells.max(axis=0) + 1) |            # beyond every query's neighbourhood
               (reference_cells < query_cells.min(axis=0) - 1)).any(axis=1)
    candidates = np.flatnonzero(~outside)
    dims = query_cells.max(axis=0) + 3
    keys = (reference_cells[candidates] @ np.array([dims[1] * dims[2], dims[2], 1])).astype(np.int64)
    by_key = np.argsort(keys, kind="stable")
    candidates, keys = candidates[by_key], keys[by_key]
    offsets = np.stack(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    wanted = ((query_cells[:, None, :] + offsets[None]) @ np.array([dims[1] * dims[2], dims[2], 1])).ravel()
    low, high = np.searchsorted(keys, wanted, "left"), np.searchsorted(keys, wanted, "right")
    counts = high - low
    total = int(counts.sum())
    query_index = np.repeat(np.arange(len(query)).repeat(len(offsets)), counts)
    position = np.repeat(low - np.cumsum(counts) + counts, counts) + np.arange(total)
    reference_index = candidates[position]
    squared = np.zeros(total)
    for axis in range(3):  # one coordinate at a time: gathers of contiguous columns, several times faster
        delta = np.ascontiguousarray(query[:, axis])[query_index] - \
            np.ascontiguousarray(reference[:, axis])[reference_index]
        squared += delta * delta
    keep = squared <= cell * cell
    return query_index[keep], reference_index[keep], squared[keep]


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


@dataclass(frozen=True)
class NeighbourFill:
    """The settings of fill_from_neighbours for the "teacher + neighbour fill" baseline."""

    k: int = FILL_K
    radius_m: float = FILL_RADIUS_M

    def __call__(self, points: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return fill_from_neighbours(points, labels, self.k, self.radius_m)

    def describe(self) -> str:
        return f"{self.k} nearest labelled points within {self.radius_m:g} m"


@dataclass
class Evaluation:
    """Metrics over all points and over the points some camera sees; seen: the classes trained from ground
    truth (MCFA's setting), when there were any. With fill (the teacher's baselines), also over all points after
    the unlabelled points were filled from their labelled neighbours (filled; update then needs the points)."""

    class_names: list[str]
    all_points: ConfusionMatrix
    in_view: ConfusionMatrix
    seen: list[str] = field(default_factory=list)
    filled: ConfusionMatrix | None = None
    fill: NeighbourFill | None = None

    def __post_init__(self):
        if self.filled is not None and self.fill is None:
            self.fill = NeighbourFill()

    @classmethod
    def empty(cls, class_names: list[str], seen: list[str] | None = None,
              fill: bool | NeighbourFill = False) -> Evaluation:
        """fill: True (the default k and radius) or a NeighbourFill to score the neighbour-filled labels too."""
        fill = NeighbourFill() if fill is True else (fill or None)
        return cls(list(class_names), ConfusionMatrix(len(class_names)), ConfusionMatrix(len(class_names)),
                   list(seen or []), ConfusionMatrix(len(class_names)) if fill else None, fill)

    @property
    def seen_mask(self) -> np.ndarray:
        return np.isin(np.array(self.class_names), self.seen)

    def update(self, predicted: np.ndarray, target: np.ndarray, seen: np.ndarray,
               points: np.ndarray | None = None) -> np.ndarray | None:
        """Add one sweep; with a filled accumulator, points (N, >= 3) are needed to fill its unlabelled points
        (returned, else None)."""
        self.all_points.update(predicted, target)
        self.in_view.update(predicted[seen], target[seen])
        if self.filled is None:
            return None
        if points is None:
            raise ValueError("this evaluation scores neighbour-filled labels: update needs the sweep's points")
        filled = self.fill(points, predicted)
        self.filled.update(filled, target)
        return filled

    def sections(self) -> list[tuple[str, str, ConfusionMatrix]]:
        """(key in to_dict, short column title, matrix) of each accumulator, all points first."""
        rows = [("all_points", "IoU all", self.all_points)]
        if self.filled is not None:
            rows.append(("filled_all_points", "IoU filled", self.filled))
        return rows + [("in_view", "IoU in-view", self.in_view)]

    def to_dict(self) -> dict:
        def section(matrix: ConfusionMatrix) -> dict:
            return {"miou": _nan_to_none(matrix.miou()), "accuracy": _nan_to_none(matrix.accuracy()),
                    "coverage": _nan_to_none(matrix.coverage()), "points": int(matrix.matrix.sum()),
                    "iou": {name: _nan_to_none(v) for name, v in zip(self.class_names, matrix.iou())},
                    "confusion": matrix.matrix.tolist()}
        result = {"classes": self.class_names}
        for key, _, matrix in self.sections():
            result[key] = section(matrix)
        if self.fill is not None and self.filled is not None:
            result["neighbour_fill"] = {"k": self.fill.k, "radius_m": self.fill.radius_m}
        if self.seen:
            result["seen_classes"] = list(self.seen)
            result["unseen_classes"] = [name for name in self.class_names if name not in self.seen]
            for key, _, matrix in self.sections():
                result[key].update({k: _nan_to_none(v) for k, v in seen_unseen(matrix, self.seen_mask).items()})
        return result

    def table(self) -> str:
        """Per-class IoU, mIoU and labelled fraction, one column per accumulator ("IoU filled": all points, the
        unlabelled ones filled from their labelled neighbours)."""
        sections = self.sections()
        width = [max(8, len(title) + 1) for _, title, _ in sections]
        head = " ".join(f"{title:>{w}}" for (_, title, _), w in zip(sections, width))
        lines = [f"{'class':<22} {head} {'points':>10}" + ("  split" if self.seen else "")]
        support = self.all_points.matrix.sum(axis=1)
        ious = [matrix.iou() for _, _, matrix in sections]

        def cells(values) -> str:
            return " ".join(f"{_percent(v):>{w}}" for v, w in zip(values, width))
        for index, (name, n) in enumerate(zip(self.class_names, support)):
            split = ("  seen" if name in self.seen else "  unseen") if self.seen else ""
            lines.append(f"{name:<22} {cells([iou[index] for iou in ious])} {n:>10}{split}")
        lines.append(f"{'mIoU':<22} {cells([m.miou() for _, _, m in sections])} {int(support.sum()):>10}")
        if self.seen:
            scores = [seen_unseen(matrix, self.seen_mask) for _, _, matrix in sections]
            for key, label in (("seen_miou", "seen mIoU"), ("unseen_miou", "unseen mIoU"), ("hiou", "hIoU")):
                lines.append(f"{label:<22} {cells([s[key] for s in scores])}")
        lines.append(f"{'labelled fraction':<22} {cells([m.coverage() for _, _, m in sections])}")
        if self.filled is not None:
            lines.append(f"(IoU filled: all points, each unlabelled point given the majority label of its "
                         f"{self.fill.describe()}; unlabelled otherwise, counted as wrong)")
        return "\n".join(lines)


def _percent(value: float) -> str:
    return "-" if np.isnan(value) else f"{100 * value:.1f}"


def _nan_to_none(value: float):
    return None if np.isnan(value) else float(value)


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of scores (N,) for telling positive (N,) bool from the rest: the chance that a
    random positive scores above a random negative, ties counting half (Mann-Whitney U). NaN without both."""
    scores, positive = np.asarray(scores, np.float64).ravel(), np.asarray(positive, bool).ravel()
    count, negatives = int(positive.sum()), int((~positive).sum())
    if count == 0 or negatives == 0:
        return float("nan")
    values, inverse = np.unique(scores, return_inverse=True)
    below = np.concatenate([[0], np.cumsum(np.bincount(inverse, minlength=len(values)))[:-1]])
    ranks = below[inverse] + (np.bincount(inverse, minlength=len(values))[inverse] + 1) / 2   # average ranks, from 1
    return float((ranks[positive].sum() - count * (count + 1) / 2) / (count * negatives))
