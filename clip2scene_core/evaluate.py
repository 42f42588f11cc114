"""Running a segmenter over a data source: writing its labels and pictures, or scoring it against the
source's ground truth (annotation-free: the segmenter never saw a label)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .data import FrameSource, SourceError
from .errors import UsageError
from .metrics import Evaluation
from .render import render_frame, save_png
from .segmenter import Segmentation, Segmenter
from .vocabulary import IGNORE, Vocabulary, no_matching_labels


def segment_source(source: FrameSource, segmenter: Segmenter, out: Path, pictures: bool = True,
                   progress: bool = True) -> dict:
    """Write each frame's labels (frames/NNNNNN.npz: labels int16, scores float16, seen bool) and a picture
    (pictures/NNNNNN.png) under out; returns the summary also written to out/segmentation.json."""
    out = Path(out)
    (out / "frames").mkdir(parents=True, exist_ok=True)
    vocabulary = segmenter.vocabulary
    counts = np.zeros(len(vocabulary), np.int64)
    names, timings = [], []
    for index, frame in enumerate(tqdm(source, desc="segment", unit="frame", disable=not progress)):
        result = segmenter.segment(frame)
        np.savez_compressed(out / "frames" / f"{index:06d}.npz", labels=result.labels.astype(np.int16),
                            scores=result.scores.astype(np.float16), seen=result.seen)
        counts += result.counts(len(vocabulary))
        names.append(frame.name)
        timings.append(result.timings_ms)
        if pictures:
            save_png(out / "pictures" / f"{index:06d}.png", picture(frame, result, vocabulary))
    summary = {"mode": segmenter.mode, "vocabulary": vocabulary.to_dict(), "frames": names,
               "points_per_class": dict(zip(vocabulary.names, counts.tolist())),
               "mean_timings_ms": _mean_timings(timings)}
    (out / "segmentation.json").write_text(json.dumps(summary, indent=2))
    return summary


def picture(frame, result: Segmentation, vocabulary: Vocabulary) -> np.ndarray:
    """The frame's points coloured by predicted class over its cameras (unlabelled points black)."""
    palette = {**vocabulary.palette, IGNORE: (0, 0, 0)}
    return render_frame(frame, color_by="label", palette=palette, values=result.labels)


def evaluate_source(source: FrameSource, segmenter: Segmenter, progress: bool = True) -> tuple[Evaluation, dict]:
    """Per-class IoU and mIoU over all points (unlabelled = wrong) and over in-view points."""
    vocabulary = segmenter.vocabulary
    if not vocabulary.covers_ids:
        raise UsageError(f"vocabulary {vocabulary.name!r} lists no raw label ids: evaluation needs each class's "
                         f"'ids' in the dataset's labels")
    if len(source) == 0:
        raise SourceError("the source holds no frames to evaluate; check its path and its start/stop/step options")
    evaluation = Evaluation.empty(vocabulary.names)
    timings, present, matched = [], set(), False
    for frame in tqdm(source, desc="evaluate", unit="frame", disable=not progress):
        if frame.labels is None:
            raise SourceError(f"frame {frame.name!r} has no per-point labels to evaluate against; evaluate on a "
                              f"labelled source (lidarseg, SemanticKITTI labels, a bag with a label field, synthetic)")
        target = vocabulary.raw_to_class(frame.labels)
        if not matched:
            matched = bool((target != IGNORE).any())
            present.update(np.unique(frame.labels).tolist())
        result = segmenter.segment(frame)
        evaluation.update(result.labels, target, result.seen)
        timings.append(result.timings_ms)
    if not matched:
        raise SourceError(no_matching_labels(np.array(sorted(present)), vocabulary, "evaluate"))
    return evaluation, _mean_timings(timings)


def write_report(out: Path, evaluation: Evaluation, timings: dict, source: FrameSource, segmenter: Segmenter,
                 about: dict) -> Path:
    """evaluation.json, confusion matrices, per-class IoU bars and one rendered frame under out."""
    from .plots import confusion_matrix_png, iou_bars_png

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = out / "evaluation.json"
    report.write_text(json.dumps({**about, **evaluation.to_dict(), "mean_timings_ms": timings}, indent=2))
    confusion_matrix_png(evaluation, out / "confusion_all.png")
    confusion_matrix_png(evaluation, out / "confusion_in_view.png", in_view=True)
    iou_bars_png(evaluation, out / "iou.png")
    frame = source[0]
    save_png(out / "frame.png", picture(frame, segmenter.segment(frame), segmenter.vocabulary))
    return report


def _mean_timings(timings: list[dict]) -> dict:
    stages = sorted({stage for t in timings for stage in t})
    return {stage: float(np.mean([t.get(stage, 0.0) for t in timings])) for stage in stages}
