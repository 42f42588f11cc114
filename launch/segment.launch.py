"""Live open-vocabulary LiDAR segmentation.

    ros2 launch clip2scene_ros segment.launch.py checkpoint:=/path/student.pt \
        calibration_file:=/path/calibration.yaml mode:=student rviz:=true
    ros2 launch clip2scene_ros segment.launch.py checkpoint:=/path/student.pt lifecycle:=true
    ros2 lifecycle set /clip2scene_segmenter configure && ros2 lifecycle set /clip2scene_segmenter activate

Parameters come from params_file (config/segment_node.yaml by default); the arguments below
override the most common ones when given (left empty, the params file's value stands).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from clip2scene_ros.launching import node_from_params


def generate_launch_description():
    share = get_package_share_directory("clip2scene_ros")
    arguments = [
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "segment_node.yaml"),
                              description="node parameters (YAML)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its outputs"),
        DeclareLaunchArgument("mode", default_value="", description="student, teacher or fusion (empty: params file)"),
        DeclareLaunchArgument("checkpoint", default_value="",
                              description="student checkpoint (.pt; empty: params file)"),
        DeclareLaunchArgument("calibration_file", default_value="",
                              description="LiDAR/camera static transforms (empty: params file)"),
        DeclareLaunchArgument("vocabulary", default_value="",
                              description="vocabulary YAML or shipped name (empty: params file)"),
        DeclareLaunchArgument("use_sim_time", default_value="",
                              description="true: use /clock (bag playback); empty: params file"),
        DeclareLaunchArgument("lifecycle", default_value="false",
                              description="true: the managed (lifecycle) node, unconfigured until "
                                          "`ros2 lifecycle set` configures and activates it"),
        DeclareLaunchArgument("rviz", default_value="false", description="start RViz with the shipped view"),
    ]
    rviz = Node(package="rviz2", executable="rviz2", name="rviz2", output="screen",
                arguments=["-d", os.path.join(share, "config", "clip2scene.rviz")],
                condition=IfCondition(LaunchConfiguration("rviz")))
    overridable = ("mode", "checkpoint", "calibration_file", "vocabulary", "use_sim_time")
    lifecycle = LaunchConfiguration("lifecycle")
    segmenters = [node_from_params("segment_node", "clip2scene_segmenter", overridable, UnlessCondition(lifecycle)),
                  node_from_params("segment_lifecycle_node", "clip2scene_segmenter", overridable,
                                   IfCondition(lifecycle))]
    return LaunchDescription(arguments + segmenters + [rviz])
