"""Evaluation pictures: confusion matrix and per-class IoU bars (matplotlib, written as PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .metrics import Evaluation


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def confusion_matrix_png(evaluation: Evaluation, path: Path, in_view: bool = False, filled: bool = False) -> Path:
    """Row-normalised confusion matrix (rows: truth; the last column: points left unlabelled) over all points,
    in-view points, or (filled) all points after the neighbour fill."""
    plt = _pyplot()
    if filled and evaluation.filled is None:
        raise ValueError("this evaluation has no neighbour-filled row")
    chosen = evaluation.filled if filled else evaluation.in_view if in_view else evaluation.all_points
    matrix = chosen.matrix.astype(np.float64)
    normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    names = evaluation.class_names
    size = max(5.0, 0.45 * len(names) + 2)
    figure, axis = plt.subplots(figsize=(size + 1, size))
    image = axis.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    axis.set_xticks(range(len(names) + 1), names + ["(unlabelled)"], rotation=90, fontsize=8)
    axis.set_yticks(range(len(names)), names, fontsize=8)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    which = "all points, neighbour fill" if filled else "in-view points" if in_view else "all points"
    axis.set_title(f"confusion ({which}), rows sum to 1")
    figure.colorbar(image, ax=axis, fraction=0.046)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)


def iou_bars_png(evaluation: Evaluation, path: Path, colors: np.ndarray | None = None) -> Path:
    """Per-class IoU over all points, over all points after the neighbour fill (when evaluated) and over in-view
    points, side by side."""
    plt = _pyplot()
    names = evaluation.class_names
    positions = np.arange(len(names))
    figure, axis = plt.subplots(figsize=(max(6.0, 0.5 * len(names) + 2), 4))
    series = [("all points", evaluation.all_points)]
    if evaluation.filled is not None:
        series.append(("all points, neighbour fill", evaluation.filled))
    series.append(("in-view points", evaluation.in_view))
    width = 0.8 / len(series)
    for number, (label, matrix) in enumerate(series):
        axis.bar(positions + (number - (len(series) - 1) / 2) * width, 100 * np.nan_to_num(matrix.iou()),
                 width=width, label=f"{label} (mIoU {100 * np.nan_to_num(matrix.miou()):.1f})")
    axis.set_xticks(positions, names, rotation=60, ha="right", fontsize=8)
    axis.set_ylabel("IoU %")
    axis.set_ylim(0, 100)
    axis.legend()
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)
