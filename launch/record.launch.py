"""Record aligned LiDAR-camera pairs for pretraining.

    ros2 launch clip2scene_ros record.launch.py output_dir:=/data/run1 calibration_file:=/path/calibration.yaml
    clip2scene pretrain --data bag:/data/run1 --teacher maskclip --vocabulary nuscenes --out /data/student
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    share = get_package_share_directory("clip2scene_ros")
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "record_node.yaml"),
                              description="node parameters (YAML)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("output_dir", default_value="recordings/run", description="new recording folder"),
        DeclareLaunchArgument("calibration_file", default_value="", description="LiDAR/camera static transforms"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (bag playback)"),
        Node(package="clip2scene_ros", executable="record_node", name="clip2scene_recorder",
             namespace=LaunchConfiguration("namespace"), output="screen",
             parameters=[LaunchConfiguration("params_file"),
                         {"output_dir": LaunchConfiguration("output_dir"),
                          "calibration_file": LaunchConfiguration("calibration_file"),
                          "use_sim_time": LaunchConfiguration("use_sim_time")}]),
    ])
