# clip2scene: `make demo` runs the demo, `make test` the tests; both set up .venv first (idempotent).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.clip2scene-setup
SHARED_ROS ?= ../shared/ros2-jazzy
# Tests and demo run offline, with DDS kept on this machine.
RUN_ENV := HF_HUB_OFFLINE=1 FASTDDS_BUILTIN_TRANSPORTS=SHM MPLBACKEND=Agg

.PHONY: setup test demo bench clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-core.txt setup.py CMakeLists.txt package.xml clip2scene_core/student/sparse_kernels.cpp $(wildcard msg/*.msg) tools/build_interfaces.sh tools/install_shared_ros.sh tools/venv_cmake_env.sh
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 10) <= v <= (3, 12) else "clip2scene needs Python 3.10-3.12, found %d.%d: run make PYTHON=python3.11" % v)'
	@command -v cmake >/dev/null && (command -v c++ || command -v g++) >/dev/null || { echo "setup needs cmake and a C++ compiler: sudo apt-get install -y cmake g++" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	tools/build_interfaces.sh $(VENV) build/interfaces
	# launch, launch_testing, the ros2 CLI, tf2_msgs and vision_msgs from ../shared/ros2-jazzy where it exists
	if [ -d $(SHARED_ROS) ]; then tools/install_shared_ros.sh $(VENV) build/shared_ros $(SHARED_ROS); fi
	$(PY) -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation --config-settings editable_mode=compat -e .
	touch $@

test: setup
	$(RUN_ENV) $(PY) -m pytest

demo: setup
	$(RUN_ENV) $(PY) -m clip2scene_ros.demo --out out/demo

bench: setup
	$(RUN_ENV) $(PY) benchmarks/run_all.py $(BENCH_ARGS)

clean:
	rm -rf build install log out $(VENV)
