"""Plays a clip2scene data source on ROS 2 topics.

    ros2 launch clip2scene_ros sensor_publisher.launch.py source:=synthetic:frames=40,seed=0,cameras=6
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument

from clip2scene_ros.launching import node_from_params


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("clip2scene_ros"), "config", "sensor_publisher.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=default_params, description="node parameters (YAML)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("source", default_value="", description="clip2scene data source string to play "
                              "(empty: params file)"),
        DeclareLaunchArgument("use_sim_time", default_value="",
                              description="true: use /clock (bag playback); empty: params file"),
        node_from_params("sensor_publisher_node", "clip2scene_sensor_publisher", ("source", "use_sim_time")),
    ])
