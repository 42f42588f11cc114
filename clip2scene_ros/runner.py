"""The `main()` of every node: init, spin until Ctrl-C or SIGTERM (rclpy shuts its context down on both),
close, shut down; a node raising SystemExit(code) ends the process with that code."""

from __future__ import annotations

import rclpy
from rclpy.executors import ExternalShutdownException


def run(node_class, args=None) -> int:
    rclpy.init(args=args)
    node, code = None, 0
    try:
        node = node_class()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
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
