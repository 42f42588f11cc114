"""pip packaging for the virtual-environment install (`make setup`); colcon builds with CMakeLists.txt.

Both build the CPU sparse-convolution kernels (clip2scene_core/student/sparse_kernels.cpp, plain C++17 and OpenMP,
loaded with ctypes): for any CPU, and on x86-64 also for AVX2 and AVX-512 (sparse.py picks what the CPU runs)."""

import os
import platform
from glob import glob

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

KERNEL_VARIANTS = {"base": ["-DC2S_VECTOR_BYTES=16"]}
if platform.machine().lower() in ("x86_64", "amd64"):
    KERNEL_VARIANTS["v3"] = ["-DC2S_VECTOR_BYTES=32", "-mavx2", "-mfma"]
    KERNEL_VARIANTS["v4"] = ["-DC2S_VECTOR_BYTES=64", "-mavx512f", "-mfma"]


class BuildKernels(build_ext):
    """Each variant compiles the same source with its own flags: give each its own object folder."""

    def build_extension(self, ext):
        shared = self.build_temp
        self.build_temp = os.path.join(shared, ext.name)
        try:
            super().build_extension(ext)
        finally:
            self.build_temp = shared


setup(
    name="clip2scene",
    version="0.1.0",
    description="Open-vocabulary zero-shot LiDAR segmentation (CLIP2Scene) with ROS 2 nodes",
    packages=find_packages(include=["clip2scene_core", "clip2scene_core.*", "clip2scene_ros", "clip2scene_ros.*"]),
    package_data={"clip2scene_core": ["data/*.json"]},
    ext_modules=[Extension(f"clip2scene_core.student._sparse_kernels_{name}",
                           ["clip2scene_core/student/sparse_kernels.cpp"], language="c++",
                           extra_compile_args=["-std=c++17", "-O3", "-ffp-contract=fast", "-fopenmp", *flags],
                           extra_link_args=["-fopenmp"]) for name, flags in KERNEL_VARIANTS.items()],
    cmdclass={"build_ext": BuildKernels},
    # Found by clip2scene_core.vocabulary when the package is installed outside this tree.
    data_files=[("share/clip2scene_ros/config/vocabularies", sorted(glob("config/vocabularies/*.yaml"))),
                ("share/clip2scene_ros/config/vocabularies/splits", sorted(glob("config/vocabularies/splits/*.yaml")))],
    python_requires=">=3.10",
    entry_points={"console_scripts": ["clip2scene = clip2scene_core.cli:main"]},
)
