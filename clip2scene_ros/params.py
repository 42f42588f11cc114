"""Node parameters: each node lists them once (name, default, description, range) and declares them all.

The shipped params files in config/ are checked against these lists by the tests.
"""

from __future__ import annotations

import array
from dataclasses import dataclass
from types import SimpleNamespace

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

RELIABILITY = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}
DURABILITY = {"volatile": DurabilityPolicy.VOLATILE, "transient_local": DurabilityPolicy.TRANSIENT_LOCAL}
# As tf2's own listeners subscribe: /tf reliable, /tf_static reliable and transient-local.
TF_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
TF_STATIC_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)


@dataclass(frozen=True)
class Param:
    """A parameter: low/high give numbers a range; read_only ones are fixed at start-up;
    list defaults are arrays of item_type."""

    name: str
    default: object
    description: str
    low: float | None = None
    high: float | None = None
    read_only: bool = False
    item_type: type = str


# The input durability of the nodes that subscribe to sensors (segmenter, recorder).
INPUT_DURABILITY = Param("qos_durability", "volatile", "input QoS durability: volatile (sensor data) or "
                         "transient_local (also receives what matched publishers sent before this node matched them; "
                         "they must be transient_local too)", read_only=True)


def _is(value, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def check_value(param: Param, value):
    """value for param, converted to its type; ValueError naming the parameter and what it takes.

    A list parameter takes a list of item_type only: a lone string is refused, not split into letters."""
    if isinstance(param.default, list):
        items = list(value) if isinstance(value, (list, tuple, array.array)) else None
        if items is None or not all(_is(v, param.item_type) for v in items):
            example = "\"['road', 'car']\"" if param.item_type is str else "'[0.0, 12.5]'"
            raise ValueError(f"parameter {param.name} must be a list of {param.item_type.__name__} (for example "
                             f"{example}), got {value!r}")
        return [param.item_type(v) for v in items]
    kind = type(param.default)
    if not _is(value, kind):
        raise ValueError(f"parameter {param.name} must be a {kind.__name__}, got {value!r}")
    if param.low is not None and not param.low <= value <= param.high:
        raise ValueError(f"parameter {param.name} must lie in [{param.low}, {param.high}], got {value!r}")
    return kind(value)


def declare(node, param: Param):
    """Declare one parameter and return its value, checked (check_value).

    A list parameter that starts empty has no element type for rclpy to infer, so it is declared
    dynamically typed and its value checked here to be a list of item_type.
    """
    descriptor = ParameterDescriptor(description=param.description, read_only=param.read_only)
    if isinstance(param.default, list):
        descriptor.dynamic_typing = True
        value = node.declare_parameter(param.name, param.default, descriptor).value
        return check_value(param, [] if value is None else value)
    if param.low is not None:
        if isinstance(param.default, int) and not isinstance(param.default, bool):
            descriptor.integer_range = [IntegerRange(from_value=int(param.low), to_value=int(param.high), step=0)]
        else:
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(param.low),
                                                                  to_value=float(param.high), step=0.0)]
    return node.declare_parameter(param.name, param.default, descriptor).value


def declare_all(node, params: list[Param]) -> SimpleNamespace:
    """Declare every parameter; their values as attributes."""
    return SimpleNamespace(**{param.name: declare(node, param) for param in params})


def current_values(node, params: list[Param]) -> SimpleNamespace:
    """The declared parameters' values now, each checked (check_value): what a lifecycle node reads at configure."""
    values = {}
    for param in params:
        value = node.get_parameter(param.name).value
        values[param.name] = check_value(param, [] if value is None and isinstance(param.default, list) else value)
    return SimpleNamespace(**values)


def qos_profile(values: SimpleNamespace, prefix: str, depth: int) -> QoSProfile:
    """The QoS from parameters <prefix>reliability and <prefix>durability, each checked by name."""
    policies = {}
    for kind, choices in (("reliability", RELIABILITY), ("durability", DURABILITY)):
        name = prefix + kind
        value = getattr(values, name)
        if value not in choices:
            raise ValueError(f"parameter {name}: {value!r} is not one of {', '.join(choices)}")
        policies[kind] = choices[value]
    return QoSProfile(depth=depth, **policies)
