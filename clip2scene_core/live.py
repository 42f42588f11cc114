"""Messages in, segmentations out: the pipeline behind the segmentation node and `clip2scene replay`.

It pairs a LiDAR topic with camera topics through the core Synchronizer, decodes only what is
released, builds a Frame with the calibration, and runs the Segmenter. Messages are duck-typed, so
rclpy messages (the node) and rosbags messages (the replay) go through the same code. A malformed
message never raises out of here: it is counted, described in `errors`, and skipped.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from . import messages as conv
from .frame import Camera, Frame
from .segmenter import Segmentation, Segmenter
from .sync import Synchronizer
from .tf_tree import TransformError, TransformTree, camera_from_lidar

log = logging.getLogger(__name__)


@dataclass
class LiveResult:
    """One segmented sweep. timings_ms includes decode and sync_wait besides the segmenter's stages."""

    frame: Frame
    segmentation: Segmentation
    timings_ms: dict[str, float]
    cameras: list[str]
    missing: list[str]
    arrival_ns: int
    cloud_msg: object = None  # the input PointCloud2, for outputs that keep its fields


@dataclass
class LiveStats:
    clouds: int = 0
    processed: int = 0
    skipped_clouds: int = 0
    skipped_images: int = 0
    rejected_infos: int = 0
    failed: int = 0  # sweeps the segmenter raised on (logged with the error; the next one is served)
    errors: deque = field(default_factory=lambda: deque(maxlen=50))
    notices: deque = field(default_factory=lambda: deque(maxlen=50))  # worth an info line: where extrinsics came from


class LivePipeline:
    """camera_names: names in the order of the cameras; images are added by name.

    calibration: static transforms connecting the clouds' and images' header frame_ids (and, for replay, the
    recording's /tf); tf: a live buffer of /tf_static and /tf. A camera's mount comes from tf where it connects
    the camera to the LiDAR, else from calibration (which one is said once in stats.notices, and again if it
    changes); without either, cameras cannot be placed and the frames are LiDAR-only. Where the vehicle frame
    moves in /tf (odom -> base_link), each image is compensated for the motion between its stamp and the
    sweep's (tf_tree.camera_from_lidar, as the bag reader does).
    defer: add_*/poll/flush return the released groups, each with its release time, for the caller to
    process() elsewhere (the node's worker thread), instead of segmenting them inline.
    """

    def __init__(self, segmenter: Segmenter | None, camera_names: list[str], calibration: TransformTree | None,
                 slop_ms: float = 50.0, offsets_ms: dict[str, float] | None = None, timeout_ms: float | None = 100.0,
                 label_field: str | None = "label", label_wait_ms: float = 100.0, defer: bool = False,
                 rectified: Iterable[str] = (), tf: TransformTree | None = None):
        self.segmenter, self.defer = segmenter, defer
        self.camera_names = list(camera_names)
        self.rectified = set(rectified)  # cameras whose images are rectified: P, no distortion
        self.calibration, self.tf = calibration, tf
        self.extrinsics_from: dict[str, str] = {}  # camera -> "/tf_static" or "calibration_file"
        self.label_field = label_field
        self.sync = Synchronizer(self.camera_names, int(slop_ms * 1e6),
                                 {k: int(v * 1e6) for k, v in (offsets_ms or {}).items()},
                                 None if timeout_ms is None else int(timeout_ms * 1e6))
        self.intrinsics: dict[str, conv.Intrinsics] = {}
        # Per-pixel images (messages.PIXEL_IMAGES: label ids, surface ids) by kind, camera and stamp.
        self.pixel_images: dict[str, dict[str, dict[int, object]]] = {
            kind: {name: {} for name in self.camera_names} for kind in conv.PIXEL_IMAGES}
        self.expected: set[str] = set()  # the kinds a released sweep waits for: those seen so far
        self.label_wait_ns = int(label_wait_ms * 1e6)
        self.waiting: deque = deque()  # released sweeps waiting for per-pixel images: (group, release time)
        self.stats = LiveStats()

    def _error(self, text: str) -> None:
        self.stats.errors.append(text)
        log.debug(text)

    def add_camera_info(self, name: str, msg) -> None:
        try:
            self.intrinsics[name] = conv.decode_camera_info(msg, f"camera_info of {name}", name in self.rectified)
        except conv.MessageError as error:
            self.stats.rejected_infos += 1
            self._error(str(error))

    def add_label_image(self, name: str, msg, now_ns: int, kind: str = "label_image") -> list[LiveResult]:
        """A per-pixel image for camera name, attached to the image with the same stamp as Camera.<kind>: a 2D
        segmenter's class ids ("label_image") or the synthetic world's surface ids ("instance_image"). From the
        first of a kind on, released sweeps wait (at most label_wait_ms) for their cameras' images of that kind."""
        stored = self.pixel_images[kind][name]
        stored[conv.stamp_to_ns(msg.header.stamp)] = msg
        while len(stored) > 30:
            stored.pop(next(iter(stored)))
        self.expected.add(kind)
        return self._run([], now_ns)

    def add_image(self, name: str, msg, now_ns: int) -> list[LiveResult]:
        try:
            stamp = conv.stamp_to_ns(msg.header.stamp)
        except AttributeError:
            self.stats.skipped_images += 1
            self._error(f"image of {name} has no header stamp; skipped")
            return []
        return self._run(self.sync.add_camera(name, stamp, (msg, now_ns), now_ns), now_ns)

    def add_cloud(self, msg, now_ns: int) -> list[LiveResult]:
        self.stats.clouds += 1
        return self._run(self.sync.add_lidar(conv.stamp_to_ns(msg.header.stamp), (msg, now_ns), now_ns), now_ns)

    def poll(self, now_ns: int) -> list[LiveResult]:
        return self._run(self.sync.poll(now_ns), now_ns)

    def flush(self, now_ns: int) -> list[LiveResult]:
        return self._run(self.sync.flush(), now_ns, final=True)

    def _pixels_in(self, group) -> bool:
        return all(group.camera_stamps_ns[name] in self.pixel_images[kind][name]
                   for kind in self.expected for name in group.cameras)

    def _run(self, groups, now_ns: int, final: bool = False) -> list:
        self.waiting.extend((group, now_ns) for group in groups)
        ready = []
        while self.waiting:
            group, released = self.waiting[0]
            if not final and not self._pixels_in(group) and now_ns - released < self.label_wait_ns:
                break
            ready.append(self.waiting.popleft()[0])
        if self.defer:
            return [(group, now_ns) for group in ready]
        return [result for result in (self.process(group, now_ns) for group in ready) if result is not None]

    def build_frame(self, group, now_ns: int) -> tuple[Frame, dict[str, float]] | None:
        """Decode a released group into a Frame; None (with the reason in stats.errors) for a bad cloud.
        now_ns: when the group was released, on the clock the messages arrived by."""
        started = time.perf_counter()
        cloud_msg, arrival_ns = group.lidar
        what = f"cloud at t={group.stamp_ns * 1e-9:.3f} s"
        try:
            cloud = conv.decode_cloud(cloud_msg, self.label_field, what)
        except conv.MessageError as error:
            self.stats.skipped_clouds += 1
            self._error(f"{error}; skipped")
            return None
        cameras = []
        for name, (image_msg, _) in group.cameras.items():
            camera = self._camera(name, image_msg, cloud.frame_id, cloud.stamp_ns)
            if camera is not None:
                cameras.append(camera)
        frame = Frame(points=cloud.points, stamp_ns=cloud.stamp_ns, fields=cloud.fields, cameras=cameras,
                      labels=cloud.labels, name=str(cloud.stamp_ns), frame_id=cloud.frame_id or "lidar")
        return frame, {"sync_wait": max(0.0, (now_ns - arrival_ns) * 1e-6),
                       "decode": (time.perf_counter() - started) * 1e3}

    def _extrinsic(self, name: str, camera_frame: str, stamp_ns: int, lidar_frame: str, lidar_stamp_ns: int):
        live = self.tf is not None and {camera_frame, lidar_frame} <= self.tf.frames
        source, tree = ("/tf_static", self.tf) if live or self.calibration is None else \
            ("calibration_file", self.calibration)
        if not tree.frames:
            raise TransformError(f"no /tf_static received yet to place {camera_frame!r} (and no calibration_file)")
        T = camera_from_lidar(tree, camera_frame, stamp_ns, lidar_frame, lidar_stamp_ns, self.tf)
        if self.extrinsics_from.get(name) != source:
            self.extrinsics_from[name] = source
            self.stats.notices.append(f"camera {name}: {camera_frame} -> {lidar_frame} from {source}")
        return T

    def _camera(self, name: str, msg, lidar_frame: str, lidar_stamp_ns: int) -> Camera | None:
        intrinsics = self.intrinsics.get(name)
        if intrinsics is None:
            self.stats.skipped_images += 1
            self._error(f"camera {name}: no valid camera_info yet; image not used")
            return None
        if self.calibration is None and self.tf is None:
            self._error(f"camera {name}: no calibration file, so the camera cannot be placed; image not used")
            return None
        stamp = conv.stamp_to_ns(msg.header.stamp)
        try:
            image = conv.decode_image(msg, f"image of {name}")
            if image.shape[:2] != (intrinsics.height, intrinsics.width):
                raise conv.MessageError(f"image of {name} is {image.shape[1]}x{image.shape[0]} but its camera_info "
                                        f"says {intrinsics.width}x{intrinsics.height}")
            lidar_to_camera = self._extrinsic(name, msg.header.frame_id, stamp, lidar_frame, lidar_stamp_ns)
            if np.any(intrinsics.offset):  # a rectified stereo camera's baseline, from its P
                lidar_to_camera = lidar_to_camera.copy()
                lidar_to_camera[:3, 3] += intrinsics.offset
            pixels = {kind: conv.decode_label_image(pixel_msg, f"{kind} of {name}")
                      for kind, stored in self.pixel_images.items()
                      if (pixel_msg := stored[name].get(stamp)) is not None}
        except (conv.MessageError, TransformError) as error:
            self.stats.skipped_images += 1
            self._error(f"{error}; image not used")
            return None
        try:
            return Camera(name=name, image=image, intrinsics=intrinsics.K, lidar_to_camera=lidar_to_camera,
                          stamp_ns=stamp, distortion_model=intrinsics.distortion_model,
                          distortion=intrinsics.distortion, frame_id=msg.header.frame_id, **pixels)
        except ValueError as error:  # e.g. a label or instance image of another size
            self.stats.skipped_images += 1
            self._error(f"camera {name}: {error}; image not used")
            return None

    def process(self, group, now_ns: int) -> LiveResult | None:
        built = self.build_frame(group, now_ns)
        if built is None:
            return None
        frame, timings = built
        if self.segmenter is None:
            segmentation = Segmentation(np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, bool))
        else:
            try:
                segmentation = self.segmenter.segment(frame)
            except Exception as error:  # one sweep the segmenter cannot take must not end the stream
                self.stats.failed += 1
                log.debug("segmentation failed", exc_info=True)
                self._error(f"segmenting the {len(frame.points)}-point sweep at t="
                            f"{frame.stamp_ns * 1e-9:.3f} s failed ({type(error).__name__}: {error}); skipped")
                return None
            timings.update(segmentation.timings_ms)
        self.stats.processed += 1
        return LiveResult(frame, segmentation, timings, [c.name for c in frame.cameras], list(group.missing),
                          group.lidar[1], group.lidar[0])
