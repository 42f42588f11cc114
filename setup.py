"""pip packaging for the virtual-environment install (`make setup`); colcon builds with CMakeLists.txt."""

from glob import glob

from setuptools import find_packages, setup

setup(
    name="clip2scene",
    version="0.1.0",
    description="Open-vocabulary zero-shot LiDAR segmentation (CLIP2Scene) with ROS 2 nodes",
    packages=find_packages(include=["clip2scene_core", "clip2scene_core.*", "clip2scene_ros", "clip2scene_ros.*"]),
    package_data={"clip2scene_core": ["data/*.json"]},
    # Found by clip2scene_core.vocabulary when the package is installed outside this tree.
    data_files=[("share/clip2scene_ros/config/vocabularies", sorted(glob("config/vocabularies/*.yaml"))),
                ("share/clip2scene_ros/config/vocabularies/splits", sorted(glob("config/vocabularies/splits/*.yaml")))],
    python_requires=">=3.10",
    entry_points={"console_scripts": ["clip2scene = clip2scene_core.cli:main"]},
)
