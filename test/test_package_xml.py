"""package.xml declares what the nodes need at run time: every ROS package imported by clip2scene_ros/*.py and
the launch files, each as a dependency of this package."""

import ast
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Imported top-level names that are not ROS packages: the standard library, this repository, pip packages.
NOT_ROS = {"clip2scene_core", "clip2scene_ros", "numpy", "yaml", "torch", "PIL"}


def declared_run_dependencies() -> set[str]:
    root = ET.parse(ROOT / "package.xml").getroot()
    return {element.text.strip() for tag in ("exec_depend", "depend") for element in root.iter(tag)}


def imported_top_level(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def ros_imports(paths) -> dict[str, set[str]]:
    """ROS package -> the files importing it (a name that is neither standard library nor listed in NOT_ROS)."""
    import sys

    found: dict[str, set[str]] = {}
    for path in paths:
        for name in imported_top_level(path) - NOT_ROS - set(sys.stdlib_module_names):
            found.setdefault(name, set()).add(path.name)
    return found


def test_every_ros_package_the_nodes_import_is_declared():
    imported = ros_imports(sorted((ROOT / "clip2scene_ros").glob("*.py")) + sorted((ROOT / "launch").glob("*.py")))
    # The nodes' message packages and client library must be among them (the scan itself works).
    assert {"rclpy", "sensor_msgs", "diagnostic_msgs", "vision_msgs", "tf2_msgs", "launch_ros"} <= set(imported)
    missing = {name: files for name, files in imported.items() if name not in declared_run_dependencies()}
    assert not missing, f"package.xml lacks exec_depend for {missing}"


def test_message_packages_of_the_interfaces_are_declared():
    # msg/*.msg fields of other packages are build and run dependencies (<depend>).
    used = set()
    for msg in (ROOT / "msg").glob("*.msg"):
        for line in msg.read_text().splitlines():
            field_type = line.split("#")[0].split()[:1]
            if field_type and "/" in field_type[0]:
                used.add(field_type[0].split("/")[0])
    depends = {e.text.strip() for e in ET.parse(ROOT / "package.xml").getroot().iter("depend")}
    assert used and used <= depends, used - depends
