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
    shipped = yaml.safe_load((ROOT / params_file).read_text())["/**"]["ros__parameters"]
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

    shipped = yaml.safe_load((ROOT / params_file).read_text())["/**"]["ros__parameters"]
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


def test_use_sim_time_comes_from_the_launch_file_only_when_given():
    from clip2scene_ros.launching import launch_overrides

    assert launch_overrides({"use_sim_time": ""}) == {}  # the params file's use_sim_time stands
    assert launch_overrides({"use_sim_time": "  "}) == {}
    assert launch_overrides({"use_sim_time": "no", "source": ""}) == {"use_sim_time": False}
    assert launch_overrides({"use_sim_time": "1"}) == {"use_sim_time": True}
    with pytest.raises(ValueError, match="use_sim_time"):
        launch_overrides({"use_sim_time": "ture"})


@pytest.mark.parametrize("launch_file", sorted((ROOT / "launch").glob("*.launch.py")), ids=lambda p: p.name)
def test_launch_files_default_use_sim_time_to_the_params_file(launch_file):
    text = launch_file.read_text()
    declared = text[text.index('DeclareLaunchArgument("use_sim_time"'):]
    assert declared[:declared.index(")")].count('default_value=""') == 1, launch_file.name


@pytest.mark.parametrize("params_file", [node[1] for node in NODES])
def test_params_files_apply_to_any_node_name_and_namespace(params_file):
    assert list(yaml.safe_load((ROOT / params_file).read_text())) == ["/**"]


@pytest.mark.slow
def test_params_file_applies_in_a_namespace_across_processes(ros_node, tmp_path):
    from rcl_interfaces.msg import ParameterType
    from rclpy.parameter_client import AsyncParameterClient

    from ros_helpers import node_process, spin_until

    # The shipped file (keyed /**) with two values other than the defaults; -p sets qos_depth on top.
    text = (ROOT / "config/record_node.yaml").read_text()
    params_file = tmp_path / "record_node.yaml"
    params_file.write_text(text.replace('storage: "mcap"', 'storage: "sqlite3"')
                           .replace("split_duration_s: 60.0", "split_duration_s: 12.5"))
    with node_process("clip2scene_ros.record_node", str(params_file),
                      {"output_dir": str(tmp_path / "run"), "qos_depth": 7}, tmp_path / "recorder.log",
                      extra_args=["-r", "__ns:=/vehicle"]) as recorder:
        client = AsyncParameterClient(ros_node, "/vehicle/clip2scene_recorder")
        spin_until(ros_node, client.services_are_ready, 60, "the namespaced recorder's parameter services",
                   [recorder])
        future = client.get_parameters(["storage", "split_duration_s", "qos_depth", "output_dir"])
        spin_until(ros_node, future.done, 30, "the parameter values", [recorder])
        values = future.result().values
        assert [v.type for v in values] == [ParameterType.PARAMETER_STRING, ParameterType.PARAMETER_DOUBLE,
                                            ParameterType.PARAMETER_INTEGER, ParameterType.PARAMETER_STRING]
        assert values[0].string_value == "sqlite3" and values[1].double_value == 12.5
        assert values[2].integer_value == 7 and values[3].string_value == str(tmp_path / "run")


@pytest.mark.parametrize("launch_file", sorted((ROOT / "launch").glob("*.launch.py")), ids=lambda p: p.name)
def test_launch_description_loads_where_launch_exists(launch_file):
    reason = "launch is not installable from PyPI; the launch files are exercised on a real ROS 2 install"
    # Without ROS 2's launch, `import launch` finds this repository's launch/ folder (a namespace package).
    if not hasattr(pytest.importorskip("launch", reason=reason), "LaunchDescription"):
        pytest.skip(reason)
    import runpy
    description = runpy.run_path(str(launch_file))["generate_launch_description"]()
    assert description.entities
