"""The segmentation node's objects (vision_msgs/Detection3DArray, LabelInfo, markers) and text query, received
across processes over DDS."""

import time

import numpy as np
import pytest

from clip2scene_core import messages as conv
from clip2scene_core.data import open_source
from clip2scene_core.objects import ObjectConfig, detect_objects
from clip2scene_core.vocabulary import load_vocabulary
from ros_helpers import node_process, spin_for, spin_until

pytestmark = [pytest.mark.ros, pytest.mark.slow]
SOURCE = "synthetic:frames=1,seed=7,cameras=0"


def read_field(message, name: str) -> np.ndarray:
    """One field of a dense PointCloud2 as an array."""
    field = next(f for f in message.fields if f.name == name)
    dtype = np.dtype(conv.POINT_FIELD_TYPES[field.datatype])
    rows = np.frombuffer(bytes(message.data), np.uint8).reshape(-1, message.point_step)
    return rows[:, field.offset:field.offset + dtype.itemsize].copy().view(dtype).ravel()


@pytest.fixture(scope="module")
def vision_msgs():
    return pytest.importorskip("vision_msgs.msg", reason="vision_msgs is not installed: it comes with ROS 2 "
                               "(ros-jazzy-vision-msgs); here tools/install_shared_ros.sh builds it from "
                               "../shared/ros2-jazzy, which make setup runs where that folder exists")


def test_objects_and_a_query_set_at_run_time_reach_another_process(ros_node, vision_msgs, tiny_student, tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.parameter import Parameter
    from rclpy.parameter_client import AsyncParameterClient
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2
    from visualization_msgs.msg import MarkerArray

    from clip2scene_ros import conversions

    vocabulary = load_vocabulary("nuscenes")
    detections, label_infos, markers, clouds, queries, diagnostics = [], [], [], [], [], []
    ros_node.create_subscription(vision_msgs.Detection3DArray, "segmentation/objects", detections.append, 20)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    ros_node.create_subscription(vision_msgs.LabelInfo, "segmentation/label_info", label_infos.append, latched)
    ros_node.create_subscription(MarkerArray, "segmentation/objects/markers", markers.append, 20)
    ros_node.create_subscription(PointCloud2, "segmentation/points", clouds.append, 20)
    ros_node.create_subscription(PointCloud2, "segmentation/query", queries.append, 20)
    ros_node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 20)
    publisher = ros_node.create_publisher(PointCloud2, "/lidar/points", 10)
    frame = open_source(SOURCE)[0]
    # The tiny student's labels are not accurate: every class is a thing here, so that objects are certain.
    things = vocabulary.names[:12]
    parameters = {"mode": "student", "checkpoint": str(tiny_student), "qos_reliability": "reliable",
                  "thing_classes": "[" + ",".join(things) + "]", "objects_distance_m": 0.8, "objects_min_points": 8}
    with node_process("clip2scene_ros.segment_node", "config/segment_node.yaml", parameters,
                      tmp_path / "segmenter.log") as segmenter:
        spin_until(ros_node, lambda: publisher.get_subscription_count() > 0
                   and ros_node.count_publishers("segmentation/objects") > 0, 60, "the segmenter", [segmenter])
        spin_until(ros_node, lambda: bool(label_infos), 30, "the label map (transient local)", [segmenter])
        assert [(c.class_id, c.class_name) for c in label_infos[-1].class_map] == list(enumerate(vocabulary.names))

        def send_until(predicate, what, stamp):
            message = conversions.cloud_msg(conv.encode_cloud(frame.points, frame.fields),
                                            conversions.header(stamp, "lidar"))
            deadline = time.monotonic() + 60
            while not predicate() and time.monotonic() < deadline:
                publisher.publish(message)
                spin_for(ros_node, 1.0, predicate)
            assert predicate(), f"no {what} from the segmenter"

        send_until(lambda: detections and markers and clouds, "objects, markers and labelled cloud", 1_000)
        received, cloud = detections[0], clouds[0]
        assert received.header.frame_id == "lidar" and conv.stamp_to_ns(received.header.stamp) == 1_000
        decoded = conv.decode_cloud(cloud, label_field="label")
        assert "query_similarity" not in [f.name for f in cloud.fields]  # no query set yet
        # The objects are the core's for the labels the node published (its own clustering, same parameters).
        labels = np.where(decoded.labels == 65535, -1, decoded.labels)
        thing_flags = np.array([name in things for name in vocabulary.names])
        expected = detect_objects(decoded.points, labels, read_field(cloud, "score"), thing_flags, ObjectConfig(0.8, 8))
        assert len(received.detections) == len(expected.objects) > 0
        for message, want in zip(received.detections, expected.objects):
            (hypothesis,) = message.results
            assert hypothesis.hypothesis.class_id == str(want.class_index)
            assert vocabulary.names[int(hypothesis.hypothesis.class_id)] in things
            assert hypothesis.hypothesis.score == pytest.approx(want.score, abs=1e-5)
            center = message.bbox.center.position
            np.testing.assert_allclose([center.x, center.y, center.z], want.box.center, atol=1e-4)
            size = message.bbox.size
            np.testing.assert_allclose([size.x, size.y, size.z], want.box.size, atol=1e-4)
            q = message.bbox.center.orientation
            assert 2 * np.arctan2(q.z, q.w) == pytest.approx(want.box.yaw, abs=1e-5)
        assert len(markers[0].markers) == 1 + 2 * len(expected.objects)  # delete-all, then a cube and a label each
        spin_until(ros_node, lambda: any(kv.key == "objects_ms" and float(kv.value) > 0 for d in diagnostics
                                         for s in d.status for kv in s.values), 30, "the objects stage time",
                   [segmenter])

        client = AsyncParameterClient(ros_node, "clip2scene_segmenter")
        spin_until(ros_node, lambda: client.services_are_ready(), 30, "the parameter services", [segmenter])
        bad = client.set_parameters([Parameter("thing_classes", Parameter.Type.STRING_ARRAY, ["unicorn"])])
        spin_until(ros_node, bad.done, 30, "a rejected thing_classes", [segmenter])
        assert not bad.result().results[0].successful and "unicorn" in bad.result().results[0].reason
        future = client.set_parameters([Parameter("query", Parameter.Type.STRING, "a parked car"),
                                        Parameter("query_threshold", Parameter.Type.DOUBLE, 0.0)])
        spin_until(ros_node, future.done, 30, "the query", [segmenter])
        assert all(result.successful for result in future.result().results)
        clouds.clear()
        send_until(lambda: queries and clouds, "query cloud", 2_000)
        similarity = read_field(clouds[-1], "query_similarity")
        assert similarity.shape == (len(frame),) and np.isfinite(similarity).all()
        assert (np.abs(similarity) <= 1.0 + 1e-5).all() and similarity.std() > 0
        matches = conv.decode_cloud(queries[-1], label_field=None)
        assert conv.stamp_to_ns(queries[-1].header.stamp) == 2_000
        assert len(matches.points) == int((similarity > 0.0).sum())
        np.testing.assert_array_equal(matches.points, frame.points[similarity > 0.0])
        assert (read_field(queries[-1], "similarity") > 0.0).all()
        assert segmenter.poll() is None


def test_without_vision_msgs_the_node_says_so_and_publishes_markers(ros_node, tiny_student, tmp_path):
    """A ROS install without vision_msgs, simulated by a package of that name that fails to import."""
    import os

    from sensor_msgs.msg import PointCloud2
    from visualization_msgs.msg import MarkerArray

    from clip2scene_ros import conversions

    shadow = tmp_path / "shadow" / "vision_msgs"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('vision_msgs is not installed (simulated)')\n")
    markers = []
    ros_node.create_subscription(MarkerArray, "segmentation/objects/markers", markers.append, 20)
    publisher = ros_node.create_publisher(PointCloud2, "/lidar/points", 10)
    frame = open_source(SOURCE)[0]
    message = conversions.cloud_msg(conv.encode_cloud(frame.points, frame.fields), conversions.header(3_000, "lidar"))
    parameters = {"mode": "student", "checkpoint": str(tiny_student), "qos_reliability": "reliable",
                  "thing_classes": "[" + ",".join(load_vocabulary("nuscenes").names) + "]"}
    path = os.pathsep.join([str(shadow.parent), os.environ.get("PYTHONPATH", "")])
    with node_process("clip2scene_ros.segment_node", "config/segment_node.yaml", parameters,
                      tmp_path / "segmenter.log", env={"PYTHONPATH": path}) as segmenter:
        spin_until(ros_node, lambda: publisher.get_subscription_count() > 0
                   and ros_node.count_publishers("segmentation/objects/markers") > 0, 60, "the segmenter",
                   [segmenter])
        deadline = time.monotonic() + 60
        while not markers and time.monotonic() < deadline:
            publisher.publish(message)
            spin_for(ros_node, 1.0, lambda: bool(markers))
        assert markers and len(markers[0].markers) > 1
        assert ros_node.count_publishers("segmentation/objects") == 0
        assert ros_node.count_publishers("segmentation/label_info") == 0
        assert segmenter.poll() is None
    assert "vision_msgs is not installed" in (tmp_path / "segmenter.log").read_text()
