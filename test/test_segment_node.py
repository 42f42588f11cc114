"""The segmentation node as its own process, fed over DDS by the sensor publisher process and by this test."""

import time

import numpy as np
import pytest

from clip2scene_core import messages as conv
from clip2scene_core.calibration import frame_transforms, save_calibration
from clip2scene_core.data import open_source
from ros_helpers import node_process, spin_for, spin_until

pytestmark = [pytest.mark.ros, pytest.mark.slow]
SOURCE = "synthetic:frames=3,seed=7,cameras=2,width=128,height=72"
# Discovery is per topic: the publisher starts once the segmenter has matched its camera topics too.
WAIT_FOR = "[/cam_front/image_raw/compressed,/cam_front_right/image_raw/compressed,/cam_front/camera_info," \
           "/cam_front_right/camera_info]"


@pytest.fixture(scope="module")
def checkpoint(tiny_student):
    return tiny_student


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    path = tmp_path_factory.mktemp("calibration") / "calibration.yaml"
    return save_calibration(path, frame_transforms(open_source(SOURCE)[0]))


def node_parameters(checkpoint, calibration, **overrides):
    parameters = {"mode": "student", "checkpoint": str(checkpoint), "calibration_file": str(calibration),
                  "camera_topics": "[/cam_front/image_raw/compressed,/cam_front_right/image_raw/compressed]",
                  "sync_timeout_ms": 500.0,
                  # Reliable: over shared memory alone, best-effort drops clouds this large (see README).
                  # Transient-local (the publishers too): under load a reader can match after the first sends.
                  "qos_reliability": "reliable", "qos_durability": "transient_local"}
    parameters.update(overrides)
    return parameters


def spread_cloud(ros_node, count: int):
    """A sweep stamped now whose points, spread at random over 100 x 100 x 5 m, fill a voxel each: slow to segment.
    With the compiled kernels on one thread, 40k points are a few hundred ms of work for the tiny student."""
    from clip2scene_ros import conversions

    points = (np.random.default_rng(0).random((count, 3)) * [100, 100, 5] - [50, 50, 2]).astype(np.float32)
    stamp = ros_node.get_clock().now().nanoseconds
    return conversions.cloud_msg(conv.encode_cloud(points), conversions.header(stamp, "lidar"))


def test_labelled_cloud_for_every_input_and_vocabulary_changes_at_run_time(ros_node, checkpoint, calibration,
                                                                            tmp_path):
    from rclpy.parameter import Parameter
    from rclpy.parameter_client import AsyncParameterClient
    from sensor_msgs.msg import PointCloud2

    from clip2scene_ros.msg import SegmentationInfo

    clouds, infos = [], []
    ros_node.create_subscription(PointCloud2, "segmentation/points", clouds.append, 20)
    ros_node.create_subscription(SegmentationInfo, "segmentation/info", infos.append, 20)
    with node_process("clip2scene_ros.segment_node", "config/segment_node.yaml",
                      node_parameters(checkpoint, calibration), tmp_path / "segmenter.log") as segmenter:
        spin_until(ros_node, lambda: all(ros_node.count_publishers(t) > 0 for t in ("segmentation/info",
                                                                                       "segmentation/points")),
                   60, "the segmenter's outputs", [segmenter])
        with node_process("clip2scene_ros.sensor_publisher_node", "config/sensor_publisher.yaml",
                          {"source": SOURCE, "rate_hz": 5.0, "wait_for_subscribers": 1, "restamp": False,
                           "wait_for_topics": WAIT_FOR, "durability": "transient_local"},
                          tmp_path / "publisher.log") as publisher:
            frames = list(open_source(SOURCE))
            # The node serves the newest sweep and drops the ones it could not start in time: the last is
            # always segmented, the others when the node keeps up with the publisher's 5 Hz.
            last = frames[-1].stamp_ns
            spin_until(ros_node, lambda: any(conv.stamp_to_ns(c.header.stamp) == last for c in clouds) and any(
                conv.stamp_to_ns(i.header.stamp) == last for i in infos), 90, "the last sweep segmented",
                [segmenter, publisher])
            publisher.wait(timeout=30)
        by_stamp = {frame.stamp_ns: frame for frame in frames}
        stamps = [conv.stamp_to_ns(c.header.stamp) for c in clouds]
        assert stamps == sorted(stamps) and set(stamps) <= set(by_stamp), stamps
        for message in clouds:
            frame = by_stamp[conv.stamp_to_ns(message.header.stamp)]
            decoded = conv.decode_cloud(message, label_field="label")
            assert np.array_equal(decoded.points, frame.points)
            assert set(frame.fields) and set(frame.fields) <= set(decoded.fields)  # the input's fields kept
            for name, values in frame.fields.items():
                assert np.allclose(decoded.fields[name], values, atol=1e-6), name
            labels = decoded.labels
            assert ((labels < 16) | (labels == 65535)).all() and (labels < 16).mean() > 0.99
        info = infos[0]
        assert info.mode == "student" and len(info.class_names) == 16
        assert info.num_points == len(by_stamp[conv.stamp_to_ns(info.header.stamp)])
        assert sum(info.class_point_counts) + info.num_unlabelled == info.num_points
        assert {"decode", "student"} <= set(info.stage_names) and info.total_latency_ms > 0

        client = AsyncParameterClient(ros_node, "clip2scene_segmenter")
        spin_until(ros_node, lambda: client.services_are_ready(), 30, "the parameter services", [segmenter])
        future = client.set_parameters([Parameter("class_names", Parameter.Type.STRING_ARRAY, ["road", "car", "tree"]),
                                        Parameter("class_prompts", Parameter.Type.STRING_ARRAY,
                                                  ["road|street", "car", "tree"])])
        spin_until(ros_node, future.done, 60, "the vocabulary change", [segmenter])
        assert all(result.successful for result in future.result().results)
        bad = client.set_parameters([Parameter("vocabulary", Parameter.Type.STRING, "/no/such/vocabulary.yaml")])
        spin_until(ros_node, bad.done, 30, "a rejected vocabulary", [segmenter])
        assert not bad.result().results[0].successful  # rejected with a reason; the node keeps its vocabulary
        infos.clear()
        with node_process("clip2scene_ros.sensor_publisher_node", "config/sensor_publisher.yaml",
                          {"source": SOURCE, "rate_hz": 5.0, "wait_for_subscribers": 1, "wait_for_topics": WAIT_FOR,
                           "durability": "transient_local"},
                          tmp_path / "publisher2.log"):
            spin_until(ros_node, lambda: len(infos) >= 1, 90, "a sweep with the new vocabulary", [segmenter])
        assert list(infos[-1].class_names) == ["road", "car", "tree"] and infos[-1].vocabulary == "parameters"
        assert segmenter.poll() is None


def test_malformed_messages_are_skipped_and_the_node_stays_up(ros_node, checkpoint, calibration, tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from sensor_msgs.msg import PointCloud2

    from clip2scene_ros import conversions
    from clip2scene_ros.msg import SegmentationInfo

    infos, diagnostics = [], []
    ros_node.create_subscription(SegmentationInfo, "segmentation/info", infos.append, 20)
    ros_node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 20)
    publisher = ros_node.create_publisher(PointCloud2, "/lidar/points", 10)
    frame = open_source(SOURCE)[0]
    good = conversions.cloud_msg(conv.encode_cloud(frame.points, frame.fields), conversions.header(1, "lidar"))
    no_z = conversions.cloud_msg(conv.encode_cloud(frame.points), conversions.header(2, "lidar"))
    no_z.fields = [f for f in no_z.fields if f.name != "z"]
    truncated = conversions.cloud_msg(conv.encode_cloud(frame.points), conversions.header(3, "lidar"))
    truncated.data = bytes(truncated.data)[:-7]
    wrong_step = conversions.cloud_msg(conv.encode_cloud(frame.points), conversions.header(4, "lidar"))
    wrong_step.point_step = 4
    with_nan = conversions.cloud_msg(conv.encode_cloud(np.full((10, 3), np.nan, np.float32)),
                                     conversions.header(5, "lidar"))
    with node_process("clip2scene_ros.segment_node", "config/segment_node.yaml",
                      # Volatile, as this test's own publisher (a transient-local reader cannot match it).
                      # One camera that never sends: the sweeps go without it, and the diagnostics say so.
                      node_parameters(checkpoint, calibration, camera_topics="[/cam_front/image_raw/compressed]",
                                      processing_budget_ms=1.0, qos_durability="volatile"),
                      tmp_path / "segmenter.log") as segmenter:
        spin_until(ros_node, lambda: publisher.get_subscription_count() > 0
                   and ros_node.count_publishers("segmentation/info") > 0, 60, "the segmenter", [segmenter])
        spin_until(ros_node, lambda: any(s.level == DiagnosticStatus.ERROR and "no cloud" in s.message
                                         for d in diagnostics for s in d.status), 30, "an ERROR while no input comes",
                   [segmenter])
        def skipped() -> int:
            return max((int(kv.value) for d in diagnostics for s in d.status for kv in s.values
                        if kv.key == "skipped_clouds"), default=0)
        for count, message in enumerate((no_z, truncated, wrong_step), 1):
            # One at a time: a burst would have the worker drop the older ones unread (newest first).
            publisher.publish(message)
            spin_until(ros_node, lambda: skipped() >= count, 30, f"diagnostics counting skip {count}", [segmenter])
        publisher.publish(with_nan)
        deadline = time.monotonic() + 60
        while not infos and time.monotonic() < deadline:  # a good cloud after the bad ones is still segmented
            publisher.publish(good)
            spin_for(ros_node, 1.0, lambda: bool(infos))
        assert infos, "no segmentation after the malformed clouds"
        # A 1 ms budget cannot be met: the diagnostics say so while sweeps are being processed.
        deadline = time.monotonic() + 30
        while not any("budget" in s.message for d in diagnostics for s in d.status) and time.monotonic() < deadline:
            publisher.publish(good)
            spin_for(ros_node, 0.3)
        assert any(s.level == DiagnosticStatus.ERROR and "budget" in s.message for d in diagnostics for s in d.status)
        assert any("no image from cam_front" in s.message for d in diagnostics for s in d.status)
        assert segmenter.poll() is None
    log = (tmp_path / "segmenter.log").read_text()
    assert "no z field" in log or "no x/y/z" in log or "no z" in log


def test_stale_sweeps_are_dropped_latency_is_from_the_stamp_and_debug_topics_on_request(ros_node, checkpoint,
                                                                                         calibration, tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.parameter import Parameter
    from rclpy.parameter_client import AsyncParameterClient
    from sensor_msgs.msg import PointCloud2
    from std_msgs.msg import Float64

    from clip2scene_ros import conversions
    from clip2scene_ros.msg import SegmentationInfo

    latency_topic = "/clip2scene_segmenter/debug/pipeline_latency_ms"
    decode_topic = "/clip2scene_segmenter/debug/processing_time_ms/decode"
    infos, diagnostics, latencies, decodes = [], [], [], []
    received_ns = {}  # id(info) -> when DDS received it here (the system clock, as the node's)

    def on_info(info, message_info) -> None:
        received_ns[id(info)] = message_info["received_timestamp"]
        infos.append(info)
    ros_node.create_subscription(SegmentationInfo, "segmentation/info", on_info, 20)
    ros_node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 20)
    ros_node.create_subscription(Float64, latency_topic, latencies.append, 20)
    ros_node.create_subscription(Float64, decode_topic, decodes.append, 20)
    publisher = ros_node.create_publisher(PointCloud2, "/lidar/points", 10)
    frame = open_source(SOURCE)[0]

    def cloud(age_s: float):
        stamp = ros_node.get_clock().now().nanoseconds - int(age_s * 1e9)
        return conversions.cloud_msg(conv.encode_cloud(frame.points, frame.fields), conversions.header(stamp, "lidar"))

    def value(key: str) -> int:
        return max((int(kv.value) for d in diagnostics for s in d.status for kv in s.values if kv.key == key),
                   default=0)

    def segment_fresh(received: list, what: str) -> None:
        deadline = time.monotonic() + 60
        while not received and time.monotonic() < deadline:
            publisher.publish(cloud(0.0))
            spin_for(ros_node, 1.0, lambda: bool(received))
        assert received, what

    with node_process("clip2scene_ros.segment_node", "config/segment_node.yaml",
                      node_parameters(checkpoint, calibration, camera_topics="[]", qos_durability="volatile",
                                      threads=1, max_age_ms=10000.0, qos_depth=10),  # room for the whole burst
                      tmp_path / "segmenter.log") as segmenter:
        spin_until(ros_node, lambda: publisher.get_subscription_count() > 0
                   and ros_node.count_publishers("segmentation/info") > 0, 60, "the segmenter", [segmenter])
        assert ros_node.count_publishers(latency_topic) == 0  # publish_debug is off: no debug topics at all
        publisher.publish(cloud(60.0))  # older than max_age_ms: dropped and counted, not segmented
        spin_until(ros_node, lambda: value("stale_clouds") >= 1, 30, "the stale cloud counted", [segmenter])
        assert not infos
        segment_fresh(infos, "no segmentation of a fresh cloud")
        info = infos[-1]
        # From the header stamp to publishing: at least the stages (which start at the message's arrival).
        assert sum(info.stage_latencies_ms) <= info.total_latency_ms < 60_000, (info.stage_names,
                                                                               info.stage_latencies_ms)
        assert not latencies and not decodes and ros_node.count_publishers(decode_topic) == 0

        client = AsyncParameterClient(ros_node, "clip2scene_segmenter")
        spin_until(ros_node, client.services_are_ready, 30, "the parameter services", [segmenter])
        future = client.set_parameters([Parameter("publish_debug", value=True), Parameter("max_age_ms", value=0.0)])
        spin_until(ros_node, future.done, 30, "publish_debug set", [segmenter])
        assert all(result.successful for result in future.result().results)
        spin_until(ros_node, lambda: ros_node.count_publishers(latency_topic) > 0, 30, "the latency topic",
                   [segmenter])
        segment_fresh(decodes, "no debug decode time")  # the stage topics come with the first sweep after
        spin_until(ros_node, lambda: bool(latencies), 30, "the debug pipeline latency", [segmenter])
        assert 0.0 < latencies[-1].data < 60_000 and decodes[-1].data >= 0.0
        publisher.publish(cloud(60.0))  # max_age_ms 0 (run time): old sweeps are segmented again
        spin_until(ros_node, lambda: any(i.total_latency_ms > 59_000 for i in infos), 60, "the old cloud segmented",
                   [segmenter])
        assert value("stale_clouds") == 1 and segmenter.poll() is None
        # Every cloud sent so far is settled (segmented or dropped): the last one sent was just segmented.
        before = infos[-1]
        assert before.stale_clouds == 1 and before.arrival_latency_ms <= before.total_latency_ms

        # A burst of 10: the worker segments the one it is given first and the newest; the 8 or 9 between are
        # replaced while they wait, and SegmentationInfo counts them. The burst opens with a slow sweep so that the
        # other 9 arrive while the worker is still on it however fast the student is (ordering, not the student's
        # speed: the 9 small sweeps reach the node in a few ms, the slow one keeps the worker for far longer).
        burst = [spread_cloud(ros_node, 160_000)] + [cloud(0.0) for _ in range(9)]
        stamps = [conv.stamp_to_ns(message.header.stamp) for message in burst]
        for message in burst:
            publisher.publish(message)
        spin_until(ros_node, lambda: any(conv.stamp_to_ns(i.header.stamp) == stamps[-1] for i in infos), 60,
                   "the newest cloud of the burst segmented", [segmenter])
        outputs = [i for i in infos if conv.stamp_to_ns(i.header.stamp) in stamps]
        assert 1 <= len(outputs) <= 2, [conv.stamp_to_ns(i.header.stamp) for i in outputs]
        last = outputs[-1]
        assert last.dropped_clouds - before.dropped_clouds == 10 - len(outputs), (last.dropped_clouds,
                                                                                   before.dropped_clouds)
        assert last.stale_clouds == 1
        for info in outputs:  # the latency reported is the one a subscriber sees: its receipt less the stamp
            received_ms = (received_ns[id(info)] - conv.stamp_to_ns(info.header.stamp)) * 1e-6
            assert abs(received_ms - info.total_latency_ms) < 50.0, (received_ms, info.total_latency_ms)
            assert 0.0 < info.arrival_latency_ms <= info.total_latency_ms



def test_extrinsics_from_tf_static_without_a_calibration_file(ros_node, checkpoint, tmp_path):
    """The rig's mounts on /tf_static (transient local), as a vehicle's robot_state_publisher sends them: with no
    calibration file the node places its cameras from them and says so."""
    tf2_msgs = pytest.importorskip("tf2_msgs.msg", reason="tf2_msgs is not installed (every ROS 2 install has it; "
                                                          "here it builds from ../shared/ros2-jazzy/tf2_msgs)")
    from geometry_msgs.msg import TransformStamped
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2

    from clip2scene_ros import conversions

    transforms = []
    for parent, child, T in frame_transforms(open_source(SOURCE)[0]):
        t = TransformStamped(header=conversions.header(0, parent), child_frame_id=child)
        t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = map(float, T[:3, 3])
        q = t.transform.rotation
        q.x, q.y, q.z, q.w = map(float, conv.matrix_to_quaternion(T))
        transforms.append(t)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    static_pub = ros_node.create_publisher(tf2_msgs.TFMessage, "/tf_static", latched)
    static_pub.publish(tf2_msgs.TFMessage(transforms=transforms))
    clouds = []
    ros_node.create_subscription(PointCloud2, "segmentation/points", clouds.append, 20)
    log = tmp_path / "segmenter.log"
    with node_process("clip2scene_ros.segment_node", "config/segment_node.yaml", node_parameters(checkpoint, "''"),
                      log) as segmenter:
        spin_until(ros_node, lambda: ros_node.count_publishers("segmentation/points") > 0
                   and static_pub.get_subscription_count() > 0, 60, "the segmenter", [segmenter])
        with node_process("clip2scene_ros.sensor_publisher_node", "config/sensor_publisher.yaml",
                          {"source": SOURCE, "rate_hz": 5.0, "wait_for_subscribers": 1, "restamp": False,
                           "wait_for_topics": WAIT_FOR, "durability": "transient_local"},
                          tmp_path / "publisher.log") as publisher:
            last = open_source(SOURCE)[-1].stamp_ns
            spin_until(ros_node, lambda: any(conv.stamp_to_ns(c.header.stamp) == last for c in clouds), 90,
                       "the last sweep segmented", [segmenter, publisher])
    text = log.read_text()
    for camera in ("cam_front", "cam_front_right"):
        assert f"camera {camera}: {camera} -> lidar from /tf_static" in text, text
    assert "cannot be placed" not in text and "image not used" not in text, text


def test_parameter_service_answers_while_a_slow_sweep_is_segmented(ros_node, checkpoint, calibration, tmp_path):
    """Ordering, not timing: the worker is seen busy on /diagnostics, then get_parameters is asked and answered
    before that sweep's SegmentationInfo comes (a node segmenting on its executor answers after it)."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.parameter_client import AsyncParameterClient
    from sensor_msgs.msg import PointCloud2

    from clip2scene_ros import conversions
    from clip2scene_ros.msg import SegmentationInfo

    infos, busy = [], []
    ros_node.create_subscription(SegmentationInfo, "segmentation/info", infos.append, 20)
    ros_node.create_subscription(DiagnosticArray, "/diagnostics", lambda d: busy.extend(
        float(kv.value) for s in d.status for kv in s.values if kv.key == "segmenting_for_s" and float(kv.value) > 0),
        20)
    publisher = ros_node.create_publisher(PointCloud2, "/lidar/points", 10)
    with node_process("clip2scene_ros.segment_node", "config/segment_node.yaml",
                      node_parameters(checkpoint, calibration, camera_topics="[]", qos_durability="volatile",
                                      threads=1), tmp_path / "segmenter.log") as segmenter:
        client = AsyncParameterClient(ros_node, "clip2scene_segmenter")
        spin_until(ros_node, lambda: publisher.get_subscription_count() > 0 and client.services_are_ready()
                   and ros_node.count_publishers("segmentation/info") > 0, 60, "the segmenter", [segmenter])
        for count in (40_000, 160_000, 640_000, 1_500_000):  # until a 1 Hz diagnostic falls inside one sweep
            cloud = spread_cloud(ros_node, count)
            publisher.publish(cloud)
            spin_until(ros_node, lambda: bool(busy) or bool(infos), 60, "the worker busy on /diagnostics",
                       [segmenter])
            if busy and not infos:
                break
            spin_until(ros_node, lambda: bool(infos), 120, "the sweep segmented", [segmenter])
            busy.clear()
            infos.clear()
        assert busy and not infos, "every sweep was segmented before a diagnostic saw the worker busy"
        future = client.get_parameters(["class_names", "processing_budget_ms"])
        spin_until(ros_node, lambda: future.done() or bool(infos), 60, "get_parameters or the sweep", [segmenter])
        assert future.done() and not infos, "get_parameters was answered only after the sweep was segmented"
        assert future.result().values[1].double_value == 100.0
        spin_until(ros_node, lambda: bool(infos), 120, "the slow sweep segmented", [segmenter])
        assert infos[0].header.stamp == cloud.header.stamp and infos[0].num_points == count
