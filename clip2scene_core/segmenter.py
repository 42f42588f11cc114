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
    timings_ms: milliseconds per stage."""

    labels: np.ndarray
    scores: np.ndarray
    seen: np.ndarray
    timings_ms: dict[str, float] = field(default_factory=dict)

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
        self.set_vocabulary(vocabulary)

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
        if self.mode in ("student", "fusion"):
            with self._timed(timings, "student"):
                labels, scores = self.student.predict(frame)
        if self.mode in ("teacher", "fusion") and frame.cameras and n:
            with self._timed(timings, "teacher"):
                output = self.teacher.predict(frame.cameras)
            with self._timed(timings, "projection"):
                points = predict_points(output, frame.points, frame.cameras)
            seen = points.in_view  # evaluated as in view even where the teacher gives no label
            take = points.seen if self.mode == "teacher" else points.seen & (points.confidence > scores)
            labels, scores = labels.copy(), scores.copy()
            labels[take] = points.labels[take]
            scores[take] = points.confidence[take]
        elif frame.cameras and n:
            from .geometry import project
            for camera in frame.cameras:
                seen |= project(frame.points, camera).valid
        return Segmentation(labels, scores, seen, timings)
