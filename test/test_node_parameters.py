"""Every node parameter is declared with a description (and a range for numbers) and shipped with its default
in config/; launch files are valid Python and run where launch_testing exists."""

import importlib
import py_compile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NODES = [("clip2scene_ros.segment_node", "config/segment_node.yaml", "clip2scene_segmenter"),
         ("clip2scene_ros.record_node", "config/record_node.yaml", "clip2scene_recorder"),
         ("clip2scene_ros.sensor_publisher_node", "config/sensor_publisher.yaml", "clip2scene_sensor_publisher")]

pytestmark = pytest.mark.ros


@pytest.mark.parametrize("module, params_file, node_name", NODES)
def test_params_file_ships_every_default(module, params_file, node_name):
    parameters = importlib.import_module(module).PARAMETERS
    shipped = yaml.safe_load((ROOT / params_file).read_text())[node_name]["ros__parameters"]
    assert set(shipped) == {p.name for p in parameters}
    for param in parameters:
        assert shipped[param.name] == param.default, param.name
        assert len(param.description) > 10, param.name
        is_number = isinstance(param.default, (int, float)) and not isinstance(param.default, bool)
        assert not is_number or (param.low is not None and param.low <= param.default <= param.high), param.name


@pytest.mark.parametrize("module, params_file, node_name", NODES)
def test_parameters_declare_with_the_shipped_values(ros_node, module, params_file, node_name):
    import rclpy
    from rclpy.parameter import Parameter

    from clip2scene_ros.params import declare_all

    shipped = yaml.safe_load((ROOT / params_file).read_text())[node_name]["ros__parameters"]
    overrides = [Parameter(name, Parameter.Type.STRING_ARRAY, value) if isinstance(value, list) and value == []
                 else Parameter(name, value=value) for name, value in shipped.items()]
    node = rclpy.create_node(f"declare_{node_name}", parameter_overrides=overrides)
    try:
        values = declare_all(node, importlib.import_module(module).PARAMETERS)
        assert vars(values) == shipped
        descriptor = node.describe_parameter(next(iter(shipped)))
        assert descriptor.description
    finally:
        node.destroy_node()


@pytest.mark.parametrize("launch_file", sorted((ROOT / "launch").glob("*.launch.py")), ids=lambda p: p.name)
def test_launch_files(launch_file):
    py_compile.compile(str(launch_file), doraise=True)
    text = launch_file.read_text()
    for config in ("segment_node.yaml", "record_node.yaml", "sensor_publisher.yaml"):
        if config in text:
            assert (ROOT / "config" / config).is_file()
    for argument in ("params_file", "namespace", "use_sim_time"):
        assert f'"{argument}"' in text, f"{launch_file.name} lacks the {argument} argument"


def test_empty_launch_arguments_keep_the_params_file_values():
    from clip2scene_ros.launching import launch_overrides

    assert launch_overrides({"mode": "", "checkpoint": "/ckpt/last.pt", "vocabulary": "", "use_sim_time": "false"}) \
        == {"checkpoint": "/ckpt/last.pt", "use_sim_time": False}
    assert launch_overrides({"use_sim_time": "True", "output_dir": "runs/a"}) == {"use_sim_time": True,
                                                                               "output_dir": "runs/a"}


@pytest.mark.parametrize("launch_file", sorted((ROOT / "launch").glob("*.launch.py")), ids=lambda p: p.name)
def test_launch_description_loads_where_launch_exists(launch_file):
    pytest.importorskip("launch_testing", reason="launch_testing is not installable from PyPI; the launch files "
                                                 "are exercised on a real ROS 2 install")
    import runpy
    description = runpy.run_path(str(launch_file))["generate_launch_description"]()
    assert description.entities
