"""The sensor publisher node, as its own process, plays a source over DDS and every frame arrives intact."""

import numpy as np
import pytest

from clip2scene_core import messages as conv
from clip2scene_core.data import open_source
from ros_helpers import node_process, spin_until

pytestmark = pytest.mark.ros


def test_publisher_plays_every_frame_over_dds(ros_node, tmp_path):
    from rclpy.qos import DurabilityPolicy, QoSProfile
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

    # Transient-local on both sides: what is sent before a reader has matched its writer still arrives.
    qos = QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL)

    source_text = "synthetic:frames=3,seed=4,cameras=2,width=96,height=64"
    clouds, images, infos, labels, instances = [], [], [], [], []
    ros_node.create_subscription(PointCloud2, "/lidar/points", clouds.append, qos)
    ros_node.create_subscription(CompressedImage, "/cam_front/image_raw/compressed", images.append, qos)
    ros_node.create_subscription(CameraInfo, "/cam_front/camera_info", infos.append, qos)
    ros_node.create_subscription(Image, "/cam_front/labels", labels.append, qos)
    ros_node.create_subscription(Image, "/cam_front/instances", instances.append, qos)
    with node_process("clip2scene_ros.sensor_publisher_node", "config/sensor_publisher.yaml",
                      {"source": source_text, "rate_hz": 20.0, "wait_for_subscribers": 1, "restamp": False,
                       "wait_for_topics": "[/cam_front/image_raw/compressed,/cam_front/camera_info,/cam_front/labels,"
                                          "/cam_front/instances]",
                       "durability": "transient_local"},
                      tmp_path / "publisher.log") as process:
        spin_until(ros_node, lambda: all(len(messages) == 3 for messages in (clouds, images, infos, labels, instances)),
                   60, lambda: f"three frames on every topic (got {len(clouds)} clouds, {len(images)} images, "
                   f"{len(infos)} camera infos, {len(labels)} label images, {len(instances)} instance images)",
                   [process])
        process.wait(timeout=30)  # exit_when_done
    assert process.returncode == 0
    frames = list(open_source(source_text))
    for message, frame in zip(clouds, frames):
        decoded = conv.decode_cloud(message)
        assert decoded.stamp_ns == frame.stamp_ns
        assert np.array_equal(decoded.points, frame.points) and np.array_equal(decoded.labels, frame.labels)
    camera = frames[0].camera("CAM_FRONT")
    assert np.abs(conv.decode_image(images[0]).astype(int) - camera.image).mean() < 8
    assert np.allclose(conv.decode_camera_info(infos[0]).K, camera.intrinsics)
    assert np.array_equal(conv.decode_label_image(labels[0]), camera.label_image)
    assert instances[0].encoding == "32SC1" and np.array_equal(conv.decode_label_image(instances[0]),
                                                                camera.instance_image)
