"""`clip2scene_segmenter` as a managed (lifecycle) node, as Nav2 and Autoware bring up theirs.

    ros2 run clip2scene_ros segment_lifecycle_node --ros-args -p checkpoint:=/path/student.pt
    ros2 lifecycle set /clip2scene_segmenter configure   # loads the model and vocabulary
    ros2 lifecycle set /clip2scene_segmenter activate    # subscribes the sensors: outputs flow

configure reads the parameters and loads the model, vocabulary and calibration, and creates the outputs;
activate subscribes the LiDAR, cameras and TF and starts the timers; deactivate unsubscribes them (a sweep
being segmented then is not published); cleanup frees the model (and CUDA's cache); shutdown does both.
The start-up parameters (mode, checkpoint, topics, ...) may be set while the node is unconfigured and are read
at configure; the run-time ones change as on the plain node. Topics and parameters: see segment_node.
"""

from __future__ import annotations

from dataclasses import replace

from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn

from clip2scene_core.errors import UserError

from .params import check_value, current_values, declare_all
from .segment_node import PARAMETERS, SegmentationMixin, main as segment_main

STARTUP = {param.name for param in PARAMETERS if param.read_only}


class SegmentLifecycleNode(SegmentationMixin, LifecycleNode):
    def __init__(self):
        super().__init__("clip2scene_segmenter")
        # Start-up parameters stay settable until configure reads them (refused while configured).
        declare_all(self, [replace(param, read_only=False) for param in PARAMETERS])
        self.configured = False
        self.add_on_set_parameters_callback(self.on_set_parameters)

    def on_configure(self, state) -> TransitionCallbackReturn:
        try:
            self.values = current_values(self, PARAMETERS)
            self._configure(self.values)
        except (UserError, ValueError, OSError) as error:  # a bad parameter, a missing or unreadable file
            self._release()
            self.get_logger().error(f"cannot configure: {error}; set the parameter and configure again")
            return TransitionCallbackReturn.FAILURE
        self.configured = True
        return super().on_configure(state)

    def on_activate(self, state) -> TransitionCallbackReturn:
        self._start_inputs(self.values)
        self.get_logger().info("active: inputs subscribed")
        return super().on_activate(state)

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        self._stop_inputs()
        self.get_logger().info("inactive: inputs unsubscribed")
        return super().on_deactivate(state)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self._release()
        self.configured = False
        return super().on_cleanup(state)

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        self._stop_inputs()
        self._release()
        self.configured = False
        return super().on_shutdown(state)

    def on_set_parameters(self, parameters) -> SetParametersResult:
        """Configured: start-up parameters refused, run-time ones as on the plain node; unconfigured: any value
        of the right type (configure reads them all)."""
        if self.configured:
            fixed = sorted(p.name for p in parameters if p.name in STARTUP)
            if fixed:
                reason = (f"parameter {', '.join(fixed)} is read at configure: deactivate and clean up the node, "
                          f"set it, then configure again")
                self._warn(f"parameter change refused: {reason}")
                return SetParametersResult(successful=False, reason=reason)
            return self.on_parameters(parameters)
        declared = {param.name: param for param in PARAMETERS}
        try:
            for p in parameters:
                if p.name in declared:
                    check_value(declared[p.name], p.value)
        except ValueError as error:
            self.get_logger().warning(f"parameter change refused: {error}")
            return SetParametersResult(successful=False, reason=str(error))
        return SetParametersResult(successful=True)


def main(args=None) -> None:
    segment_main(args, SegmentLifecycleNode)


if __name__ == "__main__":
    main()
