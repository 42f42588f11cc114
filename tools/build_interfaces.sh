#!/usr/bin/env bash
# Builds msg/ (rosidl through CMake) into a virtual environment made from the ROS 2 PyPI wheels.
# Usage: tools/build_interfaces.sh VENV BUILD_DIR
set -euo pipefail
venv=$(cd "$1" && pwd)
build=$2
python="$venv/bin/python"
py_include=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
np_include=$("$python" -c 'import numpy; print(numpy.get_include())')
if [ ! -f "$py_include/Python.h" ]; then
  echo "Python.h not found in $py_include: install your Python's headers (Debian/Ubuntu: apt-get install python3-dev)" >&2
  exit 1
fi
# The wheels' CMake exports name the wheel builder's Python and numpy include directories;
# point them at this venv's own (idempotent: only files that still name the builder's are rewritten).
{ grep -rlE '/opt/python/cp[0-9]+-cp[0-9]+' "$venv/share" --include='*.cmake' || true; } | while read -r file; do
  sed -i -E \
    -e "s#/opt/python/cp[0-9]+-cp[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/_core/include#$np_include#g" \
    -e "s#/opt/python/cp[0-9]+-cp[0-9]+/include/python3\.[0-9]+#$py_include#g" "$file"
done
mkdir -p "$(dirname "$build")"
export AMENT_PREFIX_PATH="$venv"
# The ROS build tools run as Python scripts; they must be this venv's.
export PATH="$venv/bin:$PATH"
cmake -S . -B "$build" -DCLIP2SCENE_INTERFACES_ONLY=ON -DBUILD_TESTING=OFF \
  -DCMAKE_PREFIX_PATH="$venv" -DCMAKE_INSTALL_PREFIX="$venv" -DPython3_EXECUTABLE="$python" \
  -DCMAKE_BUILD_TYPE=Release > "$build.log" 2>&1 || { cat "$build.log" >&2; exit 1; }
cmake --build "$build" -j 2 >> "$build.log" 2>&1 || { tail -50 "$build.log" >&2; exit 1; }
cmake --install "$build" >> "$build.log" 2>&1 || { tail -50 "$build.log" >&2; exit 1; }
# rosidl installs an empty clip2scene_ros/__init__.py beside the generated msg/ package; in the venv the
# editable source package of the same name must be the one imported (it extends its __path__ to msg/).
site=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -f "$site/clip2scene_ros/__init__.py"
