"""What the launch files share: a node started from its params file, with launch arguments on top.

`launch` and `launch_ros` are imported only when a launch file runs (they exist on a real ROS 2 install,
not in this repository's venv), so launch_overrides can be tested here.
"""

from __future__ import annotations

BOOLEAN_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def launch_overrides(arguments: dict[str, str], booleans: tuple[str, ...] = ("use_sim_time",)) -> dict:
    """Launch arguments as parameter overrides on top of the params file: an empty argument keeps the file's
    value (use_sim_time included), so a launch default never replaces what the user's params file says.
    A boolean argument takes true/false, 1/0, yes/no (any case); anything else is a ValueError naming it."""
    overrides = {}
    for name, text in arguments.items():
        value = text.strip()
        if value == "":
            continue
        if name in booleans:
            if value.lower() not in BOOLEAN_WORDS:
                raise ValueError(f"launch argument {name} must be true or false (or empty: the params file's "
                                 f"value), got {text!r}")
            overrides[name] = BOOLEAN_WORDS[value.lower()]
        else:
            overrides[name] = text
    return overrides


def node_from_params(executable: str, name: str, overridable: tuple[str, ...], condition=None):
    """A launch action starting clip2scene_ros's `executable` as node `name` in the `namespace` argument, with
    the `params_file` argument and then the non-empty `overridable` arguments as its parameters (where
    `condition`, a launch condition, holds)."""
    from launch.actions import OpaqueFunction
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    def start(context):
        values = {argument: LaunchConfiguration(argument).perform(context) for argument in overridable}
        return [Node(package="clip2scene_ros", executable=executable, name=name,
                     namespace=LaunchConfiguration("namespace"), output="screen",
                     parameters=[LaunchConfiguration("params_file"), launch_overrides(values)])]

    return OpaqueFunction(function=start, condition=condition)
