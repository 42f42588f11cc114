"""Record aligned LiDAR-camera pairs for pretraining.

    ros2 launch clip2scene_ros record.launch.py output_dir:=/data/run1 calibration_file:=/path/calibration.yaml
    clip2scene pretrain --data bag:/data/run1 --teacher maskclip --vocabulary nuscenes --out /data/student
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument

from clip2scene_ros.launching import node_from_params


def generate_launch_description():
    share = get_package_share_directory("clip2scene_ros")
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "record_node.yaml"),
                              description="node parameters (YAML)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("output_dir", default_value="", description="new recording folder (empty: params file)"),
        DeclareLaunchArgument("calibration_file", default_value="",
                              description="LiDAR/camera static transforms (empty: params file)"),
        DeclareLaunchArgument("use_sim_time", default_value="",
                              description="true: use /clock (bag playback); empty: params file"),
        node_from_params("record_node", "clip2scene_recorder", ("output_dir", "calibration_file", "use_sim_time")),
    ])
