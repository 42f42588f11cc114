"""A launch_testing file, run by test_launch_files.py as `launch_test launch_file_check.py` (not by pytest).

It includes one shipped launch file with the arguments in $CLIP2SCENE_LAUNCH_CHECK (JSON: launch_file,
arguments, node, topics, parameters and, for the segmenter, cli) and checks that the node comes up under its
namespaced name, that its topics are there and that the values of the params file are applied; with cli,
it drives the real `ros2 param` and `ros2 topic` commands against the running node; with lifecycle, the real
`ros2 lifecycle` configures and activates it.
"""

import json
import os
import subprocess
import time
import unittest

import launch_testing
import launch_testing.actions
import launch_testing.asserts
import pytest
from launch import LaunchDescription
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource

SPEC = json.loads(os.environ.get("CLIP2SCENE_LAUNCH_CHECK", "{}"))
DEADLINE_S = 60.0


@pytest.mark.launch_test
def generate_test_description():
    include = IncludeLaunchDescription(PythonLaunchDescriptionSource(SPEC["launch_file"]),
                                       launch_arguments=list(SPEC["arguments"].items()))
    return LaunchDescription([include, launch_testing.actions.ReadyToTest()])


def ros2(*arguments: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run(["ros2", *arguments], capture_output=True, text=True, timeout=timeout)


def ros2_until(found, *arguments: str) -> subprocess.CompletedProcess:
    """`ros2 ...`, again until found(its output) holds (at most DEADLINE_S): with --no-daemon the verbs without a
    --timeout (topic list, lifecycle) look at the graph after only --spin-time of their own discovery."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        result = ros2(*arguments)
        if found(result.stdout + result.stderr) or time.monotonic() > deadline:
            return result


def ros2_lifecycle(verb: str, *arguments: str) -> subprocess.CompletedProcess:
    """`ros2 lifecycle VERB --no-daemon ...` once it has found the node (a transition is asked only then)."""
    return ros2_until(lambda output: "Node not found" not in output, "lifecycle", verb, "--no-daemon",
                      "--spin-time", "1", *arguments)


class TestLaunchedNode(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        import rclpy

        rclpy.init()
        cls.node = rclpy.create_node("clip2scene_launch_check")

    @classmethod
    def tearDownClass(cls):
        import rclpy

        cls.node.destroy_node()
        rclpy.shutdown()

    def spin_until(self, predicate, what: str) -> None:
        import rclpy

        deadline = time.monotonic() + DEADLINE_S
        while not predicate():
            self.assertLess(time.monotonic(), deadline, f"timed out waiting for {what}")
            rclpy.spin_once(self.node, timeout_sec=0.05)

    def test_node_topics_and_params_file(self):
        from rclpy.parameter import parameter_value_to_python
        from rclpy.parameter_client import AsyncParameterClient

        namespace, name = SPEC["node"].rsplit("/", 1)
        self.spin_until(lambda: (name, namespace) in self.node.get_node_names_and_namespaces(), SPEC["node"])
        self.spin_until(lambda: set(SPEC["topics"]) <= {t for t, _ in self.node.get_topic_names_and_types()},
                        f"the topics {SPEC['topics']}")
        client = AsyncParameterClient(self.node, SPEC["node"])
        self.spin_until(client.services_are_ready, "the parameter services")
        future = client.get_parameters(list(SPEC["parameters"]))
        self.spin_until(future.done, "the parameter values")
        values = [parameter_value_to_python(v) for v in future.result().values]
        self.assertEqual(dict(zip(SPEC["parameters"], values)), SPEC["parameters"])

    @unittest.skipUnless(SPEC.get("cli"), "the ros2 command line is driven against the segmenter only")
    def test_ros2_param_and_topic_command_line(self):
        from sensor_msgs.msg import PointCloud2

        from clip2scene_core import messages as conv
        from clip2scene_core.data import open_source
        from clip2scene_ros import conversions

        node = SPEC["node"]
        result = ros2("param", "set", "--no-daemon", "--timeout", "30", node, "class_names", "['road', 'car']")
        self.assertIn("Set parameter successful", result.stdout, result.stdout + result.stderr)
        # refused, with the reason
        result = ros2("param", "set", "--no-daemon", "--timeout", "30", node, "class_names", "5")
        self.assertIn("Setting parameter failed: parameter class_names must be a list of str",
                      result.stdout + result.stderr)
        # the node is up, the list kept
        result = ros2("param", "get", "--no-daemon", "--timeout", "30", node, "class_names")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("road", result.stdout)
        self.assertIn("car", result.stdout)
        info = f"{node.rsplit('/', 1)[0]}/segmentation/info"
        result = ros2_until(lambda output: info in output.split(), "topic", "list", "--no-daemon", "--spin-time", "1")
        self.assertIn(info, result.stdout.split())

        # `ros2 topic echo --once` of the segmenter's output while this node sends it clouds
        echo = subprocess.Popen(["ros2", "topic", "echo", "--once", "--no-daemon", info,
                                 "clip2scene_ros/msg/SegmentationInfo"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            self.spin_until(lambda: self.node.count_subscribers(info) > 0 or echo.poll() is not None,
                            "ros2 topic echo subscribed")
            frame = open_source("synthetic:frames=1,seed=7,cameras=0")[0]
            publisher = self.node.create_publisher(PointCloud2, "/lidar/points", 10)
            deadline = time.monotonic() + DEADLINE_S
            while echo.poll() is None and time.monotonic() < deadline:
                stamp = self.node.get_clock().now().nanoseconds
                publisher.publish(conversions.cloud_msg(conv.encode_cloud(frame.points),
                                                        conversions.header(stamp, "lidar")))
                try:
                    echo.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if echo.poll() is None:
                echo.kill()
            output = echo.communicate()[0]
        self.assertEqual(echo.returncode, 0, output)
        self.assertIn(f"num_points: {len(frame.points)}", output)
        self.assertIn("- road", output)  # the class_names set above
        self.assertIn("dropped_clouds:", output)


    @unittest.skipUnless(SPEC.get("lifecycle"), "for the lifecycle segmenter (segment.launch.py lifecycle:=true)")
    def test_ros2_lifecycle_command_line(self):
        node = SPEC["node"]
        info = f"{node.rsplit('/', 1)[0]}/segmentation/info"
        self.assertIn("unconfigured [1]", ros2_lifecycle("get", node).stdout)
        self.assertEqual(self.node.count_publishers(info), 0)  # no outputs before configure
        for transition in ("configure", "activate"):
            result = ros2_lifecycle("set", node, transition)
            self.assertIn("Transitioning successful", result.stdout, result.stdout + result.stderr)
        self.assertIn("active [3]", ros2_lifecycle("get", node).stdout)
        self.spin_until(lambda: self.node.count_publishers(info) > 0, f"{info} after configure")
        self.spin_until(lambda: self.node.count_subscribers("/lidar/points") > 0, "the LiDAR subscribed after activate")


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_every_process_ended_cleanly(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info)
