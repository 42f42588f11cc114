"""Approximate-time pairing of LiDAR sweeps with camera images: one synchroniser for live topics,
bag reading and replay, so all three pair the same way.

Each LiDAR sweep is paired with, per camera, the image whose (offset-corrected) stamp is nearest to
the sweep's stamp, if within `slop`. A sweep is released as soon as every camera's nearest image is
certain (an image at or after the sweep's stamp has arrived, so no later one can be nearer), or
when `timeout` has passed since the sweep arrived: then it goes with the cameras that have a match
so far. Sweeps are released in arrival order. Images may pair with more than one sweep (a camera
slower than the LiDAR). Stamps jumping backwards (a looping bag, a restarted simulation) release
what is pending and start afresh.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SyncGroup:
    """A LiDAR sweep and the images paired with it.

    cameras: camera name -> the item given with the image, for cameras matched within the slop.
    camera_stamps_ns: the matched images' stamps as received (before offsets).
    missing: cameras without an image within the slop.
    timed_out: released by the timeout (or at the end of a stream) rather than with every camera decided.
    """

    stamp_ns: int
    lidar: Any
    cameras: dict[str, Any] = field(default_factory=dict)
    camera_stamps_ns: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    timed_out: bool = False


@dataclass
class SyncStats:
    released: int = 0
    complete: int = 0
    partial: int = 0
    resets: int = 0
    dropped_images: int = 0


@dataclass
class _Pending:
    stamp_ns: int
    arrival_ns: int
    item: Any


class Synchronizer:
    """LiDAR-led approximate-time synchroniser.

    cameras: names of the cameras to pair (an empty list releases every sweep at once).
    slop_ns: the largest |camera stamp + offset - sweep stamp| that still pairs.
    offsets_ns: per camera, added to its stamps before matching (to correct a known clock offset).
    timeout_ns: release a sweep this long after its arrival with whatever cameras matched; None
        waits until every camera is decided or flush() is called (bags).
    queue_size: images kept per camera and sweeps kept pending, at most; the oldest go first.
    """

    def __init__(self, cameras: list[str], slop_ns: int, offsets_ns: dict[str, int] | None = None,
                 timeout_ns: int | None = None, queue_size: int = 30):
        if slop_ns < 0:
            raise ValueError(f"slop must be >= 0, got {slop_ns} ns")
        unknown = set(offsets_ns or {}) - set(cameras)
        if unknown:
            raise ValueError(f"time offsets given for unknown cameras {sorted(unknown)}; cameras are {cameras}")
        self.cameras = list(cameras)
        self.slop_ns = int(slop_ns)
        self.offsets_ns = {name: int((offsets_ns or {}).get(name, 0)) for name in cameras}
        self.timeout_ns = timeout_ns
        self.queue_size = queue_size
        self.images: dict[str, deque] = {name: deque() for name in cameras}
        self.pending: deque[_Pending] = deque()
        self.last_lidar_ns: int | None = None
        self.stats = SyncStats()

    def add_camera(self, name: str, stamp_ns: int, item: Any, now_ns: int) -> list[SyncGroup]:
        """Add one image (stamp as in its header) that arrived at now_ns; returns released sweeps."""
        if name not in self.images:
            raise KeyError(f"unknown camera {name!r}; cameras are {self.cameras}")
        images = self.images[name]
        corrected = int(stamp_ns) + self.offsets_ns[name]
        if images and corrected < images[-1][0]:
            images.clear()  # this camera's clock went backwards: its older images belong to another timeline
        images.append((corrected, int(stamp_ns), item))
        while len(images) > self.queue_size:
            images.popleft()
            self.stats.dropped_images += 1
        return self._release(now_ns)

    def add_lidar(self, stamp_ns: int, item: Any, now_ns: int) -> list[SyncGroup]:
        """Add one sweep; returns the sweeps released (possibly this one, possibly earlier ones)."""
        released = []
        if self.last_lidar_ns is not None and stamp_ns < self.last_lidar_ns:
            released = self.flush()
            for images in self.images.values():
                images.clear()
            self.stats.resets += 1
        self.last_lidar_ns = int(stamp_ns)
        self.pending.append(_Pending(int(stamp_ns), int(now_ns), item))
        while len(self.pending) > self.queue_size:
            released.append(self._group(self.pending.popleft(), timed_out=True))
        return released + self._release(now_ns)

    def poll(self, now_ns: int) -> list[SyncGroup]:
        """Release sweeps whose timeout has passed (call it from a timer)."""
        return self._release(now_ns)

    def flush(self) -> list[SyncGroup]:
        """Release every pending sweep with what it has (end of a stream)."""
        released = [self._group(p, timed_out=not self._decided(p.stamp_ns)) for p in self.pending]
        self.pending.clear()
        return released

    def _decided(self, stamp_ns: int) -> bool:
        return all(images and images[-1][0] >= stamp_ns for images in self.images.values())

    def _release(self, now_ns: int) -> list[SyncGroup]:
        released = []
        while self.pending:
            head = self.pending[0]
            if self._decided(head.stamp_ns):
                timed_out = False
            elif self.timeout_ns is not None and now_ns - head.arrival_ns >= self.timeout_ns:
                timed_out = True
            else:
                break
            released.append(self._group(self.pending.popleft(), timed_out))
        self._forget_old_images()
        return released

    def _forget_old_images(self) -> None:
        # Sweep stamps only grow, so an image older than the oldest sweep that may still come, minus the slop, is of no use.
        horizon = (self.pending[0].stamp_ns if self.pending else self.last_lidar_ns)
        if horizon is None:
            return
        for images in self.images.values():
            while len(images) > 1 and images[1][0] <= horizon - self.slop_ns:
                images.popleft()

    def _group(self, pending: _Pending, timed_out: bool) -> SyncGroup:
        group = SyncGroup(stamp_ns=pending.stamp_ns, lidar=pending.item, timed_out=timed_out)
        for name, images in self.images.items():
            best = min(images, key=lambda image: abs(image[0] - pending.stamp_ns), default=None)
            if best is not None and abs(best[0] - pending.stamp_ns) <= self.slop_ns:
                group.cameras[name] = best[2]
                group.camera_stamps_ns[name] = best[1]
            else:
                group.missing.append(name)
        self.stats.released += 1
        if group.missing:
            self.stats.partial += 1
        else:
            self.stats.complete += 1
        return group
