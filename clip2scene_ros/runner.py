"""The `main()` of every node: init, spin until Ctrl-C or SIGTERM (rclpy shuts its context down on both),
close, shut down; a node raising SystemExit(code) ends the process with that code."""

from __future__ import annotations

import sys

import rclpy
import rclpy.logging
from rclpy._rclpy_pybind11 import RCLError
from rclpy.executors import ExternalShutdownException

from clip2scene_core.errors import UserError


def run(node_class, args=None) -> int:
    """0 after a signal; 2 (the error logged, no traceback) when the node cannot start on its command line,
    parameters or files; a node raising SystemExit(code) ends with that code."""
    try:
        rclpy.init(args=args)
    except RCLError as error:  # the command line did not parse: say so without rclpy's traceback
        hint = " (an empty value is written -p NAME:=\"''\")" if ":=" in str(error) else ""
        print(f"cannot start: {error}{hint}", file=sys.stderr)
        return 2
    node, code = None, 0
    try:
        try:
            node = node_class()
        except (UserError, ValueError, OSError) as error:  # a bad parameter, a missing or unreadable file
            rclpy.logging.get_logger(getattr(node_class, "__name__", "node")).error(f"cannot start: {error}")
            return 2
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RCLError:
        if rclpy.ok():
            raise
        # A signal shut the context down while spin was between waits: the same as a clean shutdown.
    except SystemExit as stop:
        code = int(stop.code or 0)
    finally:
        if node is not None:
            close = getattr(node, "close", None)
            if close is not None:
                close()  # spin ended after the callback in progress, so this never cuts a write in two
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return code
