#!/usr/bin/env bash
# Builds msg/ (rosidl through CMake) into a virtual environment made from the ROS 2 PyPI wheels.
# Usage: tools/build_interfaces.sh VENV BUILD_DIR
set -euo pipefail
venv=$(cd "$1" && pwd)
build=$2
. "$(dirname "$0")/venv_cmake_env.sh"
mkdir -p "$(dirname "$build")"
cmake -S . -B "$build" -DCLIP2SCENE_INTERFACES_ONLY=ON -DBUILD_TESTING=OFF \
  -DCMAKE_PREFIX_PATH="$venv" -DCMAKE_INSTALL_PREFIX="$venv" -DPython3_EXECUTABLE="$python" \
  -DCMAKE_BUILD_TYPE=Release > "$build.log" 2>&1 || { cat "$build.log" >&2; exit 1; }
cmake --build "$build" -j 2 >> "$build.log" 2>&1 || { tail -50 "$build.log" >&2; exit 1; }
cmake --install "$build" >> "$build.log" 2>&1 || { tail -50 "$build.log" >&2; exit 1; }
# rosidl installs an empty clip2scene_ros/__init__.py beside the generated msg/ package; in the venv the
# editable source package of the same name must be the one imported (it extends its __path__ to msg/).
site=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -f "$site/clip2scene_ros/__init__.py"
