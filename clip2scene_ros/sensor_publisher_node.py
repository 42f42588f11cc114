"""Plays any clip2scene data source on ROS 2 topics, as a vehicle's drivers would publish it.

Topics (the same layout the bag reader and the recorder use):
  <lidar_topic>                          sensor_msgs/PointCloud2 (x, y, z, intensity, ring, time[, label])
  /<camera>/image_raw[/compressed]       sensor_msgs/Image (rgb8) or CompressedImage (jpeg)
  /<camera>/camera_info                  sensor_msgs/CameraInfo
  /<camera>/labels                       sensor_msgs/Image (mono16 label ids), when the source has them
  /<camera>/instances                    sensor_msgs/Image (32SC1 surface ids of the synthetic world), the same way
Run: python -m clip2scene_ros.sensor_publisher_node --ros-args -p source:=synthetic:frames=40,seed=0
"""

from __future__ import annotations

import time

from geometry_msgs.msg import Point, Pose, PoseWithCovariance, Quaternion
from nav_msgs.msg import Odometry
from rclpy.duration import Duration
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

from clip2scene_core import messages as conv
from clip2scene_core.data import open_source
from clip2scene_core.data.rosbag2 import BagLayout, camera_namespace, pixel_image_topics

from . import conversions
from .params import Param, declare_all, qos_profile
from .runner import run

PARAMETERS = [
    Param("source", "synthetic:frames=40,seed=0,cameras=6", "data source string to play", read_only=True),
    Param("rate_hz", 10.0, "frames per second", 0.1, 100.0, read_only=True),
    Param("loop", False, "start again after the last frame", read_only=True),
    Param("restamp", True, "stamp messages with this node's clock instead of the source's", read_only=True),
    Param("compressed", True, "publish jpeg CompressedImage instead of rgb8 Image", read_only=True),
    Param("publish_labels", True, "publish ground-truth labels (cloud field label, /<camera>/labels, "
          "/<camera>/instances)", read_only=True),
    Param("exit_when_done", True, "shut down after the last frame (without loop)", read_only=True),
    Param("lidar_topic", "/lidar/points", "PointCloud2 topic", read_only=True),
    Param("odometry_topic", "/odom", "nav_msgs/Odometry of the ego pose (world -> base_link); empty: none",
          read_only=True),
    Param("reliability", "reliable", "QoS reliability: reliable or best_effort", read_only=True),
    Param("durability", "volatile", "QoS durability: volatile, or transient_local (the last 20 messages per topic "
          "also go to transient_local subscribers that match late)", read_only=True),
    Param("wait_for_topics", [], "start playing once each of these of its topics has a subscriber (discovery "
          "is per topic: a consumer's LiDAR subscription can match before its camera or odometry ones)",
          read_only=True),
    Param("wait_for_subscribers", 0, "start playing once the LiDAR topic has this many subscribers", 0, 100,
          read_only=True),
]


class SensorPublisher(Node):
    def __init__(self):
        super().__init__("clip2scene_sensor_publisher")
        v = declare_all(self, PARAMETERS)
        self.source_text, self.loop, self.restamp = v.source, v.loop, v.restamp
        self.publish_labels, self.exit_when_done = v.publish_labels, v.exit_when_done
        self.wait_for_subscribers, self.wait_for_topics = v.wait_for_subscribers, v.wait_for_topics
        qos = qos_profile(v, "", 20)
        lidar_topic, odometry_topic, compressed, rate = v.lidar_topic, v.odometry_topic, v.compressed, v.rate_hz

        self.layout = BagLayout(lidar_topic=lidar_topic, compressed=compressed)
        source = open_source(self.source_text)
        self.get_logger().info(f"loading {len(source)} frames from {self.source_text}")
        self.frames = list(source)  # rendering or decoding can be slower than real time: do it before playing
        self.cloud_pub = self.create_publisher(PointCloud2, lidar_topic, qos)
        self.odometry_pub = self.create_publisher(Odometry, odometry_topic, qos) if odometry_topic else None
        self.camera_pubs = {}
        for camera in self.frames[0].cameras if self.frames else []:
            topic = self.layout.camera_topic(camera.name)
            namespace = camera_namespace(topic).rstrip("/")
            self.camera_pubs[camera.name] = (
                self.create_publisher(CompressedImage if compressed else Image, topic, qos),
                self.create_publisher(CameraInfo, f"{namespace}/camera_info", qos),
                {kind: self.create_publisher(Image, pixel_topic, qos)  # Camera attribute -> its per-pixel images
                 for kind, pixel_topic in pixel_image_topics(topic, self.layout.label_images).items()})
        publishers = [self.cloud_pub, self.odometry_pub] + [
            p for image_pub, info_pub, pixel_pubs in self.camera_pubs.values()
            for p in (image_pub, info_pub, *pixel_pubs.values())]
        by_topic = {p.topic_name: p for p in publishers if p is not None}
        unknown = [t for t in self.wait_for_topics if t not in by_topic]
        if unknown:
            raise ValueError(f"parameter wait_for_topics: {unknown} are not published here; topics: {sorted(by_topic)}")
        self.awaited = [by_topic[t] for t in self.wait_for_topics]
        self.index = 0
        self.published = 0
        self.timer = self.create_timer(1.0 / rate, self.tick)

    def _consumers_ready(self) -> bool:
        if self.cloud_pub.get_subscription_count() < self.wait_for_subscribers:
            return False
        return all(publisher.get_subscription_count() > 0 for publisher in self.awaited)

    def tick(self) -> None:
        if self.published == 0 and not self._consumers_ready():
            return
        if self.index >= len(self.frames):
            if not self.loop:
                self.timer.cancel()
                self.get_logger().info(f"published {self.published} frames")
                if self.exit_when_done:
                    # Reliable: leave only once every matched reader has acknowledged everything (bounded).
                    deadline = time.monotonic() + 10.0
                    for publisher in self.publishers:
                        publisher.wait_for_all_acked(Duration(seconds=max(0.0, deadline - time.monotonic())))
                    raise SystemExit(0)
                return
            self.index = 0
        frame = self.frames[self.index]
        self.index += 1
        now_ns = self.get_clock().now().nanoseconds
        shift = now_ns - frame.stamp_ns if self.restamp else 0
        if self.odometry_pub is not None:
            x, y, z, w = conv.matrix_to_quaternion(frame.ego_pose)
            position = Point(x=float(frame.ego_pose[0, 3]), y=float(frame.ego_pose[1, 3]), z=float(frame.ego_pose[2, 3]))
            pose = PoseWithCovariance(pose=Pose(position=position, orientation=Quaternion(x=x, y=y, z=z, w=w)))
            self.odometry_pub.publish(Odometry(header=conversions.header(frame.stamp_ns + shift, self.layout.world_frame),
                                               child_frame_id=self.layout.ego_frame, pose=pose))
        labels = frame.labels if self.publish_labels else None
        cloud = conv.encode_cloud(frame.points, frame.fields, labels)
        self.cloud_pub.publish(conversions.cloud_msg(cloud, conversions.header(frame.stamp_ns + shift,
                                                                               frame.frame_id)))
        for camera in frame.cameras:
            if camera.name not in self.camera_pubs:
                continue
            image_pub, info_pub, pixel_pubs = self.camera_pubs[camera.name]
            header = conversions.header(camera.stamp_ns + shift, camera.optical_frame)
            make = conversions.compressed_msg if self.layout.compressed else conversions.image_msg
            image_pub.publish(make(camera.image, header))
            info_pub.publish(conversions.camera_info_msg(camera, header))
            if self.publish_labels:
                for kind, pixel_pub in pixel_pubs.items():
                    if getattr(camera, kind) is not None:
                        pixel_pub.publish(conversions.image_msg(getattr(camera, kind), header))
        self.published += 1


def main(args=None) -> None:
    raise SystemExit(run(SensorPublisher, args))


if __name__ == "__main__":
    main()
