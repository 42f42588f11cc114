"""The repository is a real ROS 2 package: `colcon build` in a workspace builds and installs it."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)


def package_files() -> list[str]:
    """The files a user's clone holds (tracked ones), or, outside git, everything but build output."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                check=True, capture_output=True, text=True).stdout.split()
        return [name for name in listed if (ROOT / name).is_file()]
    except (OSError, subprocess.CalledProcessError):
        skip = {".venv", "build", "install", "log", "out", ".git"}
        return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.parts)]


@pytest.mark.slow
def test_colcon_build_installs_package_interfaces_nodes_launch_and_config(tmp_path):
    if shutil.which("colcon", path=str(VENV / "bin")) is None:
        pytest.skip("colcon is not installed in this environment (make setup installs it)")
    source = tmp_path / "ws" / "src" / "clip2scene"
    files = package_files()
    for name in files:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    env = dict(os.environ, AMENT_PREFIX_PATH=str(VENV), PATH=f"{VENV / 'bin'}:{os.environ['PATH']}")
    result = subprocess.run(
        [str(VENV / "bin" / "colcon"), "--log-base", "log", "build", "--base-paths", "src",
         "--cmake-args", f"-DCMAKE_PREFIX_PATH={VENV}", f"-DPython3_EXECUTABLE={sys.executable}",
         "-DBUILD_TESTING=OFF"],
        cwd=tmp_path / "ws", env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    prefix = tmp_path / "ws" / "install" / "clip2scene_ros"
    share = prefix / "share" / "clip2scene_ros"
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "clip2scene_ros").is_file()
    assert (share / "package.xml").is_file()
    for name in (ROOT / "scripts").iterdir():
        installed = prefix / "lib" / "clip2scene_ros" / name.name
        assert installed.is_file() and os.access(installed, os.X_OK), installed
    for folder in ("launch", "config"):
        expected = sorted(name.removeprefix(folder + "/") for name in files if name.startswith(folder + "/"))
        installed = sorted(str(p.relative_to(share / folder)) for p in (share / folder).rglob("*") if p.is_file())
        assert expected and installed == expected
    python_dir = Path(sysconfig.get_path("purelib", vars={"base": str(prefix)}))
    assert (python_dir / "clip2scene_ros" / "msg" / "_segmentation_info.py").is_file()
    assert (python_dir / "clip2scene_core" / "frame.py").is_file()
    assert (python_dir / "clip2scene_core" / "data" / "nuscenes_splits.json").is_file()

    # The installed package is importable as a ROS user sources it: messages and core from the install.
    env.update(AMENT_PREFIX_PATH=f"{prefix}:{VENV}", PYTHONPATH=str(python_dir),
               LD_LIBRARY_PATH=f"{prefix / 'lib'}:{os.environ.get('LD_LIBRARY_PATH', '')}")
    env.pop("_ROS_WHEELS_BOOTSTRAP_COMPLETE", None)
    check = ("import clip2scene_ros.msg as m, clip2scene_core, ament_index_python as a;"
             "from rclpy.serialization import serialize_message;"
             "msg = m.SegmentationInfo(mode=m.SegmentationInfo.MODE_FUSION, class_names=['car']);"
             "serialize_message(msg);"
             "from clip2scene_core.vocabulary import CONFIG_DIR, load_vocabulary;"
             "assert len(load_vocabulary('nuscenes')) == 16;"  # shipped vocabularies by name, from share/
             "from clip2scene_core.student import sparse;"  # the CPU kernels, built by CMake
             "print(sparse.Kernels._find(sparse.kernels().variant));"
             "print(m.__file__); print(clip2scene_core.__file__); print(CONFIG_DIR);"
             "print(a.get_package_share_directory('clip2scene_ros'))")
    result = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.split()
    assert all(line.startswith(str(prefix)) for line in lines), lines
