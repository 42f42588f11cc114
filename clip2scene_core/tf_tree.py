"""A small transform tree: static and time-stamped transforms between named frames, chains resolved.

tf2 is not installable from PyPI, and bags and calibration files both need chains of transforms
(lidar -> base_link -> camera), so this module does the part of tf2 we need.
A transform added as (parent, child, T) maps child-frame points into the parent frame (ROS's
convention for geometry_msgs/TransformStamped).
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

from .geometry import invert
from .messages import matrix_to_quaternion, stamp_to_ns, transform_to_matrix


class TransformError(LookupError):
    """No chain of transforms connects two frames (or not at the time asked)."""


def _quaternion_to_rotation(q: np.ndarray) -> np.ndarray:
    x, y, z, w = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


class _Track:
    """Time-stamped transforms of one parent/child pair, interpolated linearly (translation)
    and by normalised lerp (rotation, fine between the close samples of a tf stream)."""

    def __init__(self):
        self.stamps: list[int] = []
        self.translations: list[np.ndarray] = []
        self.quaternions: list[np.ndarray] = []
        self._sorted = True

    def add(self, stamp_ns: int, T: np.ndarray) -> None:
        q = np.asarray(matrix_to_quaternion(T))
        if self.quaternions and np.dot(q, self.quaternions[-1]) < 0:
            q = -q  # keep neighbouring quaternions in one hemisphere so that lerp takes the short way
        if self.stamps and stamp_ns < self.stamps[-1]:
            self._sorted = False
        self.stamps.append(int(stamp_ns))
        self.translations.append(np.asarray(T[:3, 3], dtype=np.float64))
        self.quaternions.append(q)

    def keep_after(self, oldest_ns: int) -> None:
        """Forget the samples before oldest_ns (a live buffer's horizon); the newest one always stays."""
        cut = min(int(np.searchsorted(self.stamps, oldest_ns)), len(self.stamps) - 1) if self._sorted else 0
        if cut > 0:
            self.stamps, self.translations, self.quaternions = (self.stamps[cut:], self.translations[cut:],
                                                                self.quaternions[cut:])

    def at(self, stamp_ns: int, tolerance_ns: int) -> np.ndarray:
        if not self._sorted:
            order = np.argsort(self.stamps, kind="stable")
            self.stamps = [self.stamps[i] for i in order]
            self.translations = [self.translations[i] for i in order]
            self.quaternions = [self.quaternions[i] for i in order]
            self._sorted = True
        stamps = self.stamps
        i = int(np.searchsorted(stamps, stamp_ns))
        if i == 0 or i == len(stamps):
            nearest = 0 if i == 0 else len(stamps) - 1
            if abs(stamps[nearest] - stamp_ns) > tolerance_ns:
                raise TransformError(f"no transform within {tolerance_ns * 1e-9:.3f} s of t={stamp_ns * 1e-9:.3f} s "
                                     f"(transforms cover {stamps[0] * 1e-9:.3f} to {stamps[-1] * 1e-9:.3f} s)")
            translation, q = self.translations[nearest], self.quaternions[nearest]
        else:
            a = (stamp_ns - stamps[i - 1]) / max(stamps[i] - stamps[i - 1], 1)
            translation = (1 - a) * self.translations[i - 1] + a * self.translations[i]
            q = (1 - a) * self.quaternions[i - 1] + a * self.quaternions[i]
        T = np.eye(4)
        T[:3, :3] = _quaternion_to_rotation(q)
        T[:3, 3] = translation
        return T


class TransformTree:
    """Frames connected by static and time-stamped transforms.

    tolerance_ns: how far before the first or after the last sample of a time-stamped transform
    a lookup may still use that sample.
    buffer_ns: with it (a live tree), each time-stamped transform keeps only that much history before its
    newest sample, as tf2's buffer does; None keeps everything (a recording).
    Lookups and additions may come from different threads (a node's executor adds, its worker looks up).
    """

    def __init__(self, tolerance_ns: int = 500_000_000, buffer_ns: int | None = None):
        self.tolerance_ns, self.buffer_ns = tolerance_ns, buffer_ns
        self.static: dict[tuple[str, str], np.ndarray] = {}
        self.dynamic: dict[tuple[str, str], _Track] = {}
        self.parent: dict[str, str] = {}
        self._lock = threading.RLock()

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.RLock())

    def add_static(self, parent: str, child: str, T: np.ndarray) -> None:
        with self._lock:
            self.static[(parent, child)] = np.asarray(T, dtype=np.float64)
            self.parent[child] = parent

    def add_dynamic(self, parent: str, child: str, stamp_ns: int, T: np.ndarray) -> None:
        with self._lock:
            track = self.dynamic.setdefault((parent, child), _Track())
            track.add(stamp_ns, np.asarray(T, dtype=np.float64))
            self.parent.setdefault(child, parent)
            if self.buffer_ns is not None:
                track.keep_after(track.stamps[-1] - self.buffer_ns)

    @property
    def frames(self) -> set[str]:
        return {frame for edge in list(self.static) + list(self.dynamic) for frame in edge}

    def has_dynamic(self) -> bool:
        return bool(self.dynamic)

    def root(self, frame: str, static_only: bool = False) -> str:
        """The topmost ancestor of frame (through static transforms only, if asked)."""
        seen = {frame}
        while frame in self.parent:
            parent = self.parent[frame]
            if static_only and (parent, frame) not in self.static:
                break
            if parent in seen:
                raise TransformError(f"transforms form a cycle through {parent!r}")
            seen.add(parent)
            frame = parent
        return frame

    def _edge(self, parent: str, child: str, stamp_ns: int | None) -> np.ndarray:
        if (parent, child) in self.static:
            return self.static[(parent, child)]
        if stamp_ns is None:
            raise TransformError(f"{parent!r} -> {child!r} changes over time; a stamp is needed")
        try:
            return self.dynamic[(parent, child)].at(stamp_ns, self.tolerance_ns)
        except TransformError as error:
            raise TransformError(f"{parent!r} -> {child!r}: {error}") from None

    def lookup(self, target: str, source: str, stamp_ns: int | None = None) -> np.ndarray:
        """(4, 4) mapping source-frame points into the target frame (at stamp_ns for moving links)."""
        with self._lock:
            return self._lookup(target, source, stamp_ns)

    def _lookup(self, target: str, source: str, stamp_ns: int | None) -> np.ndarray:
        if target == source:
            return np.eye(4)
        neighbours: dict[str, list[tuple[str, str, str]]] = {}
        for parent, child in list(self.static) + list(self.dynamic):
            neighbours.setdefault(parent, []).append((child, parent, child))
            neighbours.setdefault(child, []).append((parent, parent, child))
        # Breadth-first search from source; each step remembers the edge it came through.
        came_from: dict[str, tuple[str, str, str] | None] = {source: None}
        queue = deque([source])
        while queue and target not in came_from:
            frame = queue.popleft()
            for other, parent, child in neighbours.get(frame, []):
                if other not in came_from:
                    came_from[other] = (frame, parent, child)
                    queue.append(other)
        if target not in came_from:
            known = sorted(self.frames)
            raise TransformError(f"no transform chain from {source!r} to {target!r}; known frames: {known}")
        T = np.eye(4)
        frame = target
        while came_from[frame] is not None:
            previous, parent, child = came_from[frame]
            edge = self._edge(parent, child, stamp_ns)  # child -> parent
            step = edge if (parent, child) == (frame, previous) else invert(edge)
            T = T @ step
            frame = previous
        return T


def add_tf_message(tree: TransformTree, msg, static: bool) -> None:
    """Every transform of a tf2_msgs/TFMessage (/tf_static when static, else /tf) into tree."""
    for t in msg.transforms:
        T = transform_to_matrix(t.transform.translation, t.transform.rotation)
        if static:
            tree.add_static(t.header.frame_id, t.child_frame_id, T)
        else:
            tree.add_dynamic(t.header.frame_id, t.child_frame_id, stamp_to_ns(t.header.stamp), T)


def camera_from_lidar(extrinsics: TransformTree, camera_frame: str, camera_stamp_ns: int, lidar_frame: str,
                      lidar_stamp_ns: int, motion: TransformTree | None = None) -> np.ndarray:
    """(4, 4) LiDAR points at the sweep's stamp -> the camera's frame at the image's stamp.

    The mounts come from extrinsics' static transforms up to the vehicle frame (the LiDAR frame's topmost static
    ancestor); where motion (default: extrinsics itself) moves that frame in a world frame (/tf: odom ->
    base_link), the vehicle's motion between the two stamps is folded in, as the bag reader does. A stamp outside
    the buffered motion is a TransformError naming the frames and the times covered.
    """
    ego = extrinsics.root(lidar_frame, static_only=True) if lidar_frame in extrinsics.frames else lidar_frame
    lidar_to_ego = extrinsics.lookup(ego, lidar_frame)
    camera_to_ego = extrinsics.lookup(ego, camera_frame)
    motion = extrinsics if motion is None else motion
    world = motion.root(ego) if ego in motion.frames else ego
    if world == ego or camera_stamp_ns == lidar_stamp_ns:
        return invert(camera_to_ego) @ lidar_to_ego
    moved = invert(motion.lookup(world, ego, camera_stamp_ns)) @ motion.lookup(world, ego, lidar_stamp_ns)
    return invert(camera_to_ego) @ moved @ lidar_to_ego
