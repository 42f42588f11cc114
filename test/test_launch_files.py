"""Every shipped launch file run by the real launch_testing (`launch_test`), in a namespace, with a params file of
its own: the node comes up, its topics are there, the file's values are applied; against the launched segmenter
the real `ros2 param` and `ros2 topic` commands. Skipped without ../shared/ros2-jazzy's tools installed."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED_ROS = ROOT.parent / "shared" / "ros2-jazzy"
VENV_BIN = Path(sys.executable).parent
CHECK = ROOT / "test" / "launch_testing" / "launch_file_check.py"

pytestmark = [pytest.mark.ros, pytest.mark.slow,
              pytest.mark.skipif(not SHARED_ROS.is_dir(), reason=f"{SHARED_ROS} not found: launch_testing and the "
                                 "ros2 command line are installed from it (tools/install_shared_ros.sh)"),
              pytest.mark.skipif(not (VENV_BIN / "launch_test").is_file() or not (VENV_BIN / "ros2").is_file(),
                                 reason="launch_test or ros2 is not installed in this environment "
                                        "(make setup runs tools/install_shared_ros.sh)")]


@pytest.fixture(scope="module")
def ament_prefix(tmp_path_factory) -> Path:
    """clip2scene_ros laid out as CMakeLists.txt installs it (ament index, share/launch, share/config,
    lib/<executables>), linked to this tree, so launch_ros finds the package and its executables."""
    prefix = tmp_path_factory.mktemp("ament_prefix")
    index = prefix / "share" / "ament_index" / "resource_index" / "packages"
    index.mkdir(parents=True)
    (index / "clip2scene_ros").touch()
    share = prefix / "share" / "clip2scene_ros"
    share.mkdir()
    for name in ("launch", "config", "package.xml"):
        (share / name).symlink_to(ROOT / name)
    lib = prefix / "lib" / "clip2scene_ros"
    lib.mkdir(parents=True)
    for script in (ROOT / "scripts").iterdir():
        (lib / script.name).symlink_to(script)
    return prefix


def params_file(tmp_path: Path, shipped: str, values: dict) -> Path:
    """The shipped params file (keyed /**) with values changed."""
    parameters = yaml.safe_load((ROOT / "config" / shipped).read_text())
    parameters["/**"]["ros__parameters"].update(values)
    path = tmp_path / shipped
    path.write_text(yaml.safe_dump(parameters))
    return path


def launch_test(ament_prefix: Path, tmp_path: Path, spec: dict) -> None:
    # The scripts start with `#!/usr/bin/env python3`: this environment's python first on PATH, this tree's code
    # first on PYTHONPATH, as a sourced ROS 2 workspace puts its install first.
    env = dict(os.environ, CLIP2SCENE_LAUNCH_CHECK=json.dumps(spec), PATH=f"{VENV_BIN}:{os.environ['PATH']}",
               AMENT_PREFIX_PATH=f"{ament_prefix}:{os.environ.get('AMENT_PREFIX_PATH', sys.prefix)}",
               PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    result = subprocess.run([str(VENV_BIN / "launch_test"), str(CHECK)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    (tmp_path / "launch_test.log").write_text(result.stdout + result.stderr)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    ran = ["test_node_topics_and_params_file", "test_every_process_ended_cleanly"]
    ran += ["test_ros2_param_and_topic_command_line"] if spec.get("cli") else []
    ran += ["test_ros2_lifecycle_command_line"] if spec.get("lifecycle") else []
    for name in ran:
        assert re.search(rf"{name} \(.*\) \.\.\. ok", output), f"{name} did not pass: {output[-6000:]}"


def test_segment_launch_in_a_namespace_and_the_ros2_command_line(ament_prefix, tiny_student, tmp_path):
    values = {"processing_budget_ms": 123.0, "qos_reliability": "reliable"}
    launch_test(ament_prefix, tmp_path, {
        "launch_file": str(ROOT / "launch" / "segment.launch.py"),
        "arguments": {"namespace": "vehicle", "checkpoint": str(tiny_student),
                      "params_file": str(params_file(tmp_path, "segment_node.yaml", values))},
        "node": "/vehicle/clip2scene_segmenter", "parameters": {**values, "checkpoint": str(tiny_student)},
        "topics": ["/vehicle/segmentation/info", "/vehicle/segmentation/points", "/diagnostics"], "cli": True})


def test_segment_launch_of_the_lifecycle_node_and_ros2_lifecycle(ament_prefix, tiny_student, tmp_path):
    values = {"processing_budget_ms": 123.0}
    launch_test(ament_prefix, tmp_path, {
        "launch_file": str(ROOT / "launch" / "segment.launch.py"),
        "arguments": {"namespace": "vehicle", "checkpoint": str(tiny_student), "lifecycle": "true",
                      "params_file": str(params_file(tmp_path, "segment_node.yaml", values))},
        "node": "/vehicle/clip2scene_segmenter", "parameters": values, "topics": [], "lifecycle": True})


def test_record_launch_in_a_namespace(ament_prefix, tmp_path):
    values = {"storage": "sqlite3", "split_duration_s": 12.5}
    output = str(tmp_path / "run")
    launch_test(ament_prefix, tmp_path, {
        "launch_file": str(ROOT / "launch" / "record.launch.py"),
        "arguments": {"namespace": "vehicle", "output_dir": output,
                      "params_file": str(params_file(tmp_path, "record_node.yaml", values))},
        "node": "/vehicle/clip2scene_recorder", "parameters": {**values, "output_dir": output},
        "topics": ["/diagnostics"]})


def test_sensor_publisher_launch_in_a_namespace(ament_prefix, tmp_path):
    values = {"rate_hz": 2.5, "loop": True, "exit_when_done": False, "lidar_topic": "points"}
    launch_test(ament_prefix, tmp_path, {
        "launch_file": str(ROOT / "launch" / "sensor_publisher.launch.py"),
        "arguments": {"namespace": "vehicle", "source": "synthetic:frames=2,seed=0,cameras=1,width=64,height=48",
                      "params_file": str(params_file(tmp_path, "sensor_publisher.yaml", values))},
        "node": "/vehicle/clip2scene_sensor_publisher",
        "parameters": {**values, "source": "synthetic:frames=2,seed=0,cameras=1,width=64,height=48"},
        "topics": ["/vehicle/points"]})

