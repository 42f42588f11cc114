"""The segmenter's object and query outputs: boxes of the vocabulary's thing classes and a text query's matches.

Topics, relative to the node's namespace (each published only while it has a subscriber):
  segmentation/objects          vision_msgs/Detection3DArray: per object one hypothesis (class_id = the class
                                index as text, score = mean point score), the box in the LiDAR frame, id = instance
  segmentation/label_info       vision_msgs/LabelInfo: class index -> class name (transient local: late
                                subscribers get the current map); republished when the vocabulary changes
  segmentation/objects/markers  visualization_msgs/MarkerArray: a translucent cube and a label per object
  segmentation/query            PointCloud2 x, y, z, similarity: the points whose cosine to `query` is above
                                `query_threshold`
vision_msgs comes with every ROS 2 install (ros-<distro>-vision-msgs); where it is missing the node says so
and publishes the markers (and the query) only.
The node itself adds the `query_similarity` field to segmentation/points while a query is set.
"""

from __future__ import annotations

import math
import time

import numpy as np
from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from clip2scene_core import messages as conv
from clip2scene_core.objects import ObjectConfig, Objects, ObjectsError, detect_objects, thing_mask
from clip2scene_core.segmenter import Segmentation
from clip2scene_core.vocabulary import Vocabulary

from . import conversions
from .params import Param

try:
    import vision_msgs.msg as vision
except ImportError:  # not on this ROS install: markers only
    vision = None

PARAMETERS = [
    Param("thing_classes", [], "class names clustered into objects, overriding the vocabulary's 'thing' flags "
          "(run time)"),
    Param("objects_distance_m", ObjectConfig.distance_m, "largest gap within one object, metres (run time)",
          0.05, 10.0),
    Param("objects_min_points", ObjectConfig.min_points, "objects with fewer points are dropped (run time)", 1, 100000),
    Param("query", "", "text to score every point against, any words (run time); empty for none"),
    Param("query_threshold", 0.25, "cosine above which a point joins segmentation/query (run time)", -1.0, 1.0),
]
MARKER_ALPHA = 0.35


def quaternion_from_yaw(yaw: float) -> Quaternion:
    return Quaternion(x=0.0, y=0.0, z=math.sin(yaw / 2), w=math.cos(yaw / 2))


def box_pose(center: np.ndarray, yaw: float) -> Pose:
    return Pose(position=Point(x=float(center[0]), y=float(center[1]), z=float(center[2])),
                orientation=quaternion_from_yaw(yaw))


class ObjectOutputs:
    """Owns the object/query publishers and parameters of a node; `publish` turns one segmentation into them."""

    def __init__(self, node, values):
        self.node = node
        self.things_override = list(values.thing_classes)
        self.config = ObjectConfig(values.objects_distance_m, values.objects_min_points)
        self.threshold = values.query_threshold
        out = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.markers_pub = node.create_publisher(MarkerArray, "segmentation/objects/markers", out)
        self.query_pub = node.create_publisher(PointCloud2, "segmentation/query", out)
        self.detections_pub = self.label_info_pub = None
        if vision is not None:
            self.detections_pub = node.create_publisher(vision.Detection3DArray, "segmentation/objects", out)
            self.label_info_pub = node.create_publisher(vision.LabelInfo, "segmentation/label_info", latched)
        else:
            node.get_logger().warning("vision_msgs is not installed (apt install ros-$ROS_DISTRO-vision-msgs): "
                                      "segmentation/objects and segmentation/label_info are off; publishing the "
                                      "markers only")
        self.last_ms = 0.0

    # -- parameters -------------------------------------------------------------------------------

    def check(self, vocabulary: Vocabulary, names: list[str] | None = None) -> np.ndarray:
        """(C,) thing flags of vocabulary under thing_classes names (or the current ones); ValueError naming an
        unknown class."""
        names = self.things_override if names is None else names
        if not names:
            return thing_mask(vocabulary)
        unknown = sorted(set(names) - set(vocabulary.names))
        if unknown:
            raise ValueError(f"parameter thing_classes: {unknown} not in the vocabulary's classes {vocabulary.names}")
        return np.array([name in names for name in vocabulary.names], dtype=bool)

    def update(self, updates: dict, vocabulary: Vocabulary) -> str | None:
        """Apply the run-time parameters of this module among updates; the reason when refused (nothing is
        changed then)."""
        try:
            names = list(updates.get("thing_classes", self.things_override))
            self.check(vocabulary, names)
            config = ObjectConfig(float(updates.get("objects_distance_m", self.config.distance_m)),
                                  int(updates.get("objects_min_points", self.config.min_points)))
        except (ValueError, ObjectsError) as error:
            return str(error)
        self.things_override, self.config = names, config
        self.threshold = float(updates.get("query_threshold", self.threshold))
        return None

    def publish_label_info(self, vocabulary: Vocabulary, stamp_header: Header) -> None:
        if self.label_info_pub is not None:
            classes = [vision.VisionClass(class_id=i, class_name=name) for i, name in enumerate(vocabulary.names)]
            self.label_info_pub.publish(vision.LabelInfo(header=stamp_header, class_map=classes, threshold=0.0))

    # -- per sweep --------------------------------------------------------------------------------

    def wanted(self) -> bool:
        publishers = [self.markers_pub, self.query_pub, self.detections_pub]
        return any(p is not None and p.get_subscription_count() for p in publishers)

    def publish(self, header: Header, points: np.ndarray, segmentation: Segmentation,
                vocabulary: Vocabulary) -> dict[str, float]:
        """Objects and query matches of one sweep; returns the stage time {"objects": ms} when objects ran."""
        timings = {}
        subscribed = [p for p in (self.detections_pub, self.markers_pub) if p is not None and
                      p.get_subscription_count()]
        if subscribed:
            started = time.perf_counter()
            found = detect_objects(points, segmentation.labels, segmentation.scores, self.check(vocabulary),
                                   self.config)
            self.last_ms = timings["objects"] = (time.perf_counter() - started) * 1e3
            if self.detections_pub is not None and self.detections_pub.get_subscription_count():
                self.detections_pub.publish(self._detections(header, found))
            if self.markers_pub.get_subscription_count():
                self.markers_pub.publish(self._markers(header, found, vocabulary))
        if segmentation.similarity is not None and self.query_pub.get_subscription_count():
            keep = segmentation.similarity > self.threshold
            self.query_pub.publish(conversions.cloud_msg(
                conv.encode_cloud(points[keep], extra={"similarity": segmentation.similarity[keep]}), header))
        return timings

    def _detections(self, header: Header, found: Objects):
        detections = []
        for detected in found.objects:
            pose = box_pose(detected.box.center, detected.box.yaw)
            hypothesis = vision.ObjectHypothesisWithPose()
            hypothesis.hypothesis.class_id = str(detected.class_index)
            hypothesis.hypothesis.score = float(detected.score)
            hypothesis.pose.pose = pose
            size = detected.box.size
            box = vision.BoundingBox3D(center=pose, size=Vector3(x=float(size[0]), y=float(size[1]), z=float(size[2])))
            detections.append(vision.Detection3D(header=header, results=[hypothesis], bbox=box,
                                                 id=str(detected.instance)))
        return vision.Detection3DArray(header=header, detections=detections)

    def _markers(self, header: Header, found: Objects, vocabulary: Vocabulary) -> MarkerArray:
        markers = [Marker(header=header, action=Marker.DELETEALL)]
        for detected in found.objects:
            r, g, b = (v / 255 for v in vocabulary.classes[detected.class_index].color)
            size = detected.box.size
            cube = Marker(header=header, ns="objects", id=detected.instance, type=Marker.CUBE, action=Marker.ADD,
                          pose=box_pose(detected.box.center, detected.box.yaw),
                          scale=Vector3(x=max(float(size[0]), 0.05), y=max(float(size[1]), 0.05),
                                        z=max(float(size[2]), 0.05)),
                          color=ColorRGBA(r=r, g=g, b=b, a=MARKER_ALPHA))
            top = detected.box.center + [0.0, 0.0, size[2] / 2 + 0.3]
            text = Marker(header=header, ns="labels", id=detected.instance, type=Marker.TEXT_VIEW_FACING,
                          action=Marker.ADD, pose=box_pose(top, 0.0), scale=Vector3(x=0.0, y=0.0, z=0.5),
                          color=ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0),
                          text=f"{vocabulary.names[detected.class_index]} {detected.score:.2f}")
            markers += [cube, text]
        return MarkerArray(markers=markers)
