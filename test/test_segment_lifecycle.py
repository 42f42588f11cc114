"""The lifecycle segmentation node as its own process, driven through lifecycle_msgs services over DDS."""

import pytest

from clip2scene_core import messages as conv
from clip2scene_core.calibration import frame_transforms, save_calibration
from clip2scene_core.data import open_source
from ros_helpers import node_process, spin_until

pytestmark = [pytest.mark.ros, pytest.mark.slow]
SOURCE = "synthetic:frames=1,seed=7,cameras=2,width=128,height=72"
NODE = "/clip2scene_segmenter"


def test_lifecycle_transitions_gate_the_inputs_and_a_failed_configure_leaves_the_node_up(ros_node, tiny_student,
                                                                                       tmp_path):
    lifecycle_msgs = pytest.importorskip("lifecycle_msgs.srv", reason="lifecycle_msgs is not installed")
    from lifecycle_msgs.msg import State, Transition
    from rclpy.parameter import Parameter
    from rclpy.parameter_client import AsyncParameterClient
    from sensor_msgs.msg import PointCloud2

    from clip2scene_ros import conversions
    from clip2scene_ros.msg import SegmentationInfo

    frame = open_source(SOURCE)[0]
    calibration = save_calibration(tmp_path / "calibration.yaml", frame_transforms(frame))
    infos = []
    ros_node.create_subscription(SegmentationInfo, "segmentation/info", infos.append, 20)
    publisher = ros_node.create_publisher(PointCloud2, "/lidar/points", 10)
    get_state = ros_node.create_client(lifecycle_msgs.GetState, f"{NODE}/get_state")
    change_state = ros_node.create_client(lifecycle_msgs.ChangeState, f"{NODE}/change_state")

    def call(client, request, what):
        future = client.call_async(request)
        spin_until(ros_node, future.done, 60, what, [segmenter])
        return future.result()

    def state() -> int:
        return call(get_state, lifecycle_msgs.GetState.Request(), "the state").current_state.id

    def transition(transition_id: int) -> bool:
        request = lifecycle_msgs.ChangeState.Request(transition=Transition(id=transition_id))
        return call(change_state, request, f"transition {transition_id}").success

    def send() -> int:
        stamp = ros_node.get_clock().now().nanoseconds
        publisher.publish(conversions.cloud_msg(conv.encode_cloud(frame.points), conversions.header(stamp, "lidar")))
        return stamp

    def segmented(stamp: int) -> bool:
        return any(conv.stamp_to_ns(info.header.stamp) == stamp for info in infos)

    def activate_and_segment() -> int:
        assert transition(Transition.TRANSITION_ACTIVATE) and state() == State.PRIMARY_STATE_ACTIVE
        spin_until(ros_node, lambda: publisher.get_subscription_count() > 0, 30, "the LiDAR subscribed", [segmenter])
        stamp = send()
        spin_until(ros_node, lambda: segmented(stamp), 60, "a cloud segmented while active", [segmenter])
        return stamp

    log = tmp_path / "segmenter.log"
    bad = tmp_path / "no_such_student.pt"
    with node_process("clip2scene_ros.segment_lifecycle_node", "config/segment_node.yaml",
                      {"checkpoint": str(bad), "calibration_file": str(calibration), "qos_reliability": "reliable"},
                      log) as segmenter:
        spin_until(ros_node, lambda: get_state.service_is_ready() and change_state.service_is_ready(), 60,
                   "the lifecycle services", [segmenter])
        assert state() == State.PRIMARY_STATE_UNCONFIGURED
        # configure fails on the missing checkpoint: FAILURE, still unconfigured, the node up, the path logged
        assert not transition(Transition.TRANSITION_CONFIGURE)
        assert state() == State.PRIMARY_STATE_UNCONFIGURED and segmenter.poll() is None
        assert "cannot configure" in log.read_text() and str(bad) in log.read_text()

        client = AsyncParameterClient(ros_node, NODE)
        spin_until(ros_node, client.services_are_ready, 30, "the parameter services", [segmenter])
        refused = client.set_parameters([Parameter("class_names", value=5)])
        spin_until(ros_node, refused.done, 30, "class_names 5 refused", [segmenter])
        assert not refused.result().results[0].successful
        fixed = client.set_parameters([Parameter("checkpoint", value=str(tiny_student))])
        spin_until(ros_node, fixed.done, 30, "the checkpoint set", [segmenter])
        assert fixed.result().results[0].successful  # start-up parameters are read at configure

        assert transition(Transition.TRANSITION_CONFIGURE) and state() == State.PRIMARY_STATE_INACTIVE
        spin_until(ros_node, lambda: ros_node.count_publishers("segmentation/info") > 0, 30, "the outputs",
                   [segmenter])
        inactive = send()  # inactive: the node has no LiDAR subscription, this cloud is never segmented
        assert publisher.get_subscription_count() == 0
        refused = client.set_parameters([Parameter("checkpoint", value="/other.pt")])
        spin_until(ros_node, refused.done, 30, "a start-up parameter refused while configured", [segmenter])
        assert not refused.result().results[0].successful
        assert "configure" in refused.result().results[0].reason

        first = activate_and_segment()
        assert transition(Transition.TRANSITION_DEACTIVATE) and state() == State.PRIMARY_STATE_INACTIVE
        spin_until(ros_node, lambda: publisher.get_subscription_count() == 0, 30, "the LiDAR unsubscribed",
                   [segmenter])
        deactivated = send()
        assert transition(Transition.TRANSITION_CLEANUP) and state() == State.PRIMARY_STATE_UNCONFIGURED
        spin_until(ros_node, lambda: ros_node.count_publishers("segmentation/info") == 0, 30,
                   "the outputs destroyed by cleanup", [segmenter])

        # Configured again from the parameters (the model loaded anew), it segments again.
        assert transition(Transition.TRANSITION_CONFIGURE) and state() == State.PRIMARY_STATE_INACTIVE
        second = activate_and_segment()
        assert [conv.stamp_to_ns(info.header.stamp) for info in infos] == [first, second]
        assert not segmented(inactive) and not segmented(deactivated)
        assert transition(Transition.TRANSITION_ACTIVE_SHUTDOWN) and state() == State.PRIMARY_STATE_FINALIZED
        assert segmenter.poll() is None
    assert segmenter.returncode == 0, log.read_text()
