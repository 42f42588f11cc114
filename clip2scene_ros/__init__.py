"""ROS 2 nodes of clip2scene: thin I/O layers over clip2scene_core.

The generated interfaces (`clip2scene_ros.msg`) are installed by CMake next to this package: in
the same folder by `colcon build`, or into the virtual environment's site-packages by `make setup`.
Extending the package path lets one import find both halves.
"""

__path__ = __import__("pkgutil").extend_path(__path__, __name__)
