"""`clip2scene_recorder`: records aligned LiDAR-camera pairs into rosbag2 (mcap) for more pretraining.

Messages are taken serialised (no decoding) and paired by the core Synchronizer on their header
stamps; only sweeps with every camera within the slop are written (the others are counted as
dropped), each with its images and camera infos. The calibration file goes into every bag part as
/tf_static, odometry (nav_msgs/Odometry) as /tf (or, with tf_source "topics", the vehicle's own /tf
and /tf_static), so `clip2scene pretrain --data bag:OUTPUT_DIR` reads a recording directly.

Surviving any death: each pair is written cloud last and flushed to the file as whole mcap chunks,
so a killed recorder's open part holds every flushed pair, and `clip2scene reindex OUTPUT_DIR` makes
it readable; parts are split every 60 s by default, and the output folder is locked (flock) while
the recorder runs. SIGINT/SIGTERM finishes the current pair and closes the part; when the disk (or
the file-size limit) is nearly full the recorder closes the part cleanly, reports the error and
exits 1; an output_dir it cannot use is reported and it exits 2, before subscribing to anything.
"""

from __future__ import annotations

import functools
import resource
import shutil
import signal
import time
from collections import deque
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from nav_msgs.msg import Odometry
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

from clip2scene_core import messages as conv
from clip2scene_core.calibration import load_calibration
from clip2scene_core.data.reindex import LOCK_NAME, RecordingLock, RecordingLocked
from clip2scene_core.data.rosbag2 import (
    CAMERA_INFO,
    COMPRESSED_IMAGE,
    IMAGE,
    POINTCLOUD2,
    TF_MESSAGE,
    TYPESTORE,
    BagWriter,
    camera_name,
    camera_namespace,
    header_of,
    pixel_image_topics,
    transform_stamped,
)
from clip2scene_core.sync import Synchronizer

from . import conversions
from .params import INPUT_DURABILITY, TF_QOS, TF_STATIC_QOS, Param, declare_all, qos_profile
from .runner import run


class StopRecording(Exception):
    """The recording cannot go on (disk full, write error); the part written so far is closed."""


class StartError(Exception):
    """The recorder cannot start (an unusable output_dir); the message says what to do."""


TF_SOURCES = ("calibration", "topics")


PARAMETERS = [
    Param("output_dir", "recordings/run", "folder of the recording (bag parts inside); must not exist yet",
          read_only=True),
    Param("lidar_topic", "/lidar/points", "PointCloud2 input", read_only=True),
    Param("camera_topics", [], "Image or CompressedImage topics, camera_info beside each", read_only=True),
    Param("calibration_file", "", "static transforms written as /tf_static", read_only=True),
    Param("odometry_topic", "", "nav_msgs/Odometry written as /tf (ego poses for sweeps); empty: none",
          read_only=True),
    Param("record_label_images", False, "also record <camera namespace>/labels and /instances images (a pair waits "
          "at most sync_timeout_ms for them)", read_only=True),
    Param("sync_slop_ms", 50.0, "largest camera-LiDAR stamp difference that pairs", 0.0, 1000.0, read_only=True),
    Param("sync_timeout_ms", 300.0, "give up waiting for a sweep's cameras after this long (the sweep is dropped)",
          1.0, 10000.0, read_only=True),
    Param("split_size_mb", 1024.0, "start a new bag part after this many MB", 1.0, 1e6, read_only=True),
    Param("split_duration_s", 60.0, "start a new bag part after this many seconds (a kill loses at most the open "
          "part's unflushed tail); 0: never", 0.0, 1e6, read_only=True),
    Param("fsync_period_s", 1.0, "sync the open part to the disk at most this often (a power cut loses at most "
          "this much); 0: never (flushed pairs still survive a kill)", 0.0, 3600.0, read_only=True),
    Param("tf_source", "calibration", "calibration: calibration_file as /tf_static and odometry_topic as /tf; "
          "topics: record the vehicle's own /tf and /tf_static", read_only=True),
    Param("reserve_mb", 16.0, "stop cleanly before free space or the file-size limit falls below this", 1.0, 1e5,
          read_only=True),
    Param("storage", "mcap", "mcap or sqlite3", read_only=True),
    Param("qos_reliability", "best_effort", "input QoS: best_effort or reliable", read_only=True),
    INPUT_DURABILITY,
    Param("qos_depth", 10, "input queue depth", 1, 1000, read_only=True),
]


class RecordNode(Node):
    def __init__(self):
        super().__init__("clip2scene_recorder")
        v = declare_all(self, PARAMETERS)
        self.output_dir = Path(v.output_dir)
        self.split_size, self.split_duration, self.reserve = v.split_size_mb * 1e6, v.split_duration_s, \
            v.reserve_mb * 1e6
        self.fsync_period, self.synced = v.fsync_period_s, time.monotonic()
        self.storage = v.storage
        lidar_topic, camera_topics, calibration_file = v.lidar_topic, v.camera_topics, v.calibration_file
        if v.tf_source not in TF_SOURCES:
            raise ValueError(f"parameter tf_source: {v.tf_source!r} is not one of {', '.join(TF_SOURCES)}")
        tf_from_topics = v.tf_source == "topics"
        self.lock: RecordingLock | None = None
        try:
            self._prepare_output_dir()
        except StartError as error:
            self.get_logger().error(f"parameter output_dir: {error}")
            raise SystemExit(2) from None

        self.statics = load_calibration(calibration_file)[1] if calibration_file and not tf_from_topics else []
        if tf_from_topics and calibration_file:
            self.get_logger().warning("tf_source is topics: calibration_file is not recorded, the vehicle's "
                                      "/tf_static is")
        elif not calibration_file and not tf_from_topics:
            self.get_logger().warning("no calibration_file: the bag has no /tf_static, so its cameras cannot be "
                                      "placed when it is read")
        self.cameras = {topic: camera_name(topic) for topic in camera_topics}
        self.sync = Synchronizer(list(self.cameras.values()), int(v.sync_slop_ms * 1e6),
                                 timeout_ns=int(v.sync_timeout_ms * 1e6), queue_size=60)
        qos = qos_profile(v, "qos_", v.qos_depth)
        self.lidar_topic = lidar_topic
        self.types = {lidar_topic: POINTCLOUD2}
        self.infos: dict[str, tuple[str, bytes]] = {}
        # camera -> kind (messages.PIXEL_IMAGES) -> stamp -> (topic, data): recorded label and instance images.
        self.pixel_images: dict[str, dict[str, dict[int, tuple[str, bytes]]]] = {}
        # Released pairs wait here (at most the sync timeout) for camera infos and label and instance images.
        self.waiting: deque = deque()
        self.label_wait_ns = int(v.sync_timeout_ms * 1e6)
        # Subscribed first: the executor serves ready subscriptions in creation order, and these small
        # messages must not wait behind a backlog of sweeps and images.
        if v.odometry_topic:
            self.create_subscription(Odometry, v.odometry_topic, self.on_odometry, qos)
        self.static_raw: list[bytes] = []  # the vehicle's /tf_static messages, written into every part
        if tf_from_topics:
            self._subscribe_tf()
        self.create_subscription(PointCloud2, lidar_topic, self.on_cloud, qos, raw=True)
        for topic, name in self.cameras.items():
            compressed = topic.rstrip("/").endswith("/compressed")
            self.types[topic] = COMPRESSED_IMAGE if compressed else IMAGE
            self.create_subscription(CompressedImage if compressed else Image, topic,
                                     functools.partial(self.on_image, name, topic), qos, raw=True)
            info_topic = f"{camera_namespace(topic).rstrip('/')}/camera_info"
            self.types[info_topic] = CAMERA_INFO
            self.create_subscription(CameraInfo, info_topic, functools.partial(self.on_info, name, info_topic), qos,
                                     raw=True)
            if v.record_label_images:
                self.pixel_images[name] = {kind: {} for kind in conv.PIXEL_IMAGES}
                for kind, pixel_topic in pixel_image_topics(topic).items():
                    self.types[pixel_topic] = IMAGE
                    self.create_subscription(Image, pixel_topic, functools.partial(
                        self.on_pixels, self.pixel_images[name][kind], pixel_topic), qos, raw=True)
        self.status_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(0.05, self.on_poll)
        self.create_timer(1.0, self.publish_status)
        self.writer: BagWriter | None = None
        self.part = -1
        self.written = self.dropped = self.poses = self.flushed = 0
        self.failed: str | None = None
        self._open_part()
        self.get_logger().info(f"recording {lidar_topic} with {len(self.cameras)} cameras into {self.output_dir}")

    # -- output folder and parts ------------------------------------------------------------------

    def _prepare_output_dir(self) -> None:
        """Create output_dir and lock it for this recorder; StartError when it cannot be used."""
        out = self.output_dir
        if out.exists() and not out.is_dir():
            raise StartError(f"{out} is a file, not a folder; choose a new folder for the recording")
        try:
            out.mkdir(parents=True, exist_ok=True)
            self.lock = RecordingLock(out)
        except RecordingLocked as error:
            raise StartError(str(error)) from None
        except OSError as error:
            raise StartError(f"cannot create or write into {out} ({error.strerror or error}); choose a folder on a "
                             f"writable disk that this user may write to") from None
        if any(p.name != LOCK_NAME for p in out.iterdir()):
            self.lock.release()
            raise StartError(f"{out} exists and is not empty; choose a new folder (a recording a recorder left "
                             f"when it was killed is made readable with `clip2scene reindex {out}`)")

    def _open_part(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.part += 1
        self.writer = BagWriter(self.output_dir / f"part_{self.part:04d}", self.storage)
        self.part_started = time.monotonic()
        self.part_bytes = 0
        for topic, msgtype in self.types.items():
            self.writer.add_topic(topic, msgtype)
        if self.statics:
            self.writer.write_static_transforms(self.statics, self.get_clock().now().nanoseconds)
        for data in self.static_raw:
            self.writer.write_raw("/tf_static", self._now(), data)

    def close(self) -> None:
        if self.writer is not None and self.waiting:
            self.label_wait_ns = 0  # write what is waiting before closing
            self._write([])
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            self.get_logger().info(f"closed {self.output_dir}: {self.written} pairs written, {self.dropped} dropped, "
                                   f"{self.part + 1} part(s)")
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _room(self, size: int) -> None:
        """Raise StopRecording before a write that would leave less than the reserve on disk or under the
        process's file-size limit (the reserve is what closing the part needs)."""
        free = shutil.disk_usage(self.output_dir).free
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        file_room = float("inf") if limit == resource.RLIM_INFINITY else limit - self._part_file_size()
        if min(free, file_room) < size + self.reserve:
            raise StopRecording(f"{'file-size limit' if file_room < free else 'disk'} nearly full "
                                f"({min(free, file_room) / 1e6:.1f} MB left)")

    def _part_file_size(self) -> int:
        folder = self.output_dir / f"part_{self.part:04d}"
        return max((f.stat().st_size for f in folder.iterdir() if f.is_file()), default=0)

    # -- inputs -----------------------------------------------------------------------------------

    def _now(self) -> int:
        return self.get_clock().now().nanoseconds

    def on_cloud(self, data: bytes) -> None:
        stamp, _ = header_of(data)
        self._write(self.sync.add_lidar(stamp, (self.lidar_topic, data, self._now()), self._now()))

    def on_image(self, name: str, topic: str, data: bytes) -> None:
        stamp, _ = header_of(data)
        self._write(self.sync.add_camera(name, stamp, (topic, data, self._now()), self._now()))

    def on_info(self, name: str, topic: str, data: bytes) -> None:
        self.infos[name] = (topic, data)
        self._write([])

    def on_pixels(self, stored: dict[int, tuple[str, bytes]], topic: str, data: bytes) -> None:
        stored[header_of(data)[0]] = (topic, data)
        while len(stored) > 60:
            stored.pop(next(iter(stored)))
        self._write([])

    def on_odometry(self, msg: Odometry) -> None:
        if self.writer is None:
            return
        pose = msg.pose.pose
        T = conv.transform_to_matrix(pose.position, pose.orientation)
        stamp = conv.stamp_to_ns(msg.header.stamp)
        tf = TYPESTORE.types[TF_MESSAGE](transforms=[transform_stamped(msg.header.frame_id, msg.child_frame_id, stamp,
                                                                       T)])
        self._guarded(lambda: self.writer.write_message("/tf", TF_MESSAGE, self._now(), tf))
        self.poses += 1

    def _subscribe_tf(self) -> None:
        try:
            from tf2_msgs.msg import TFMessage
        except ImportError:
            raise ValueError("parameter tf_source: topics needs the tf2_msgs Python package (part of every ROS 2 "
                             "install: source /opt/ros/jazzy/setup.bash)") from None
        self.types["/tf"] = self.types["/tf_static"] = TF_MESSAGE
        self.create_subscription(TFMessage, "/tf", self.on_tf, TF_QOS, raw=True)
        self.create_subscription(TFMessage, "/tf_static", self.on_tf_static, TF_STATIC_QOS, raw=True)

    def on_tf(self, data: bytes) -> None:
        if self.writer is not None:
            self._guarded(lambda: self.writer.write_raw("/tf", self._now(), data))

    def on_tf_static(self, data: bytes) -> None:
        if data in self.static_raw or self.writer is None:
            return
        self.static_raw = (self.static_raw + [data])[-64:]  # one latched message per broadcaster
        self._guarded(lambda: self.writer.write_raw("/tf_static", self._now(), data))

    def on_poll(self) -> None:
        self._write(self.sync.poll(self._now()))

    # -- writing ----------------------------------------------------------------------------------

    def _write(self, groups) -> None:
        now = self._now()
        for group in groups:
            if group.missing or self.writer is None:
                self.dropped += 1  # only pairs with every camera within the slop are recorded
            else:
                self.waiting.append((group, now))
        # A released pair waits (at most the sync timeout) for its cameras' camera_info and label and instance
        # images, which are published after the images.
        while self.waiting:
            group, released = self.waiting[0]
            infos_in = all(name in self.infos for name in group.cameras)
            pixels_in = all(group.camera_stamps_ns[name] in stored for name in group.cameras
                            for stored in self.pixel_images.get(name, {}).values())
            if not (infos_in and pixels_in) and now - released < self.label_wait_ns:
                break
            self.waiting.popleft()
            if not infos_in:
                self.dropped += 1  # a camera without camera_info could not be used when read back
                continue
            messages = [group.lidar] + list(group.cameras.values())
            self._guarded(lambda: self._write_pair(group, messages))

    def _write_pair(self, group, messages) -> None:
        extra = [self.infos[name] for name in group.cameras]
        extra += [stored[group.camera_stamps_ns[name]] for name in group.cameras
                  for stored in self.pixel_images.get(name, {}).values() if group.camera_stamps_ns[name] in stored]
        size = sum(len(m[1]) for m in messages) + sum(len(e[1]) for e in extra)
        if self.part_bytes + size > self.split_size or (
                self.split_duration and time.monotonic() - self.part_started > self.split_duration):
            self._open_part()
        self._room(size)
        # The cloud goes last: a pair cut off by a kill then has no cloud in the file and is not read.
        for topic, data in extra:
            self.writer.write_raw(topic, messages[0][2], data)
        for topic, data, received in messages[1:] + messages[:1]:
            self.writer.write_raw(topic, received, data)
        sync = self.fsync_period > 0 and time.monotonic() - self.synced >= self.fsync_period
        self.writer.flush(to_disk=sync)
        if sync:
            self.synced = time.monotonic()
        self.part_bytes += size
        self.written += 1
        self.flushed = self.written

    def _guarded(self, write) -> None:
        try:
            write()
        except (StopRecording, OSError) as error:
            self.failed = str(error)
            self.waiting.clear()  # nothing more can be written
            self.get_logger().error(f"recording stopped: {error}; the {self.written} pairs written so far are "
                                    f"closed and readable in {self.output_dir}")
            self.close()
            raise SystemExit(1) from None

    def publish_status(self) -> None:
        level = DiagnosticStatus.ERROR if self.failed else DiagnosticStatus.OK
        values = {"written_pairs": self.written, "flushed_pairs": self.flushed, "dropped_pairs": self.dropped,
                  "odometry": self.poses,
                  "parts": self.part + 1,
                  "output_dir": str(self.output_dir)}
        status = DiagnosticStatus(level=level, name="clip2scene_recorder: recording",
                                  message=self.failed or "recording", hardware_id=self.get_fully_qualified_name(),
                                  values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
        self.status_pub.publish(DiagnosticArray(header=conversions.header(self._now(), ""), status=[status]))
        self.get_logger().info(f"{self.written} pairs written, {self.dropped} dropped", throttle_duration_sec=10.0)


def main(args=None) -> None:
    # Past a file-size limit, writes must fail (and be handled) rather than the process being killed.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    raise SystemExit(run(RecordNode, args))


if __name__ == "__main__":
    main()
