#!/usr/bin/env bash
# Installs the ROS 2 Jazzy sources in ../shared/ros2-jazzy (launch, launch_ros, launch_testing, the ros2
# command line, rosidl_runtime_py, and the interface packages composition_interfaces, tf2_msgs and
# vision_msgs) into a virtual environment made from the ROS 2 PyPI wheels, the way that folder's README says.
# Usage: tools/install_shared_ros.sh VENV BUILD_DIR [SHARED_DIR]   (SHARED_DIR defaults to ../shared/ros2-jazzy)
# Idempotent: a package whose installed share/NAME/package.xml equals its source's is skipped.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 VENV BUILD_DIR [SHARED_DIR]" >&2
  exit 2
fi
here=$(cd "$(dirname "$0")/.." && pwd)
venv=$(cd "$1" && pwd)
mkdir -p "$2"
build=$(cd "$2" && pwd)
shared=${3:-$here/../shared/ros2-jazzy}
if [ ! -d "$shared" ]; then
  echo "$shared not found: pass the folder holding the ROS 2 Jazzy sources as SHARED_DIR" >&2
  exit 1
fi
shared=$(cd "$shared" && pwd)
. "$here/tools/venv_cmake_env.sh"
pip=("$python" -m pip install --disable-pip-version-check -q)

# PyPI dependencies of launch (osrf-pycommon, lark) and ros2cli (argcomplete, psutil, packaging).
"${pip[@]}" osrf-pycommon==2.0.2 lark==1.3.1 argcomplete==3.7.2 psutil==7.2.2 packaging

# launch_testing 3.4.3's pytest plugin declares the `path` hook argument that pytest 8 removed: loaded, it stops
# every pytest run in the venv, and launch_testing_ros's plugin needs it. Both are installed without their
# pytest11 entry points; the launch_testing API, `launch_test FILE` and launch_pytest's plugin work.
no_pytest_plugin="launch_testing launch_testing_ros"

installed() {  # installed() NAME: true when the venv holds this source's version of package NAME, as this installs it
  cmp -s "$shared/$1/package.xml" "$venv/share/$1/package.xml" || return 1
  case " $no_pytest_plugin " in
    *" $1 "*) ! "$python" -c "import importlib.metadata as m, sys
sys.exit(0 if any(e.group == 'pytest11' for e in m.distribution(sys.argv[1]).entry_points) else 1)" "$1" ;;
  esac
}

# pip and CMake write into the source folder, and ../shared is read-only: work on copies.
copy() {  # copy() NAME: fresh writable copy of the source folder in the build tree
  rm -rf "$build/src/$1"
  mkdir -p "$build/src"
  cp -r "$shared/$1" "$build/src/$1"
  chmod -R u+w "$build/src/$1"
}

# Interface packages first: launch_ros imports composition_interfaces.
for name in composition_interfaces tf2_msgs vision_msgs; do
  [ -d "$shared/$name" ] || { echo "$shared/$name missing" >&2; exit 1; }
  if installed "$name"; then continue; fi
  echo "building $name"
  copy "$name"
  log="$build/$name.log"
  cmake -S "$build/src/$name" -B "$build/cmake/$name" -DBUILD_TESTING=OFF \
    -DCMAKE_PREFIX_PATH="$venv" -DCMAKE_INSTALL_PREFIX="$venv" -DPython3_EXECUTABLE="$python" \
    -DCMAKE_BUILD_TYPE=Release > "$log" 2>&1 || { tail -50 "$log" >&2; exit 1; }
  cmake --build "$build/cmake/$name" -j 2 >> "$log" 2>&1 || { tail -50 "$log" >&2; exit 1; }
  cmake --install "$build/cmake/$name" >> "$log" 2>&1 || { tail -50 "$log" >&2; exit 1; }
done

# Every other folder with a setup.py is a pure Python package (rosidl_runtime_py before ros2topic needs it).
for setup in "$shared"/*/setup.py; do
  name=$(basename "$(dirname "$setup")")
  if installed "$name"; then continue; fi
  echo "installing $name"
  copy "$name"
  case " $no_pytest_plugin " in
    *" $name "*) sed -i "/'pytest11'/d" "$build/src/$name/setup.py" ;;
  esac
  "${pip[@]}" --no-deps --no-build-isolation "$build/src/$name"
done
