# Sourced by the build scripts in tools/ with $venv set: prepares a venv made from the ROS 2 PyPI wheels for
# CMake builds of interface packages, and exports the environment those builds need.
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
export AMENT_PREFIX_PATH="$venv"
# The ROS build tools run as Python scripts; they must be this venv's.
export PATH="$venv/bin:$PATH"
