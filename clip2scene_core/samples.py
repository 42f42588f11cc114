"""Training samples: a scan's points paired with the teacher's pixels, and the points its losses use.

For every scan: aggregate its sweeps into the keyframe's LiDAR frame with ego poses, project every
point into the keyframe's cameras and take the teacher's pseudo label and pixel feature there; drop
older-sweep points the keyframe's own points hide from that camera; take consolidated labels where
a label map is given; in the seen/unseen setting (MCFA), take the ground truth of points of seen classes and
the teacher's best unseen class elsewhere; choose the points of the losses (whole spatial-temporal groups, a
budget per sweep); augment.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UsageError
from .frame import Camera, Frame
from .geometry import aggregate_sweeps, project, transform_points, voxelize
from .teacher import Teacher, predict_points
from .vocabulary import IGNORE, class_mask

# An older sweep's point is hidden when a keyframe point within this angle of its pixel is nearer
# (about the beam spacing of a 32-beam LiDAR, wide enough to find a keyframe point near most pixels).
OCCLUSION_WINDOW_RAD = math.radians(0.5)
# Share of the chosen spatial-temporal groups held out of the losses: the student's agreement with the
# teacher on them tells when self-training may start.
HELD_OUT = 0.05


def seeded_rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in keys])


def augmentation(rng: np.random.Generator, rotation_deg: float = 180.0) -> np.ndarray:
    """A random (3, 3) rotation about z (within +-rotation_deg), flip of y and scale, as used for LiDAR training."""
    angle = np.radians(rotation_deg) * rng.uniform(-1, 1)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    flip = np.diag([1.0, -1.0 if rng.random() < 0.5 else 1.0, 1.0])
    return rotation @ flip * rng.uniform(0.95, 1.05)


@dataclass
class Pairing:
    """A scan's sweeps in the keyframe's LiDAR frame, with the teacher's view of them (no augmentation).

    points: (N, 3) float32 over all sweeps, keyframe first; sweep_index: (N,) int64; intensity: (N,) float32.
    labels: (N,) int64 pseudo labels, IGNORE where no camera pairs the point; confidence: (N,) float32;
    features: (N, D) pixel features (zeros where unpaired); camera: (N,) int64 camera each point is paired with
    (-1: none); image_embeddings: (K, D) the teacher's image-level embedding per camera, when asked for.
    """

    points: np.ndarray
    sweep_index: np.ndarray
    intensity: np.ndarray
    labels: np.ndarray
    confidence: np.ndarray
    features: torch.Tensor
    camera: np.ndarray
    image_embeddings: torch.Tensor | None = None

    @property
    def paired(self) -> np.ndarray:
        return self.labels != IGNORE


class PairingCache:
    """Pairings kept across epochs (they do not change: same frame, same frozen teacher), up to budget_mb.

    Every pairing handed out has passed through the cache's compact form, paired rows' features in float16,
    stored or not, so a run's numbers do not depend on what fitted (or on where a resumed run started).
    """

    def __init__(self, budget_mb: float):
        self.budget, self.used, self.items = budget_mb * 2**20, 0, {}

    def get(self, key, make) -> Pairing:
        """The pairing under key; make() builds it when it is not kept."""
        compact = self.items.get(key)
        if compact is None:
            pairing = make()
            rows = np.flatnonzero(pairing.labels != IGNORE)
            compact = (pairing, rows, pairing.features[torch.from_numpy(rows)].half(), pairing.features.shape[1])
            compact[0].features = None
            size = compact[2].nbytes + sum(a.nbytes for a in (pairing.points, pairing.labels, pairing.camera))
            if self.used + size <= self.budget:
                self.items[key], self.used = compact, self.used + size
        pairing, rows, features, dimensions = compact
        full = torch.zeros(len(pairing.labels), dimensions)
        full[torch.from_numpy(rows)] = features.float()
        return dataclasses.replace(pairing, features=full)


def occluded_in_keyframe(points: np.ndarray, sweep_index: np.ndarray, camera_of: np.ndarray,
                         cameras: list[Camera], tolerance: float) -> np.ndarray:
    """(N,) bool: older-sweep points (sweep_index > 0) that their camera cannot see past the keyframe.

    Per camera, the keyframe's own points give a sparse depth image, spread over OCCLUSION_WINDOW_RAD by
    taking the nearest depth in that window; an older point paired with the camera is hidden when it lies
    more than `tolerance` (a fraction of that depth) behind it. Where no keyframe point is near its pixel
    nothing can be told, and the point is kept.
    """
    hidden = np.zeros(len(points), bool)
    keyframe = points[sweep_index == 0]
    for index, camera in enumerate(cameras):
        older = np.flatnonzero((sweep_index > 0) & (camera_of == index))
        if len(older) == 0 or len(keyframe) == 0:
            continue
        mine = project(keyframe, camera)
        rows, cols = mine.pixels[mine.valid].T
        flat = torch.full((camera.height * camera.width,), float("inf"))
        flat = flat.scatter_reduce(0, torch.from_numpy(rows * camera.width + cols),
                                   torch.from_numpy(mine.depth[mine.valid]), reduce="amin")
        radius = max(1, round(float(camera.intrinsics[1, 1]) * math.tan(OCCLUSION_WINDOW_RAD)))
        nearest = -F.max_pool2d(-flat.view(1, 1, camera.height, camera.width), 2 * radius + 1, stride=1,
                                padding=radius)[0, 0].numpy()
        theirs = project(points[older], camera)
        r, c = np.clip(theirs.pixels, 0, [camera.height - 1, camera.width - 1]).T
        hidden[older] = theirs.depth > nearest[r, c] * (1 + tolerance)
    return hidden


def pair_frame(frame: Frame, teacher: Teacher, sweeps: int, occlusion_tolerance: float | None,
               image_embeddings: bool = False) -> Pairing:
    """The frame and up to sweeps - 1 older sweeps, paired with the teacher's predictions in the frame's
    cameras; older-sweep points hidden in the keyframe's view are left unpaired (occlusion_tolerance None:
    no test); with the teacher's image-level embedding of each camera when asked for."""
    aggregate = aggregate_sweeps(frame, sweeps)
    used = ([frame] + list(frame.sweeps))[:sweeps]
    intensity = np.concatenate([s.fields.get("intensity", np.zeros(len(s), np.float32)).astype(np.float32)
                                for s in used])
    points, sweep_index = aggregate.points, aggregate.sweep_index
    if not frame.cameras:
        n = len(points)
        dimensions = teacher.text_embeddings.shape[1]
        return Pairing(points, sweep_index, intensity, np.full(n, IGNORE, np.int64), np.zeros(n, np.float32),
                       torch.zeros(n, dimensions), np.full(n, -1, np.int64),
                       torch.zeros(0, dimensions) if image_embeddings else None)
    output = teacher.predict(frame.cameras)
    pairs = predict_points(output, points, frame.cameras, with_features=True)
    labels, camera = pairs.labels, pairs.camera
    if occlusion_tolerance is not None and len(used) > 1:
        hidden = occluded_in_keyframe(points, sweep_index, pairs.camera, frame.cameras, occlusion_tolerance)
        labels, camera = np.where(hidden, IGNORE, labels), np.where(hidden, -1, camera)
    return Pairing(points, sweep_index, intensity, labels, pairs.confidence, pairs.features, camera,
                   output.image_embeddings() if image_embeddings else None)


def seen_unseen_labels(frame: Frame, pairing: Pairing, labels: np.ndarray, seen: np.ndarray,
                       teacher: Teacher) -> np.ndarray:
    """(N,) training labels in the seen/unseen setting: the ground truth where it names a seen class; where it
    names another class (or none: the class is not annotated), the unseen class whose text embedding is nearest
    the point's pixel feature (the teacher's pseudo label among the unseen classes), IGNORE if unpaired. Points
    of older sweeps without labels keep the teacher's label.

    labels: (N,) the pseudo labels so far; seen: (C,) bool over the teacher's vocabulary.
    """
    if frame.labels is None:
        raise UsageError(f"frame {frame.name!r} has no per-point labels: train.seen_classes (--seen-classes) "
                         f"trains seen classes from ground truth; use a labelled source or no seen classes")
    sweeps = ([frame] + list(frame.sweeps))[:int(pairing.sweep_index.max(initial=0)) + 1]
    to_class, text = teacher.vocabulary.raw_to_class, teacher.text_embeddings
    truth = np.concatenate([to_class(s.labels) if s.labels is not None else np.full(len(s), -2, np.int64)
                            for s in sweeps])
    known = truth != -2                                  # -2: an older sweep without labels
    result = np.where(known, IGNORE, labels)
    unseen = np.flatnonzero(~seen)
    if len(unseen):
        paired = np.flatnonzero(pairing.paired & known)
        nearest = (pairing.features[torch.from_numpy(paired)] @ text[torch.from_numpy(unseen)].T).argmax(1)
        result[paired] = unseen[nearest.numpy()]
    is_seen = known & (truth >= 0) & seen[np.clip(truth, 0, None)]
    result[is_seen] = truth[is_seen]
    return result


def sample_groups(groups: np.ndarray, sweep_index: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """(M,) bool: whole groups, in random order, while every sweep stays within `cap` points (0: all).

    A group is taken unless one of the sweeps it has points of has already used its budget by then, so
    a group is never split and every sweep has a budget of its own.
    """
    if cap <= 0 or len(groups) == 0:
        return np.ones(len(groups), bool)
    num_groups = int(groups.max()) + 1
    order = rng.permutation(num_groups)
    rejected = np.zeros(num_groups, bool)
    for sweep in np.unique(sweep_index):
        members = np.bincount(groups[sweep_index == sweep], minlength=num_groups)[order]
        rejected[order[(np.cumsum(members) > cap) & (members > 0)]] = True
    return ~rejected[groups]


def sample_points(candidates: np.ndarray, sweep_index: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """At most `cap` of the candidate indices per sweep (0: all), sorted."""
    if cap <= 0:
        return candidates
    chosen = []
    for sweep in np.unique(sweep_index[candidates]):
        mine = candidates[sweep_index[candidates] == sweep]
        chosen.append(mine if len(mine) <= cap else rng.choice(mine, cap, replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else candidates


@dataclass
class Sample:
    """One scan ready for the student.

    points / intensity: per sweep, (N_k, 3) float32 in the (augmented) keyframe LiDAR frame.
    index: (M,) indices, into the sweeps' points concatenated, of the points the losses use.
    labels: (M,) pseudo labels (the teacher's, or the consolidated label map's), IGNORE for points with
        none (candidates for self-training).
    teacher_labels: (M,) the teacher's own pseudo labels, IGNORE where unpaired.
    paired: (M,) bool, a camera pairs the point (pixel_features and groups are meaningful).
    pixel_features: (M, D); groups: (M,) spatial-temporal group, -1 where unpaired.
    held_out: (M,) bool, paired points kept out of the losses to measure agreement with the teacher.
    truth: (N_0,) raw labels of the keyframe points when the source has them (monitoring only).
    camera: (M,) the keyframe camera a point is paired with (-1: none); image_embeddings: (K, D) the teacher's
        image-level embedding of each of the K cameras (global alignment), None when not asked for.
    """

    points: list[np.ndarray]
    intensity: list[np.ndarray]
    index: np.ndarray
    labels: np.ndarray
    teacher_labels: np.ndarray
    paired: np.ndarray
    pixel_features: torch.Tensor
    groups: np.ndarray
    held_out: np.ndarray
    truth: np.ndarray | None
    camera: np.ndarray | None = None
    image_embeddings: torch.Tensor | None = None


def prepare_sample(frame: Frame, teacher: Teacher, config, rng: np.random.Generator, label_map=None,
                   candidates: bool = False, pairing: Pairing | None = None) -> Sample:
    """Pair (unless the frame's pairing is given), consolidate, choose the loss points and augment (see the module
    docstring).

    config: a TrainConfig. label_map: this frame's drive's consolidated labels (a consolidation.LabelMap)
    or None. candidates: also choose up to max_paired unlabelled points per sweep (self-training).
    """
    if pairing is None:
        pairing = pair_frame(frame, teacher, config.sweeps, config.occlusion_tolerance, config.global_weight > 0)
    points, sweep_index = pairing.points, pairing.sweep_index
    labels = pairing.labels
    if label_map is not None:
        voted = label_map.lookup(transform_points(frame.lidar_pose, points))
        labels = np.where(voted != IGNORE, voted, labels)
    if config.seen_classes:
        seen = class_mask(teacher.vocabulary, config.seen_classes, "train.seen_classes")
        labels = seen_unseen_labels(frame, pairing, labels, seen, teacher)
    paired = np.flatnonzero(pairing.paired)
    groups = np.zeros(0, np.int64)
    if len(paired):
        groups = voxelize(points[paired], config.st_grid_m).point_to_voxel.numpy()
        keep = sample_groups(groups, sweep_index[paired], config.max_paired, rng)
        paired, groups = paired[keep], np.unique(groups[keep], return_inverse=True)[1].reshape(-1)
    held_out = np.zeros(len(paired), bool)
    if len(paired):
        held_out = rng.random(int(groups.max()) + 1)[groups] < HELD_OUT
    voted_only = sample_points(np.flatnonzero((labels != IGNORE) & ~pairing.paired), sweep_index,
                               config.max_paired, rng)
    unlabelled = sample_points(np.flatnonzero(labels == IGNORE), sweep_index, config.max_paired, rng) \
        if candidates else np.zeros(0, np.int64)
    index = np.concatenate([paired, voted_only, unlabelled])
    extra = len(voted_only) + len(unlabelled)
    is_paired = np.concatenate([np.ones(len(paired), bool), np.zeros(extra, bool)])
    features = torch.zeros(len(index), pairing.features.shape[1])
    features[:len(paired)] = pairing.features[torch.from_numpy(paired)]
    if config.augment:
        points = (points @ augmentation(rng, config.rotation_deg).T).astype(np.float32)
    sweeps = min(config.sweeps, 1 + len(frame.sweeps))
    split = np.cumsum(np.bincount(sweep_index, minlength=sweeps))[:-1]
    return Sample(points=np.split(points, split), intensity=np.split(pairing.intensity, split), index=index,
                  labels=labels[index], teacher_labels=pairing.labels[index], paired=is_paired,
                  pixel_features=features, groups=np.concatenate([groups, np.full(extra, -1, np.int64)]),
                  held_out=np.concatenate([held_out, np.zeros(extra, bool)]), truth=frame.labels,
                  camera=pairing.camera[index], image_embeddings=pairing.image_embeddings)
