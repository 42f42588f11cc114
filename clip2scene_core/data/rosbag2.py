"""rosbag2 recordings (mcap or sqlite3) as frames, and frames into recordings, through `rosbags`.

Layout read and written (the recorder node writes the same):
- one LiDAR `sensor_msgs/PointCloud2` topic (organised or not, NaN points allowed; an optional
  per-point label field, `label` by default);
- cameras as `sensor_msgs/Image` or `CompressedImage`, each with a `CameraInfo` in the same
  namespace (`/cam_front/image_raw[/compressed]` goes with `/cam_front/camera_info`), and optional
  per-pixel label images at `<namespace>/labels` (mono8/mono16/32SC1, same stamp as the image), and
  the synthetic world's persistent surface ids at `<namespace>/instances` (the same encodings);
- `/tf_static` for the extrinsics (chains resolved here), `/tf` for the ego pose over time.
A recording may be one bag directory or a directory of bag directories (a split recording),
read in name order as one stream. Each sweep is paired with the nearest image of every camera
within `slop_ms` by the core's Synchronizer, the same one the live node uses.
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from .. import messages as conv
from ..calibration import frame_transforms
from ..frame import Camera, Frame
from ..geometry import invert
from ..sync import Synchronizer
from ..tf_tree import TransformError, TransformTree, add_tf_message
from .reindex import is_locked, unfinished_parts
from .source import FrameSource, MissingPosesError, SourceError

log = logging.getLogger(__name__)

TYPESTORE = get_typestore(Stores.ROS2_JAZZY)
POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
TF_MESSAGE = "tf2_msgs/msg/TFMessage"

_ZERO = QosTime(0, 0)
_FOREVER = QosTime(2147483647, 4294967295)
SENSOR_QOS = Qos(QosHistory.KEEP_LAST, 5, QosReliability.BEST_EFFORT, QosDurability.VOLATILE, _FOREVER, _FOREVER,
                 QosLiveliness.AUTOMATIC, _FOREVER, False)
LATCHED_QOS = Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL, _FOREVER, _FOREVER,
                  QosLiveliness.AUTOMATIC, _FOREVER, False)
RELIABLE_QOS = Qos(QosHistory.KEEP_LAST, 100, QosReliability.RELIABLE, QosDurability.VOLATILE, _FOREVER, _FOREVER,
                   QosLiveliness.AUTOMATIC, _FOREVER, False)
# The offered QoS recorded per topic: tf2's listeners (RViz, `ros2 bag play` into them) subscribe to /tf
# reliable and to /tf_static reliable and transient-local, and only match a player that offers as much.
TOPIC_QOS = {"/tf": RELIABLE_QOS, "/tf_static": LATCHED_QOS}


def camera_namespace(topic: str) -> str:
    """`/cam_front/image_raw/compressed` -> `/cam_front`: where its camera_info and labels live."""
    parts = topic.rstrip("/").split("/")
    if parts[-1] == "compressed":
        parts = parts[:-1]
    return "/".join(parts[:-1]) or "/"


def pixel_image_names(label_images: str = "labels") -> dict[str, str]:
    """{kind: topic name beside each camera's camera_info} of the per-pixel integer images, the kinds of
    messages.PIXEL_IMAGES (the Camera attribute each is read into); label_images: the label images' name (a
    labels:NAME teacher's NAME)."""
    return {**conv.PIXEL_IMAGES, "label_image": label_images.strip("/")}


def pixel_image_topics(camera_topic: str, label_images: str = "labels") -> dict[str, str]:
    """{kind: topic} of the per-pixel integer images of the camera at camera_topic (see pixel_image_names)."""
    namespace = camera_namespace(camera_topic).rstrip("/")
    return {kind: f"{namespace}/{name}" for kind, name in pixel_image_names(label_images).items()}


def camera_name(topic: str) -> str:
    """A camera's name in frames: the last part of its namespace, e.g. `cam_front`."""
    return camera_namespace(topic).rstrip("/").split("/")[-1] or topic


def header_of(raw: bytes | memoryview) -> tuple[int, str]:
    """(stamp ns, frame_id) of a CDR-serialised message whose first field is a std_msgs/Header,
    read without deserialising the (possibly large) rest."""
    little = raw[1] == 1  # CDR encapsulation: 0x0001 little endian, 0x0000 big endian
    order = "<" if little else ">"
    sec, nanosec, length = struct.unpack_from(order + "iII", raw, 4)
    frame_id = bytes(raw[16:16 + max(length - 1, 0)]).decode("utf-8", "replace")
    return sec * 1_000_000_000 + nanosec, frame_id


def _header(stamp_ns: int, frame_id: str):
    sec, nanosec = conv.ns_to_sec_nanosec(stamp_ns)
    return TYPESTORE.types["std_msgs/msg/Header"](
        stamp=TYPESTORE.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec), frame_id=frame_id)


def cloud_message(layout: conv.CloudLayout, stamp_ns: int, frame_id: str):
    """A rosbags PointCloud2 from a packed layout (messages.encode_cloud)."""
    types = TYPESTORE.types
    fields = [types["sensor_msgs/msg/PointField"](name=n, offset=o, datatype=d, count=c) for n, o, d, c in layout.fields]
    return types[POINTCLOUD2](header=_header(stamp_ns, frame_id), height=1, width=layout.width, fields=fields,
                              is_bigendian=False, point_step=layout.point_step,
                              row_step=layout.point_step * layout.width, data=layout.data, is_dense=True)


def transform_stamped(parent: str, child: str, stamp_ns: int, T: np.ndarray):
    types = TYPESTORE.types
    x, y, z, w = conv.matrix_to_quaternion(T)
    return types["geometry_msgs/msg/TransformStamped"](
        header=_header(stamp_ns, parent), child_frame_id=child,
        transform=types["geometry_msgs/msg/Transform"](
            translation=types["geometry_msgs/msg/Vector3"](x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
            rotation=types["geometry_msgs/msg/Quaternion"](x=x, y=y, z=z, w=w)))


# ---------------------------------------------------------------------------------------------- writing

@dataclass
class BagLayout:
    """Topic and frame names used when writing frames."""

    lidar_topic: str = "/lidar/points"
    world_frame: str = "map"
    ego_frame: str = "base_link"
    compressed: bool = True           # cameras as jpeg CompressedImage (else raw rgb8 Image)
    # Camera.label_image at <namespace>/<label_images> and Camera.instance_image at <namespace>/instances ("": neither)
    label_images: str = "labels"

    def camera_topic(self, name: str) -> str:
        return f"/{name.lower()}/image_raw" + ("/compressed" if self.compressed else "")


class BagWriter:
    """Writes a rosbag2 recording: frames (`write_frame`) or already serialised messages (`write_raw`).

    storage: "mcap" or "sqlite3". Use as a context manager; `close()` writes the metadata that makes
    the bag readable. The target directory must not exist yet.
    """

    def __init__(self, path: str | Path, storage: str = "mcap", layout: BagLayout | None = None):
        plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
        if storage not in plugins:
            raise ValueError(f"storage must be one of {list(plugins)}, got {storage!r}")
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f"{self.path} exists already; choose a new output directory")
        self.layout = layout or BagLayout()
        self.writer = Writer(self.path, version=Writer.VERSION_LATEST, storage_plugin=plugins[storage])
        self.writer.open()
        self.connections: dict[str, object] = {}
        self.counts: dict[str, int] = {}
        self._static_written = False

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def flush(self, to_disk: bool = False) -> None:
        """Make what was written so far outlive the process: mcap's pending chunk goes into the file as a
        whole chunk, the file is flushed to the OS (survives SIGKILL and the OOM killer) and, with to_disk,
        synced to the disk (survives a power cut). `reindex` makes such a part readable after a death.
        sqlite3 parts are not flushed: rosbags commits them only on close. This reaches into rosbags'
        mcap storage writer (rosbags 0.11, pinned), which has no public flush."""
        storage = self.writer.storage
        if not hasattr(storage, "close_chunk"):
            return
        if storage.chunk.bio.tell():
            storage.close_chunk()
        storage.bio.flush()
        if to_disk:
            os.fsync(storage.bio.fileno())

    def add_topic(self, topic: str, msgtype: str, qos: Qos | None = None, msgdef: str | None = None,
                  rihs01: str | None = None):
        """Register a topic once; qos: the offered QoS recorded for it (default TOPIC_QOS's, else sensor data)."""
        if topic not in self.connections:
            qos = qos or TOPIC_QOS.get(topic, SENSOR_QOS)
            typestore = None if msgdef else TYPESTORE
            self.connections[topic] = self.writer.add_connection(topic, msgtype, typestore=typestore, msgdef=msgdef,
                                                                 rihs01=rihs01, offered_qos_profiles=[qos])
            self.counts[topic] = 0
        return self.connections[topic]

    def write_raw(self, topic: str, log_time_ns: int, data: bytes | memoryview) -> None:
        self.writer.write(self.connections[topic], int(log_time_ns), data)
        self.counts[topic] += 1

    def write_message(self, topic: str, msgtype: str, log_time_ns: int, msg, qos: Qos | None = None) -> None:
        self.add_topic(topic, msgtype, qos)
        self.write_raw(topic, log_time_ns, TYPESTORE.serialize_cdr(msg, msgtype))

    def write_static_transforms(self, transforms: list[tuple[str, str, np.ndarray]], stamp_ns: int) -> None:
        """(parent, child, child->parent (4, 4)) transforms on /tf_static, latched."""
        msg = TYPESTORE.types[TF_MESSAGE](transforms=[transform_stamped(p, c, stamp_ns, T) for p, c, T in transforms])
        self.write_message("/tf_static", TF_MESSAGE, stamp_ns, msg)

    def write_frame(self, frame: Frame) -> None:
        """One sweep with its cameras: ego pose on /tf, images, camera infos, label images, then the cloud (a
        frame cut off by the writer's death then has no cloud in the file, see `flush`).

        Camera extrinsics go to /tf_static once, from the first frame: the camera-to-ego transform is
        recovered from lidar_to_camera with the camera's own ego pose when the source gives one.
        """
        layout, types = self.layout, TYPESTORE.types
        if not self._static_written:
            self.write_static_transforms(frame_transforms(frame, layout.ego_frame), frame.stamp_ns)
            self._static_written = True
        poses = {frame.stamp_ns: frame.ego_pose}
        poses.update({c.stamp_ns: c.ego_pose for c in frame.cameras if c.ego_pose is not None})
        for stamp_ns, pose in sorted(poses.items()):
            tf = types[TF_MESSAGE](transforms=[transform_stamped(layout.world_frame, layout.ego_frame, stamp_ns, pose)])
            self.write_message("/tf", TF_MESSAGE, stamp_ns, tf)
        for camera in frame.cameras:
            self._write_camera(camera)
        cloud = cloud_message(conv.encode_cloud(frame.points, frame.fields, frame.labels), frame.stamp_ns,
                              frame.frame_id)
        self.write_message(layout.lidar_topic, POINTCLOUD2, frame.stamp_ns, cloud)

    def _write_camera(self, camera: Camera) -> None:
        layout, types = self.layout, TYPESTORE.types
        topic = layout.camera_topic(camera.name)
        namespace = camera_namespace(topic)
        header = _header(camera.stamp_ns, camera.optical_frame)
        if layout.compressed:
            msg = types[COMPRESSED_IMAGE](header=header, format="jpeg", data=conv.encode_jpeg(camera.image))
            self.write_message(topic, COMPRESSED_IMAGE, camera.stamp_ns, msg)
        else:
            self.write_message(topic, IMAGE, camera.stamp_ns, _image_msg(header, camera.image))
        info = conv.camera_info_values(camera.intrinsics, camera.distortion_model, camera.distortion,
                                       camera.width, camera.height)
        roi = types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        msg = types[CAMERA_INFO](header=header, binning_x=0, binning_y=0, roi=roi, **info)
        self.write_message(f"{namespace.rstrip('/')}/camera_info", CAMERA_INFO, camera.stamp_ns, msg)
        if layout.label_images:
            for kind, pixel_topic in pixel_image_topics(topic, layout.label_images).items():
                if getattr(camera, kind) is not None:
                    self.write_message(pixel_topic, IMAGE, camera.stamp_ns, _image_msg(header, getattr(camera, kind)))


def _image_msg(header, array: np.ndarray):
    image = conv.encode_image(array)
    return TYPESTORE.types[IMAGE](header=header, height=image.height, width=image.width, encoding=image.encoding,
                                  is_bigendian=0, step=image.step, data=image.data)


def write_bag(frames, path: str | Path, storage: str = "mcap", layout: BagLayout | None = None) -> Path:
    """Write frames (any iterable, e.g. a FrameSource) into a new rosbag2 at path; returns the path."""
    with BagWriter(path, storage, layout) as writer:
        for frame in frames:
            writer.write_frame(frame)
    return Path(path)


# ---------------------------------------------------------------------------------------------- reading

@dataclass(frozen=True)
class _Ref:
    """Where one message is: recording part, connection, log time; plus its header."""

    part: int
    connection: object
    log_time_ns: int
    stamp_ns: int
    frame_id: str


def bag_parts(path: Path) -> list[Path]:
    """The bag directories of a recording: path itself, or its sub-directories that hold bags.

    A part a killed recorder left unfinished is an error that says to run `clip2scene reindex`; while
    a recorder still writes into the folder (its lock is held), the open part is left out with a warning.
    """
    unfinished = unfinished_parts(path) if path.is_dir() else []
    if unfinished:
        names = ", ".join(p.name for p in unfinished)
        if not (is_locked(path) or is_locked(path.parent)):
            raise SourceError(f"bag {path}: part(s) {names} were not closed (the recorder was killed, or the power "
                              f"failed): run `clip2scene reindex {path}` to make them readable up to their last "
                              f"complete pair")
        log.warning("bag %s is being recorded: its open part(s) %s are left out", path, names)
    if (path / "metadata.yaml").is_file() and path not in unfinished:
        return [path]
    if path.is_dir():
        parts = sorted(p for p in path.iterdir() if (p / "metadata.yaml").is_file() and p not in unfinished)
        if parts:
            return parts
    if not path.exists():
        raise SourceError(f"bag {path} does not exist")
    raise SourceError(f"{path} is not a rosbag2 recording: no metadata.yaml in it or in its sub-directories")


class BagSource(FrameSource):
    """Frames from a rosbag2 recording (see the module docstring for the layout).

    lidar: the PointCloud2 topic (detected when the bag has exactly one).
    cameras: image topics (Image or CompressedImage); detected as every image topic that has a
        CameraInfo beside it, when no namespace has more than one.
    label_field: the cloud's per-point label field, read into Frame.labels when present.
    label_images: name of the per-camera label-image topic beside each camera's camera_info
        (`<namespace>/<label_images>`), read into Camera.label_image (a 2D segmenter's output);
        `<namespace>/instances`, when the bag has it, is read into Camera.instance_image.
    slop_ms: largest camera-LiDAR stamp difference that pairs.
    sweeps: previous sweeps attached to each frame (needs ego poses on /tf).
    """

    kind = "bag"

    def __init__(self, path: str, lidar: str | None = None, cameras: list[str] | None = None,
                 label_field: str = "label", label_images: str = "labels", slop_ms: float = 50.0, sweeps: int = 0):
        self.path = Path(path).expanduser()
        self.parts = bag_parts(self.path)
        self.label_field = label_field or None
        self.label_images = label_images.strip("/")
        self.sweeps = int(sweeps)
        self.slop_ns = int(slop_ms * 1e6)
        if self.sweeps < 0 or slop_ms < 0:
            raise SourceError(f"bag source: sweeps and slop_ms must be >= 0, got sweeps={sweeps}, slop_ms={slop_ms}")
        self._readers: list[AnyReader] | None = None
        self._pid = None
        readers = self._open()
        topics: dict[str, list[tuple[int, object]]] = {}
        for part, reader in enumerate(readers):
            for connection in reader.connections:
                topics.setdefault(connection.topic, []).append((part, connection))
        types = {topic: conns[0][1].msgtype for topic, conns in topics.items()}
        self.lidar_topic = self._choose_lidar(types, lidar)
        self.camera_topics = self._choose_cameras(types, cameras)
        self.camera_names = {topic: camera_name(topic) for topic in self.camera_topics}
        self._index(readers, topics)

    # -- topic detection ------------------------------------------------------------------------

    def _choose_lidar(self, types: dict[str, str], requested: str | None) -> str:
        clouds = sorted(t for t, m in types.items() if m == POINTCLOUD2)
        if requested:
            if types.get(requested) != POINTCLOUD2:
                raise SourceError(f"bag {self.path}: lidar topic {requested!r} is not a PointCloud2 topic in the bag; "
                                  f"PointCloud2 topics: {clouds}")
            return requested
        if len(clouds) != 1:
            raise SourceError(f"bag {self.path}: {'no' if not clouds else 'several'} PointCloud2 topics {clouds}; "
                              f"name the LiDAR in the source string: bag:{self.path}?lidar=/points")
        return clouds[0]

    def _choose_cameras(self, types: dict[str, str], requested: list[str] | None) -> list[str]:
        pixel_images = tuple(f"/{name}" for name in pixel_image_names(self.label_images).values())
        images = sorted(t for t, m in types.items() if m in (IMAGE, COMPRESSED_IMAGE) and not t.endswith(pixel_images))
        if requested is not None:
            for topic in requested:
                if types.get(topic) not in (IMAGE, COMPRESSED_IMAGE):
                    raise SourceError(f"bag {self.path}: camera topic {topic!r} is not an Image or CompressedImage "
                                      f"topic in the bag; image topics: {images}")
                if types.get(self._info_topic(topic)) != CAMERA_INFO:
                    raise SourceError(f"bag {self.path}: camera {topic!r} has no CameraInfo at "
                                      f"{self._info_topic(topic)!r}; record the camera_info topic with the images")
            return list(requested)
        with_info = [t for t in images if types.get(self._info_topic(t)) == CAMERA_INFO]
        for topic in sorted(set(images) - set(with_info)):
            log.warning("bag %s: image topic %s has no CameraInfo at %s and is not used", self.path, topic,
                        self._info_topic(topic))
        by_namespace: dict[str, list[str]] = {}
        for topic in with_info:
            by_namespace.setdefault(camera_namespace(topic), []).append(topic)
        ambiguous = {ns: ts for ns, ts in by_namespace.items() if len(ts) > 1}
        if ambiguous:
            raise SourceError(f"bag {self.path}: several image topics per camera {ambiguous}; choose them in the "
                              f"source string: bag:{self.path}?cameras=/cam_front/image_raw,/cam_left/image_raw")
        return with_info

    @staticmethod
    def _info_topic(image_topic: str) -> str:
        return f"{camera_namespace(image_topic).rstrip('/')}/camera_info"

    # -- indexing -------------------------------------------------------------------------------

    def _open(self) -> list[AnyReader]:
        # Readers hold open files: reopen them in a forked process (e.g. a DataLoader worker).
        if self._readers is None or self._pid != os.getpid():
            try:
                self._readers = [AnyReader([part], default_typestore=TYPESTORE) for part in self.parts]
                for reader in self._readers:
                    reader.open()
            except Exception as error:  # rosbags raises several types for unreadable bags
                raise SourceError(f"bag {self.path}: cannot open ({error}); if a recorder was killed while writing "
                                  f"it, `clip2scene reindex {self.path}` repairs it") from None
            self._pid = os.getpid()
        return self._readers

    def _index(self, readers: list[AnyReader], topics: dict[str, list[tuple[int, object]]]) -> None:
        """One pass over the recording: headers of sensor messages, calibration, transforms; pairing."""
        info_topics = {self._info_topic(t): t for t in self.camera_topics}
        pixel_topics = {pixel_topic: (kind, self.camera_names[t]) for t in self.camera_topics
                        for kind, pixel_topic in pixel_image_topics(t, self.label_images).items()}
        wanted = {self.lidar_topic, *self.camera_topics, *info_topics, *pixel_topics, "/tf", "/tf_static"}
        self.tree = TransformTree()
        self.intrinsics: dict[str, conv.Intrinsics] = {}
        self.pixel_refs: dict[tuple[str, str, int], _Ref] = {}  # (kind, camera, stamp): its per-pixel image
        self.lidar_refs: list[_Ref] = []
        camera_names = [self.camera_names[t] for t in self.camera_topics]
        sync = Synchronizer(camera_names, slop_ns=self.slop_ns, timeout_ns=None, queue_size=1_000_000)
        groups = []
        self.skipped_clouds = self.unposed_clouds = 0
        for part, reader in enumerate(readers):
            connections = [c for p, c in sum((topics.get(t, []) for t in wanted), []) if p == part]
            for connection, log_time, raw in self._messages(reader, connections, part):
                topic = connection.topic
                if topic in ("/tf", "/tf_static"):
                    add_tf_message(self.tree, reader.deserialize(raw, connection.msgtype), topic == "/tf_static")
                    continue
                if topic in info_topics:
                    name = self.camera_names[info_topics[topic]]
                    if name not in self.intrinsics:
                        try:
                            self.intrinsics[name] = conv.decode_camera_info(
                                reader.deserialize(raw, CAMERA_INFO), f"{topic} in {self.path}",
                                conv.is_rectified(info_topics[topic]))
                        except conv.MessageError as error:
                            log.warning("%s; waiting for a valid one", error)
                    continue
                stamp_ns, frame_id = header_of(raw)
                ref = _Ref(part, connection, log_time, stamp_ns, frame_id)
                if topic == self.lidar_topic:
                    if self.lidar_refs and stamp_ns <= self.lidar_refs[-1].stamp_ns:
                        self._skip_cloud(ref)
                        continue
                    self.lidar_refs.append(ref)
                    groups += sync.add_lidar(stamp_ns, ref, log_time)
                elif topic in pixel_topics:
                    self.pixel_refs[(*pixel_topics[topic], stamp_ns)] = ref
                else:
                    groups += sync.add_camera(self.camera_names[topic], stamp_ns, ref, log_time)
        groups += sync.flush()
        if self.skipped_clouds:
            log.warning("bag %s: %d cloud(s) on %s skipped whose stamps are not after the previous cloud's (a looped "
                        "or restarted recording, or clouds out of order); read them as a bag of their own",
                        self.path, self.skipped_clouds, self.lidar_topic)
        self.groups = groups
        self.sync_stats = sync.stats
        if not groups:
            raise SourceError(f"bag {self.path}: no messages on the LiDAR topic {self.lidar_topic}")
        self._check_calibration()

    def _messages(self, reader: AnyReader, connections, part: int):
        """reader.messages, with a damaged file (a part cut off or overwritten) as a SourceError."""
        try:
            yield from reader.messages(connections=connections)
        except Exception as error:  # rosbags raises several types for damaged files
            raise SourceError(f"bag {self.path}: part {self.parts[part].name} is damaged ({error}); if a recorder "
                              f"was killed while writing it, `clip2scene reindex {self.path}` repairs it") from None

    def _skip_cloud(self, ref: _Ref) -> None:
        # Stamps that go backwards would pair the cloud with the wrong images and sweeps and break
        # the older-sweep order: such clouds are counted and left out.
        if not self.skipped_clouds:
            log.warning("bag %s: cloud at t=%.3f s is not after the previous cloud (t=%.3f s); skipped", self.path,
                        ref.stamp_ns * 1e-9, self.lidar_refs[-1].stamp_ns * 1e-9)
        self.skipped_clouds += 1

    def _drop_unposed_clouds(self) -> None:
        """Clouds before the first or after the last ego pose on /tf (a recording that started before odometry
        arrived) are left out, counted in unposed_clouds, with one warning; the rest of the recording is read."""
        posed = []
        for group in self.groups:
            try:
                self._ego_pose(group.lidar.stamp_ns)
                posed.append(group)
            except TransformError as error:
                last_error = error
        self.unposed_clouds = len(self.groups) - len(posed)
        if not posed:
            raise SourceError(f"bag {self.path}: no cloud on {self.lidar_topic} can be placed: {last_error}; the "
                              f"recording's /tf must cover its clouds")
        if self.unposed_clouds:
            log.warning("bag %s: %d cloud(s) on %s outside the ego poses on /tf left out (%s)", self.path,
                        self.unposed_clouds, self.lidar_topic, last_error)
        self.groups = posed

    def _check_calibration(self) -> None:
        """Decide the ego frame and drop cameras that cannot be placed, with a warning per camera."""
        lidar_frame = self.lidar_refs[0].frame_id
        self.lidar_frame = lidar_frame
        try:
            for frame in sorted(self.tree.frames):
                self.tree.root(frame)
        except TransformError as error:
            raise SourceError(f"bag {self.path}: /tf and /tf_static {error} (a frame is its own ancestor); fix the "
                              f"transforms the recording was made with, each frame needs one parent") from None
        self.ego_frame = self.tree.root(lidar_frame, static_only=True) if lidar_frame in self.tree.frames else lidar_frame
        self.world_frame = self.tree.root(self.ego_frame)
        self.has_poses = self.world_frame != self.ego_frame
        if self.has_poses:
            self._drop_unposed_clouds()
        if self.sweeps and not self.has_poses:
            raise MissingPosesError(f"bag {self.path}: older sweeps need ego poses, but /tf has no transform to the "
                                    f"LiDAR's frame tree ({self.ego_frame!r}); record odometry on /tf or open the bag "
                                    f"with sweeps=0")
        usable = {}
        for topic in self.camera_topics:
            name = self.camera_names[topic]
            frame_ids = {g.cameras[name].frame_id for g in self.groups if name in g.cameras}
            problem = None
            if name not in self.intrinsics:
                problem = "no valid CameraInfo"
            elif frame_ids:
                try:
                    self.tree.lookup(next(iter(frame_ids)), self.ego_frame)
                except TransformError as error:
                    problem = f"no static transform from the LiDAR's frame tree: {error}"
            if problem:
                log.warning("bag %s: camera %s not used (%s)", self.path, topic, problem)
            else:
                usable[topic] = name
        self.usable_cameras = usable

    # -- frames ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.groups)

    def _raw(self, ref: _Ref) -> bytes:
        reader = self._open()[ref.part]
        connection = next(c for c in reader.connections if c.topic == ref.connection.topic
                          and c.msgtype == ref.connection.msgtype)
        for _, log_time, raw in reader.messages(connections=[connection], start=ref.log_time_ns,
                                                stop=ref.log_time_ns + 1):
            if header_of(raw)[0] == ref.stamp_ns:
                return raw
        raise SourceError(f"bag {self.path}: message on {ref.connection.topic} at log time {ref.log_time_ns} "
                          f"disappeared; was the bag modified while reading?")

    def _ego_pose(self, stamp_ns: int) -> np.ndarray:
        if not self.has_poses:
            return np.eye(4)
        return self.tree.lookup(self.world_frame, self.ego_frame, stamp_ns)

    def __getitem__(self, index: int) -> Frame:
        index = self._check_index(index)
        frame = self._frame(self.groups[index])
        first = max(0, index - self.sweeps)
        frame.sweeps = [self._frame(self.groups[i]) for i in range(index - 1, first - 1, -1)]
        return frame

    def _frame(self, group) -> Frame:
        ref: _Ref = group.lidar
        what = f"{self.lidar_topic} at t={ref.stamp_ns * 1e-9:.3f} s in {self.path}"
        cloud = conv.decode_cloud(self._deserialize(ref), self.label_field, what)
        try:
            lidar_to_ego = self.tree.lookup(self.ego_frame, ref.frame_id) if ref.frame_id in self.tree.frames \
                else np.eye(4)
            ego_pose = self._ego_pose(ref.stamp_ns)
        except TransformError as error:
            raise SourceError(f"{what}: cannot place the cloud: {error}; the recording's /tf must cover every "
                              f"cloud (read a slice of it with ?start=..&stop=..)") from None
        cameras = []
        for topic, name in self.usable_cameras.items():
            if name in group.cameras:
                camera = self._camera(name, topic, group.cameras[name], lidar_to_ego, ego_pose)
                if camera is not None:
                    cameras.append(camera)
        return Frame(points=cloud.points, stamp_ns=ref.stamp_ns, fields=cloud.fields, lidar_to_ego=lidar_to_ego,
                     ego_pose=ego_pose, cameras=cameras, labels=cloud.labels,
                     name=f"{self.path.name}/{ref.stamp_ns}", frame_id=ref.frame_id)

    def _deserialize(self, ref: _Ref):
        return TYPESTORE.deserialize_cdr(self._raw(ref), ref.connection.msgtype)

    def _camera(self, name: str, topic: str, ref: _Ref, lidar_to_ego: np.ndarray, ego_pose: np.ndarray):
        what = f"{topic} at t={ref.stamp_ns * 1e-9:.3f} s in {self.path}"
        intrinsics = self.intrinsics[name]
        try:
            image = conv.decode_image(self._deserialize(ref), what)
            if image.shape[:2] != (intrinsics.height, intrinsics.width):
                raise conv.MessageError(f"{what}: image is {image.shape[1]}x{image.shape[0]} but its CameraInfo says "
                                        f"{intrinsics.width}x{intrinsics.height}")
            pixels = {kind: conv.decode_label_image(self._deserialize(pixel_ref), f"{kind} of {what}")
                      for kind in conv.PIXEL_IMAGES
                      if (pixel_ref := self.pixel_refs.get((kind, name, ref.stamp_ns))) is not None}
            camera_pose = self._ego_pose(ref.stamp_ns)
            camera_to_ego = self.tree.lookup(self.ego_frame, ref.frame_id)
        except (conv.MessageError, TransformError) as error:
            problem = error if isinstance(error, conv.MessageError) else f"{what}: {error}"
            log.warning("%s; camera skipped for this frame", problem)
            return None
        # Points move with the ego between the sweep's and the image's stamps: go through the world.
        lidar_to_camera = invert(camera_to_ego) @ invert(camera_pose) @ ego_pose @ lidar_to_ego
        lidar_to_camera[:3, 3] += intrinsics.offset  # a rectified stereo camera's baseline, from its P
        return Camera(name=name, image=image, intrinsics=intrinsics.K, lidar_to_camera=lidar_to_camera,
                      stamp_ns=ref.stamp_ns, distortion_model=intrinsics.distortion_model,
                      distortion=intrinsics.distortion, **pixels,
                      ego_pose=camera_pose if self.has_poses else None, frame_id=ref.frame_id)
