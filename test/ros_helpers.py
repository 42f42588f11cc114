"""Running nodes as separate processes and waiting on them over DDS, with deadlines (no fixed sleeps)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def node_process(module: str, params_file: str | None = None, parameters: dict | None = None, log_path: Path = None,
                 file_size_limit: int | None = None, env: dict | None = None, extra_args: list[str] | None = None):
    """Start `python -m module --ros-args ...` in its own process; stop it (SIGINT, then SIGKILL) on exit.
    file_size_limit: RLIMIT_FSIZE in bytes for the process (a full disk without filling one);
    env: variables set for the process on top of this one's; extra_args: more --ros-args (e.g. -r __ns:=/a)."""
    command = [sys.executable, "-m", module, "--ros-args"]
    if params_file:
        command += ["--params-file", str(ROOT / params_file)]
    for name, value in (parameters or {}).items():
        command += ["-p", f"{name}:={value}"]
    command += extra_args or []
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    def limit():
        import resource
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
                               preexec_fn=limit if file_size_limit else None)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if log_path:
            log.close()


def spin_until(node, predicate, timeout_s: float, what, processes=()) -> None:
    """Spin node until predicate() holds; fail with `what` (a string, or a callable giving one: the state
    at the time) after timeout_s or when a process dies."""
    import rclpy

    describe = what if callable(what) else lambda: what
    deadline = time.monotonic() + timeout_s
    while not predicate():
        for process in processes:
            if process.poll() is not None and process.returncode not in (0,):
                raise AssertionError(f"{describe()}: node process exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {describe()}")
        rclpy.spin_once(node, timeout_sec=0.05)


def spin_for(node, seconds: float, predicate=lambda: False) -> bool:
    """Spin node for at most seconds, returning early (True) once predicate() holds."""
    import rclpy

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        rclpy.spin_once(node, timeout_sec=0.05)
    return predicate()
