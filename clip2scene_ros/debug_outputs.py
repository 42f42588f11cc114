"""The segmentation node's debug topics (publish_debug), one std_msgs/Float64 per value, as Autoware's nodes do:
  ~/debug/processing_time_ms/<stage>   each stage's time for the sweep (the stages of segmentation/info)
  ~/debug/pipeline_latency_ms          from the sweep's header stamp to publishing
The latency topic is created when publish_debug is first true, a stage's topic with the first sweep that has
that stage; nothing is published while publish_debug is false or a topic has no subscriber.
"""

from __future__ import annotations

import re

from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float64

LATENCY_TOPIC = "~/debug/pipeline_latency_ms"
STAGE_TOPIC = "~/debug/processing_time_ms/"


def stage_topic(stage: str) -> str:
    """The topic of one stage: characters a topic name cannot hold become '_' (and a leading digit gets one)."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", stage) or "_"
    return STAGE_TOPIC + ("_" + name if name[0].isdigit() else name)


class DebugOutputs:
    def __init__(self, node, enabled: bool):
        self.node = node
        self.qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self.enabled = False
        self.latency_pub = None
        self.stage_pubs: dict[str, object] = {}  # stage name -> publisher, created by the worker thread
        self.enable(enabled)

    def enable(self, enabled: bool) -> None:
        if enabled and self.latency_pub is None:
            self.latency_pub = self.node.create_publisher(Float64, LATENCY_TOPIC, self.qos)
        self.enabled = enabled

    def wanted(self) -> bool:
        """Whether a debug topic has a subscriber while publish_debug is true."""
        if not self.enabled:
            return False
        publishers = [self.latency_pub, *list(self.stage_pubs.values())]
        return any(pub.get_subscription_count() for pub in publishers)

    def publish(self, timings_ms: dict[str, float], latency_ms: float) -> None:
        if not self.enabled:
            return
        for stage, value in timings_ms.items():
            pub = self.stage_pubs.get(stage)
            if pub is None:
                pub = self.stage_pubs[stage] = self.node.create_publisher(Float64, stage_topic(stage), self.qos)
            if pub.get_subscription_count():
                pub.publish(Float64(data=float(value)))
        if self.latency_pub.get_subscription_count():
            self.latency_pub.publish(Float64(data=float(latency_ms)))
