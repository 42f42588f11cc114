"""pip packaging for the virtual-environment install (`make setup`); colcon builds with CMakeLists.txt."""

from setuptools import setup

setup(
    name="clip2scene",
    version="0.1.0",
    description="Open-vocabulary zero-shot LiDAR segmentation (CLIP2Scene) with ROS 2 nodes",
    packages=["clip2scene_core", "clip2scene_core.data", "clip2scene_ros"],
    package_data={"clip2scene_core": ["data/*.json"]},
    python_requires=">=3.10",
    entry_points={"console_scripts": ["clip2scene = clip2scene_core.cli:main"]},
)
