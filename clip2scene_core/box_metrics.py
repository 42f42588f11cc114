"""Box quality: oriented-box IoU (3D and bird's-eye view) and precision/recall per class at an IoU threshold."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .geometry import Box3D


def _clip(subject: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The part of convex polygon subject (K, 2) left of the directed line a -> b (Sutherland-Hodgman step)."""
    if not len(subject):
        return subject

    def side(p):
        return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])

    out = []
    for i in range(len(subject)):
        current, following = subject[i], subject[(i + 1) % len(subject)]
        s_cur, s_next = side(current), side(following)
        if s_cur >= 0:
            out.append(current)
        if (s_cur >= 0) != (s_next >= 0):
            t = s_cur / (s_cur - s_next)
            out.append(current + t * (following - current))
    return np.array(out).reshape(-1, 2)


def _polygon_area(polygon: np.ndarray) -> float:
    if len(polygon) < 3:
        return 0.0
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def bev_intersection(a: Box3D, b: Box3D) -> float:
    """Ground-plane area (m^2) common to two oriented boxes."""
    polygon = a.corners_bev()
    clipper = b.corners_bev()
    for i in range(4):
        polygon = _clip(polygon, clipper[i], clipper[(i + 1) % 4])
    return _polygon_area(polygon)


def box_iou(a: Box3D, b: Box3D, bev: bool = False) -> float:
    """Intersection over union of two oriented boxes, in 3D (default) or in the ground plane."""
    overlap = bev_intersection(a, b)
    area_a, area_b = float(a.size[0] * a.size[1]), float(b.size[0] * b.size[1])
    if bev:
        union = area_a + area_b - overlap
        return overlap / union if union > 0 else 0.0
    low = max(a.center[2] - a.size[2] / 2, b.center[2] - b.size[2] / 2)
    high = min(a.center[2] + a.size[2] / 2, b.center[2] + b.size[2] / 2)
    common = overlap * max(0.0, high - low)
    union = area_a * a.size[2] + area_b * b.size[2] - common
    return common / union if union > 0 else 0.0


@dataclass
class MatchCounts:
    """Per class: true positives, detections and ground-truth objects; add frames up with `add`."""

    true_positives: int = 0
    detections: int = 0
    ground_truth: int = 0

    def add(self, other: MatchCounts) -> None:
        self.true_positives += other.true_positives
        self.detections += other.detections
        self.ground_truth += other.ground_truth

    @property
    def precision(self) -> float:
        return self.true_positives / self.detections if self.detections else float("nan")

    @property
    def recall(self) -> float:
        return self.true_positives / self.ground_truth if self.ground_truth else float("nan")


def match(detections: list[tuple[Box3D, float]], truth: list[Box3D], threshold: float = 0.5,
          bev: bool = False, center_distance_m: float | None = None) -> MatchCounts:
    """Greedy matching of one class's detections (box, score), highest score first, each to the unmatched
    ground-truth box it overlaps most with IoU >= threshold (as in the KITTI evaluation); with
    center_distance_m, to the nearest one whose centre is at most that far in the ground plane instead (as in
    the nuScenes detection benchmark, which uses 0.5, 1, 2 and 4 m)."""
    def affinity(box: Box3D, other: Box3D) -> float:
        if center_distance_m is not None:
            return -float(np.hypot(*(box.center[:2] - other.center[:2])))
        return box_iou(box, other, bev)

    needed = -center_distance_m if center_distance_m is not None else threshold
    taken = np.zeros(len(truth), bool)
    hits = 0
    for box, _ in sorted(detections, key=lambda d: -d[1]):
        values = np.array([affinity(box, t) if not taken[i] else -np.inf for i, t in enumerate(truth)])
        if len(values) and values.max() >= needed:
            taken[int(values.argmax())] = True
            hits += 1
    return MatchCounts(hits, len(detections), len(truth))
