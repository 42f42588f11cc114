"""What the launch files share: a node started from its params file, with launch arguments on top.

`launch` and `launch_ros` are imported only when a launch file runs (they exist on a real ROS 2 install,
not in this repository's venv), so launch_overrides can be tested here.
"""

from __future__ import annotations


def launch_overrides(arguments: dict[str, str], booleans: tuple[str, ...] = ("use_sim_time",)) -> dict:
    """Launch arguments as parameter overrides on top of the params file: an empty argument keeps the file's
    value, so a launch default never replaces what the user's params file says."""
    overrides = {}
    for name, text in arguments.items():
        if name in booleans:
            overrides[name] = text.strip().lower() in ("true", "1", "yes")
        elif text != "":
            overrides[name] = text
    return overrides


def node_from_params(executable: str, name: str, overridable: tuple[str, ...]):
    """A launch action starting clip2scene_ros's `executable` as node `name` in the `namespace` argument, with
    the `params_file` argument and then the non-empty `overridable` arguments as its parameters."""
    from launch.actions import OpaqueFunction
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    def start(context):
        values = {argument: LaunchConfiguration(argument).perform(context) for argument in overridable}
        return [Node(package="clip2scene_ros", executable=executable, name=name,
                     namespace=LaunchConfiguration("namespace"), output="screen",
                     parameters=[LaunchConfiguration("params_file"), launch_overrides(values)])]

    return OpaqueFunction(function=start)
