"""Objects from labelled points: instances by Euclidean clustering per class, and an oriented 3D box for each.

Only the vocabulary's "thing" classes (`thing: true` in its YAML: vehicles, people, movable objects) become
objects; road, buildings and vegetation stay labelled points.

Clustering works on a voxel grid of edge `distance_m` per class: occupied voxels that touch (26-neighbourhood)
form one instance. Two points of a class closer than `distance_m` always end up in one instance; points farther
apart than 2 * sqrt(3) * distance_m are never joined directly. The work is one pass over the points to key them,
one sort of the voxel keys, 13 neighbour look-ups per voxel and label propagation with pointer jumping over the
voxel graph: no point-to-point distances, so it scales with the points, not their square.

Boxes: the heading is the ground-plane direction whose enclosing rectangle the instance's points hug most
closely (the L-shape criterion, see _closeness; for the L of a car's two visible sides this is the car's own
axis), searched over 0-90 degrees in 3 degree steps and refined to 0.05 degrees; the box spans the points'
extent along it and from their lowest to their highest z. Length is along the heading and never shorter than the width; yaw is in (-pi/2, pi/2].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .geometry import Box3D
from .vocabulary import IGNORE, Vocabulary

# The 13 neighbour offsets of a voxel's half 26-neighbourhood (the other 13 are their opposites).
_HALF_NEIGHBOURS = np.array([(dx, dy, dz) for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1)
                             if (dx, dy, dz) > (0, 0, 0)], dtype=np.int64)
_KEY_BITS = 20  # bits per voxel axis in a key: +-2^19 voxels, 52 km at 0.1 m


class ObjectsError(ValueError):
    """Arguments the clustering cannot work with; the message names the argument."""


@dataclass
class ObjectConfig:
    """distance_m: largest gap within one instance (the voxel edge), metres; min_points: smaller instances are
    dropped."""

    distance_m: float = 0.6
    min_points: int = 5

    def __post_init__(self) -> None:
        if not (isinstance(self.distance_m, (int, float)) and math.isfinite(self.distance_m) and self.distance_m > 0):
            raise ObjectsError(f"objects distance_m must be a positive number of metres, got {self.distance_m!r}")
        if isinstance(self.min_points, bool) or not isinstance(self.min_points, int) or self.min_points < 1:
            raise ObjectsError(f"objects min_points must be an integer >= 1, got {self.min_points!r}")


@dataclass
class DetectedObject:
    """One instance: its box, class index into the vocabulary, score (mean of its points' scores, 0-1),
    instance id (index into the segmentation's `instances`) and number of points."""

    box: Box3D
    class_index: int
    score: float
    instance: int
    num_points: int


@dataclass
class Objects:
    """instances: (N,) int64 per point, the index of its object in `objects`, -1 for points of no object."""

    instances: np.ndarray
    objects: list[DetectedObject] = field(default_factory=list)

    def arrays(self) -> dict[str, np.ndarray]:
        """instances int32 and the boxes as arrays: box_centers (K, 3), box_sizes (K, 3), box_yaws (K,),
        box_classes (K,), box_scores (K,)."""
        boxes = self.objects
        return {"instances": self.instances.astype(np.int32),
                "box_centers": np.array([o.box.center for o in boxes], np.float32).reshape(-1, 3),
                "box_sizes": np.array([o.box.size for o in boxes], np.float32).reshape(-1, 3),
                "box_yaws": np.array([o.box.yaw for o in boxes], np.float32),
                "box_classes": np.array([o.class_index for o in boxes], np.int64),
                "box_scores": np.array([o.score for o in boxes], np.float32)}


def cluster(points: np.ndarray, classes: np.ndarray, distance_m: float, min_points: int = 1) -> np.ndarray:
    """Euclidean clustering per class on a voxel grid.

    points: (N, 3) float; classes: (N,) int, points with a negative class are left out.
    Returns (N,) int64 instance ids 0..K-1 (ordered by first point), -1 for left-out points and instances
    smaller than min_points.
    """
    points = np.asarray(points)
    classes = np.asarray(classes)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ObjectsError(f"points must have shape (N, 3), got {points.shape}")
    if classes.shape != (len(points),):
        raise ObjectsError(f"classes must have shape ({len(points)},), got {classes.shape}")
    ObjectConfig(distance_m, min_points)
    instances = np.full(len(points), -1, np.int64)
    member = np.flatnonzero((classes >= 0) & np.isfinite(points).all(axis=1))
    if not member.size:
        return instances
    cells = np.floor(points[member] / distance_m).astype(np.int64)
    cells -= cells.min(axis=0)
    if cells.max() >= 1 << _KEY_BITS:
        raise ObjectsError(f"points span more than {1 << _KEY_BITS} voxels of {distance_m} m; crop the cloud or "
                           f"raise distance_m")
    keys = _keys(classes[member].astype(np.int64), cells)
    voxel_keys, voxel_of_point = np.unique(keys, return_inverse=True)
    voxel_cells = cells[np.unique(voxel_of_point, return_index=True)[1]]
    voxel_class = voxel_keys >> (3 * _KEY_BITS)
    parent = _components(voxel_keys, voxel_cells, voxel_class)
    # Instances renumbered in order of their first point; small ones dropped.
    roots, root_of_point = np.unique(parent[voxel_of_point], return_inverse=True)
    sizes = np.bincount(root_of_point, minlength=len(roots))
    first = np.full(len(roots), len(member))
    np.minimum.at(first, root_of_point, np.arange(len(member)))
    kept = sizes >= min_points
    order = np.argsort(np.where(kept, first, len(member) + 1), kind="stable")
    new_id = np.full(len(roots), -1, np.int64)
    new_id[order[:kept.sum()]] = np.arange(kept.sum())
    instances[member] = new_id[root_of_point]
    return instances


def _keys(classes: np.ndarray, cells: np.ndarray) -> np.ndarray:
    return (classes << (3 * _KEY_BITS)) | (cells[:, 0] << (2 * _KEY_BITS)) | (cells[:, 1] << _KEY_BITS) | cells[:, 2]


def _components(keys: np.ndarray, cells: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Connected components of touching voxels of one class: (V,) the smallest voxel index of each one's
    component. keys (V,) sorted and unique."""
    sources, targets = [], []
    limit = (1 << _KEY_BITS) - 1
    for offset in _HALF_NEIGHBOURS:
        neighbour = cells + offset
        inside = ((neighbour >= 0) & (neighbour <= limit)).all(axis=1)
        wanted = _keys(classes[inside], neighbour[inside])
        position = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
        found = keys[position] == wanted
        sources.append(np.flatnonzero(inside)[found])
        targets.append(position[found])
    a, b = np.concatenate(sources), np.concatenate(targets)
    label = np.arange(len(keys))
    while True:
        # Hook every edge's larger label onto its smaller one, then jump pointers to the roots.
        low = np.minimum(label[a], label[b])
        before = label.copy()
        np.minimum.at(label, label[a], low)
        np.minimum.at(label, label[b], low)
        while True:
            jumped = label[label]
            if np.array_equal(jumped, label):
                break
            label = jumped
        if np.array_equal(label, before):
            return label


def fit_box(points: np.ndarray) -> Box3D:
    """The oriented box of points (M, 3), M >= 1 (see the module docstring); one point gives a box of size 0."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or not len(points):
        raise ObjectsError(f"fit_box needs points of shape (M, 3) with M >= 1, got {points.shape}")
    xy = points[:, :2] - points[:, :2].mean(axis=0)
    yaw, step = 0.0, 3.0
    angles = np.radians(np.arange(0.0, 90.0, step))
    for finer in (0.25, 0.05):  # 3 degree steps, then 0.25 and 0.05 degree steps around the best
        yaw = float(angles[np.argmax(_closeness(xy, angles))])
        angles = yaw + np.radians(np.arange(-step, step + 1e-9, finer))
        step = finer
    yaw = float(angles[np.argmax(_closeness(xy, angles))])
    c, s = math.cos(yaw), math.sin(yaw)
    along, across = xy @ np.array([c, s]), xy @ np.array([-s, c])
    length, width = np.ptp(along), np.ptp(across)
    centre_along, centre_across = (along.max() + along.min()) / 2, (across.max() + across.min()) / 2
    if width > length:  # the heading runs along the longer side
        length, width, yaw = width, length, yaw + math.pi / 2
    yaw = math.atan2(math.sin(yaw), math.cos(yaw))
    if yaw <= -math.pi / 2 or yaw > math.pi / 2:
        yaw = math.atan2(-math.sin(yaw), -math.cos(yaw))
    centre_xy = points[:, :2].mean(axis=0) + centre_along * np.array([c, s]) + centre_across * np.array([-s, c])
    z_low, z_high = points[:, 2].min(), points[:, 2].max()
    return Box3D(np.array([centre_xy[0], centre_xy[1], (z_low + z_high) / 2]),
                 np.array([length, width, z_high - z_low]), yaw)


CLOSENESS_FLOOR_M = 0.01  # distances below this count as on the edge (the LiDAR's range noise)


def _closeness(xy: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """(A,) how close the points xy (M, 2) lie to the edges of their enclosing rectangle with sides along each
    angle: the sum over points of 1 / (distance to the nearest edge, at least CLOSENESS_FLOOR_M). A LiDAR sees
    an object's outline, so its rectangle is the one the points hug (the L-shape criterion of Zhang et al.,
    "Efficient L-Shape Fitting for Vehicle Detection Using Laser Scanners", IV 2017); the least-area rectangle
    is ambiguous where a roof's sparse points leave the corners empty."""
    along = xy @ np.stack([np.cos(angles), np.sin(angles)])
    across = xy @ np.stack([-np.sin(angles), np.cos(angles)])
    to_edge = np.minimum(np.minimum(along.max(axis=0) - along, along - along.min(axis=0)),
                         np.minimum(across.max(axis=0) - across, across - across.min(axis=0)))
    return (1.0 / np.maximum(to_edge, CLOSENESS_FLOOR_M)).sum(axis=0)


def thing_mask(vocabulary: Vocabulary) -> np.ndarray:
    """(C,) bool: which class indices are things."""
    return np.array([c.thing for c in vocabulary.classes], dtype=bool)


def detect_objects(points: np.ndarray, labels: np.ndarray, scores: np.ndarray, things: np.ndarray,
                   config: ObjectConfig | None = None) -> Objects:
    """Instances and boxes of the thing classes.

    points: (N, 3) float32, LiDAR frame; labels: (N,) int64 class index (IGNORE = -1 unlabelled);
    scores: (N,) float32 per-point confidence; things: (C,) bool per class index.
    """
    config = config or ObjectConfig()
    labels = np.asarray(labels, dtype=np.int64)
    things = np.asarray(things, dtype=bool)
    if labels.shape != (len(points),) or np.shape(scores) != (len(points),):
        raise ObjectsError(f"labels and scores must have one value per point ({len(points)}), got "
                           f"{labels.shape} and {np.shape(scores)}")
    known = (labels != IGNORE) & (labels < len(things))
    is_thing = np.zeros(len(labels), bool)
    is_thing[known] = things[labels[known]]
    instances = cluster(points, np.where(is_thing, labels, -1), config.distance_m, config.min_points)
    objects = []
    if (instances >= 0).any():
        order = np.argsort(instances, kind="stable")
        order = order[instances[order] >= 0]
        starts = np.flatnonzero(np.r_[True, np.diff(instances[order]) != 0])
        for members in np.split(order, starts[1:]):
            objects.append(DetectedObject(fit_box(points[members]), int(labels[members[0]]),
                                          float(np.mean(scores[members])), int(instances[members[0]]), len(members)))
    return Objects(instances, objects)


def box_outline(box: Box3D, per_edge: int = 40) -> np.ndarray:
    """(12 * per_edge, 3) points along the box's 12 edges, for drawing it with the points."""
    c, s = math.cos(box.yaw), math.sin(box.yaw)
    signs = np.array([(x, y, z) for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
    corners = signs * box.size / 2
    corners = corners @ np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]]) + box.center
    edges = [(i, j) for i in range(8) for j in range(i + 1, 8) if np.abs(signs[i] - signs[j]).sum() == 2]
    t = np.linspace(0, 1, per_edge)[:, None]
    return np.concatenate([corners[i] + t * (corners[j] - corners[i]) for i, j in edges]).astype(np.float32)
