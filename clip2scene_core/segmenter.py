"""The run-time segmenter: one frame in, a label and a score per point out, in any of three modes.

The ROS node, the replay, `clip2scene segment` and `clip2scene evaluate` all go through this class,
so live and offline results cannot disagree.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UsageError
from .frame import Frame
from .teacher import Teacher, predict_points
from .vocabulary import IGNORE, Vocabulary

MODES = ("student", "teacher", "fusion")


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda when available, else cpu; "cpu", "cuda" or "cuda:N" as given, when it exists."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UsageError(f"device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} was asked for, but torch sees no CUDA GPU; use device auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"device {name!r}: torch sees {torch.cuda.device_count()} CUDA GPU(s), numbered from 0")
    return device


@dataclass
class Segmentation:
    """labels: (N,) int64 class index (IGNORE where no mode could label the point);
    scores: (N,) float32 confidence in [0, 1]; seen: (N,) bool, inside some camera's image (in every mode);
    timings_ms: milliseconds per stage;
    similarity: with a query set, (N,) float32 cosine between each point's feature and the query text's
    embedding, in [-1, 1]; NaN where the point has no feature (teacher mode: no camera sees it); else None."""

    labels: np.ndarray
    scores: np.ndarray
    seen: np.ndarray
    timings_ms: dict[str, float] = field(default_factory=dict)
    similarity: np.ndarray | None = None

    def counts(self, num_classes: int) -> np.ndarray:
        return np.bincount(self.labels[self.labels != IGNORE], minlength=num_classes)


class Segmenter:
    """mode "teacher": the teacher's pixels projected onto points (no training; cameras needed);
    "student": the LiDAR network alone (360 degrees); "fusion": the student everywhere, replaced by the
    teacher where a camera sees the point and the teacher is more confident."""

    def __init__(self, vocabulary: Vocabulary, mode: str, teacher: Teacher | None = None, student=None):
        if mode not in MODES:
            raise UsageError(f"mode must be one of {MODES}, got {mode!r}")
        if mode in ("teacher", "fusion") and teacher is None:
            raise UsageError(f"mode {mode!r} needs a teacher")
        if mode in ("student", "fusion") and student is None:
            raise UsageError(f"mode {mode!r} needs a student checkpoint")
        self.mode, self.teacher, self.student = mode, teacher, student
        self.query, self.query_embedding = "", None
        self.set_vocabulary(vocabulary)

    def set_query(self, text: str) -> None:
        """A text (any, in or out of the vocabulary) that every point is scored against, through the same
        prompt templates as the classes; "" for none."""
        text = text.strip()
        if not text:
            self.query, self.query_embedding = "", None
            return
        encoder = (self.student if self.student is not None else self.teacher).text_encoder
        self.query_embedding = F.normalize(encoder.embed(Vocabulary.from_names([text], "query"))[0].float(), dim=0)
        self.query = text

    def set_vocabulary(self, vocabulary: Vocabulary) -> None:
        """Switch the classes; text embeddings are recomputed (cached on disk for CLIP)."""
        if self.teacher is not None:
            self.teacher.set_vocabulary(vocabulary)
        if self.student is not None:
            self.student.set_vocabulary(vocabulary)
        self.vocabulary = vocabulary

    @contextmanager
    def _timed(self, timings: dict, stage: str):
        start = time.perf_counter()
        yield
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        timings[stage] = timings.get(stage, 0.0) + (time.perf_counter() - start) * 1e3

    def segment(self, frame: Frame) -> Segmentation:
        timings: dict[str, float] = {}
        n = len(frame)
        labels, scores = np.full(n, IGNORE, np.int64), np.zeros(n, np.float32)
        seen = np.zeros(n, bool)
        query = self.query_embedding
        similarity = np.full(n, np.nan, np.float32) if query is not None else None
        if self.mode in ("student", "fusion") and n:
            with self._timed(timings, "student"):
                labels, scores, similarity = self.student.infer(frame, query)  # similarity: None without query
        if self.mode in ("teacher", "fusion") and frame.cameras and n:
            with self._timed(timings, "teacher"):
                output = self.teacher.predict(frame.cameras)
            with self._timed(timings, "projection"):
                points = predict_points(output, frame.points, frame.cameras, with_features=query is not None)
            seen = points.in_view  # evaluated as in view even where the teacher gives no label
            take = points.seen if self.mode == "teacher" else points.seen & (points.confidence > scores)
            labels, scores = labels.copy(), scores.copy()
            labels[take] = points.labels[take]
            scores[take] = points.confidence[take]
            if query is not None and take.any():
                similarity[take] = _cosine(points.features[torch.from_numpy(take)], query)
        elif frame.cameras and n:
            from .geometry import project
            for camera in frame.cameras:
                seen |= project(frame.points, camera).valid
        return Segmentation(labels, scores, seen, timings, similarity)


def _cosine(features: torch.Tensor, direction: torch.Tensor) -> np.ndarray:
    """(N,) float32 cosine of each feature row (N, D) with the unit vector direction (D,)."""
    features = F.normalize(features.float(), dim=1)
    return (features @ direction.to(features.device)).cpu().numpy().astype(np.float32)
