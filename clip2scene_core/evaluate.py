"""Running a segmenter over a data source: writing its labels and pictures, or scoring it against the
source's ground truth (annotation-free: the segmenter never saw a label)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .data import FrameSource, SourceError
from .errors import UsageError
from .metrics import Evaluation, NeighbourFill
from .objects import ObjectConfig, Objects, box_outline, detect_objects, thing_mask
from .render import birds_eye_view, mosaic, overlay, palette_colors, render_frame, save_png
from .segmenter import Segmentation, Segmenter
from .vocabulary import IGNORE, Vocabulary, class_mask, no_matching_labels

QUERY_COLOR, QUERY_OTHER_COLOR = (255, 0, 255), (90, 90, 90)


def segment_source(source: FrameSource, segmenter: Segmenter, out: Path, pictures: bool = True,
                   progress: bool = True, objects: ObjectConfig | None = None, query_threshold: float = 0.25) -> dict:
    """Write each frame's results under out and return the summary also written to out/segmentation.json.

    frames/NNNNNN.npz: labels int16, scores float16, seen bool; instances int32 (-1: no object) and the
    objects' boxes (LiDAR frame): box_centers (K, 3), box_sizes (K, 3) length/width/height, box_yaws (K,),
    box_classes (K,), box_scores (K,); with a query (segmenter.set_query) similarity float16 (NaN: no feature).
    pictures/NNNNNN.png: points coloured by class with the objects' boxes; NNNNNN_query.png the points above
    query_threshold (cosine) in magenta.
    """
    out = Path(out)
    (out / "frames").mkdir(parents=True, exist_ok=True)
    vocabulary = segmenter.vocabulary
    things = thing_mask(vocabulary)
    counts = np.zeros(len(vocabulary), np.int64)
    names, timings, objects_per_frame, query_points = [], [], [], []
    for index, frame in enumerate(tqdm(source, desc="segment", unit="frame", disable=not progress)):
        result = segmenter.segment(frame)
        found = _timed_objects(frame.points, result, things, objects)
        arrays = {"labels": result.labels.astype(np.int16), "scores": result.scores.astype(np.float16),
                  "seen": result.seen, **found.arrays()}
        if result.similarity is not None:
            arrays["similarity"] = result.similarity.astype(np.float16)
            query_points.append(int((result.similarity > query_threshold).sum()))
        np.savez_compressed(out / "frames" / f"{index:06d}.npz", **arrays)
        counts += result.counts(len(vocabulary))
        names.append(frame.name)
        timings.append(result.timings_ms)
        objects_per_frame.append(len(found.objects))
        if pictures:
            save_png(out / "pictures" / f"{index:06d}.png", picture(frame, result, vocabulary, found))
            if result.similarity is not None:
                save_png(out / "pictures" / f"{index:06d}_query.png",
                         query_picture(frame, result.similarity, query_threshold))
    summary = {"mode": segmenter.mode, "vocabulary": vocabulary.to_dict(), "frames": names,
               "points_per_class": dict(zip(vocabulary.names, counts.tolist())),
               "objects_per_frame": objects_per_frame, "mean_timings_ms": _mean_timings(timings)}
    if segmenter.query:
        summary["query"] = {"text": segmenter.query, "threshold": query_threshold, "points_per_frame": query_points}
    (out / "segmentation.json").write_text(json.dumps(summary, indent=2))
    return summary


def _timed_objects(points: np.ndarray, result: Segmentation, things: np.ndarray,
                   config: ObjectConfig | None) -> Objects:
    """detect_objects on a segmentation, its time added to result.timings_ms as stage "objects"."""
    start = time.perf_counter()
    found = detect_objects(points, result.labels, result.scores, things, config)
    result.timings_ms["objects"] = (time.perf_counter() - start) * 1e3
    return found


def _draw(frame, points: np.ndarray, colors: np.ndarray) -> np.ndarray:
    if not frame.cameras:
        return birds_eye_view(points, colors)
    return mosaic([overlay(camera, points, colors) for camera in frame.cameras])


def picture(frame, result: Segmentation, vocabulary: Vocabulary, found: Objects | None = None) -> np.ndarray:
    """The frame's points coloured by predicted class over its cameras (unlabelled points black), with the
    outlines of the objects' boxes in their class colour (white where the class colour is the points')."""
    palette = {**vocabulary.palette, IGNORE: (0, 0, 0)}
    if found is None or not found.objects:
        return render_frame(frame, color_by="label", palette=palette, values=result.labels)
    outlines = [box_outline(o.box) for o in found.objects]
    points = np.concatenate([frame.points, *outlines])
    colors = np.concatenate([palette_colors(result.labels, palette)]
                            + [np.full((len(line), 3), 255, np.uint8) for line in outlines])
    return _draw(frame, points, colors)


def query_picture(frame, similarity: np.ndarray, threshold: float) -> np.ndarray:
    """The frame's points: magenta above the query threshold, grey elsewhere."""
    colors = np.where((similarity > threshold)[:, None], np.array(QUERY_COLOR, np.uint8),
                      np.array(QUERY_OTHER_COLOR, np.uint8)).astype(np.uint8)
    return _draw(frame, frame.points, colors)


def evaluate_source(source: FrameSource, segmenter: Segmenter, progress: bool = True,
                    seen: list[str] | None = None,
                    fill: bool | NeighbourFill | None = None) -> tuple[Evaluation, dict]:
    """Per-class IoU and mIoU over all points (unlabelled = wrong) and over in-view points; with seen classes
    (names of the vocabulary), also seen mIoU, unseen mIoU and hIoU. fill (None: whenever the segmenter's mode is
    "teacher", whose projection labels only the points a camera sees): also over all points with each unlabelled
    point filled from its labelled neighbours in the sweep (metrics.fill_from_neighbours; Evaluation.filled),
    the fair baseline for a student that labels every point."""
    vocabulary = segmenter.vocabulary
    if not vocabulary.covers_ids:
        raise UsageError(f"vocabulary {vocabulary.name!r} lists no raw label ids: evaluation needs each class's "
                         f"'ids' in the dataset's labels")
    if len(source) == 0:
        raise SourceError("the source holds no frames to evaluate; check its path and its start/stop/step options")
    if seen:
        class_mask(vocabulary, seen, "seen classes")
    evaluation = Evaluation.empty(vocabulary.names, seen, fill=segmenter.mode == "teacher" if fill is None else fill)
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
        evaluation.update(result.labels, target, result.seen, frame.points)
        timings.append(result.timings_ms)
    if not matched:
        raise SourceError(no_matching_labels(np.array(sorted(present)), vocabulary, "evaluate"))
    return evaluation, _mean_timings(timings)


def write_report(out: Path, evaluation: Evaluation, timings: dict, source: FrameSource, segmenter: Segmenter,
                 about: dict) -> Path:
    """evaluation.json, confusion matrices (confusion_filled.png too when the evaluation has a neighbour-filled
    row), per-class IoU bars and one rendered frame under out."""
    from .plots import confusion_matrix_png, iou_bars_png

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = out / "evaluation.json"
    report.write_text(json.dumps({**about, **evaluation.to_dict(), "mean_timings_ms": timings}, indent=2))
    confusion_matrix_png(evaluation, out / "confusion_all.png")
    confusion_matrix_png(evaluation, out / "confusion_in_view.png", in_view=True)
    if evaluation.filled is not None:
        confusion_matrix_png(evaluation, out / "confusion_filled.png", filled=True)
    iou_bars_png(evaluation, out / "iou.png")
    frame = source[0]
    save_png(out / "frame.png", picture(frame, segmenter.segment(frame), segmenter.vocabulary))
    return report


def _mean_timings(timings: list[dict]) -> dict:
    stages = sorted({stage for t in timings for stage in t})
    return {stage: float(np.mean([t.get(stage, 0.0) for t in timings])) for stage in stages}
