"""Label consolidation: pseudo labels voted across frames, sweeps and cameras in a world-frame voxel map.

The 3D world is consistent where each 2D view errs (CNS and LOSC gain most from this): every frame of a
drive votes, with the ego poses, for the class of each world voxel its paired points fall in. A frame
gives each voxel one vote, split over the classes its points there carry, so a view that sees a voxel
with many points does not outvote the others. Afterwards a point takes the majority label of its voxel
where at least `min_views` frames voted there, paired or not: a point no camera sees in its own frame
gets the label other frames gave its place.
"""

from __future__ import annotations

import logging

import numpy as np

from .errors import UsageError
from .vocabulary import IGNORE

log = logging.getLogger(__name__)

_BITS = 21                  # per axis in a voxel key: +-2^20 voxels, 262 km at 0.25 m
_OFFSET = 1 << (_BITS - 1)


def voxel_keys(points: np.ndarray, voxel_m: float) -> np.ndarray:
    """(N,) int64 key of the world voxel each (N, 3) world point falls in."""
    cells = np.floor(np.asarray(points, np.float64) / voxel_m).astype(np.int64) + _OFFSET
    if len(cells) and (cells.min() < 0 or cells.max() >= 1 << _BITS):
        raise UsageError(f"world points beyond +-{_OFFSET * voxel_m / 1000:.0f} km of the origin cannot be "
                         f"consolidated at {voxel_m} m voxels; use train.consolidation_voxel_m larger")
    return (cells[:, 0] << (2 * _BITS)) | (cells[:, 1] << _BITS) | cells[:, 2]


class LabelMap:
    """The consolidated labels of one drive: world voxel -> majority class. add() every frame, then finish()."""

    def __init__(self, voxel_m: float, num_classes: int, min_views: int = 2):
        self.voxel_m, self.num_classes, self.min_views = voxel_m, num_classes, min_views
        self._votes: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # per frame: voxel keys, classes, weights
        self.keys = np.zeros(0, np.int64)
        self.labels = np.zeros(0, np.int64)
        self.views = np.zeros(0, np.float32)

    def add(self, world_points: np.ndarray, labels: np.ndarray) -> None:
        """One frame's votes: (N, 3) world points and their pseudo labels (IGNORE ones do not vote)."""
        voted = labels != IGNORE
        if not voted.any():
            return
        voxels, inverse = np.unique(voxel_keys(world_points[voted], self.voxel_m), return_inverse=True)
        inverse = inverse.reshape(-1)
        pairs, counts = np.unique(inverse * self.num_classes + labels[voted], return_counts=True)
        voxel, label = pairs // self.num_classes, pairs % self.num_classes
        points_in_voxel = np.bincount(inverse, minlength=len(voxels))
        self._votes.append((voxels[voxel], label, (counts / points_in_voxel[voxel]).astype(np.float32)))

    def finish(self) -> LabelMap:
        """Count the votes: the majority class of every voxel and how many frames voted there."""
        if not self._votes:
            return self
        voxels = np.concatenate([v[0] for v in self._votes])
        classes = np.concatenate([v[1] for v in self._votes])
        weights = np.concatenate([v[2] for v in self._votes])
        self._votes = []
        self.keys, inverse = np.unique(voxels, return_inverse=True)
        inverse = inverse.reshape(-1)
        histogram = np.zeros((len(self.keys), self.num_classes), np.float32)
        np.add.at(histogram, (inverse, classes), weights)
        self.labels = histogram.argmax(1)
        self.views = histogram.sum(1)
        return self

    def lookup(self, world_points: np.ndarray) -> np.ndarray:
        """(N,) consolidated label of each world point, IGNORE where fewer than min_views frames voted."""
        if len(self.keys) == 0:
            return np.full(len(world_points), IGNORE, np.int64)
        keys = voxel_keys(world_points, self.voxel_m)
        position = np.clip(np.searchsorted(self.keys, keys), 0, len(self.keys) - 1)
        found = (self.keys[position] == keys) & (self.views[position] >= self.min_views - 1e-6)
        return np.where(found, self.labels[position], IGNORE)


def drive_of(frame) -> str:
    """Frames of one drive share a world frame; readers name frames DRIVE/INDEX (a scene, a sequence, a bag)."""
    return frame.name.rpartition("/")[0]
