"""Declaring node parameters with a description and, for numbers, a range, in one line each."""

from __future__ import annotations

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor


def declare(node, name: str, default, description: str, low=None, high=None, read_only: bool = False,
            item_type: type = str):
    """Declare a parameter (with its range when low/high are given) and return its value.

    A list parameter that starts empty has no element type for rclpy to infer, so it is declared
    dynamically typed and its value checked here to be a list of item_type.
    """
    descriptor = ParameterDescriptor(description=description, read_only=read_only)
    if isinstance(default, list):
        descriptor.dynamic_typing = True
        value = node.declare_parameter(name, default, descriptor).value
        value = [] if value is None else list(value)
        if not all(isinstance(v, item_type) or (item_type is float and isinstance(v, int)) for v in value):
            raise ValueError(f"parameter {name} must be a list of {item_type.__name__}, got {value!r}")
        return [item_type(v) for v in value]
    if low is not None and high is not None:
        if isinstance(default, bool):
            raise TypeError(f"parameter {name}: booleans take no range")
        if isinstance(default, int):
            descriptor.integer_range = [IntegerRange(from_value=int(low), to_value=int(high), step=0)]
        else:
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(low), to_value=float(high), step=0.0)]
    return node.declare_parameter(name, default, descriptor).value
