"""The segmentation node's parameters in rclpy: descriptors, declaration, reading and validation.

What the parameters are (name, default, meaning, allowed values, the SegmenterConfig field each
one sets) is :data:`rtseg_ros.names.PARAMETERS`; this module only turns that table into rclpy
descriptors and checks values against it. The engine parameters become a
:class:`~rtseg_ros.engines.SegmenterConfig` through :meth:`SegmenterConfig.from_parameters`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import ParameterException
from rclpy.node import Node
from rclpy.parameter import Parameter

from rtseg_ros.engines import ConfigError, SegmenterConfig
from rtseg_ros.names import ENGINE_PARAMETERS, PARAMETERS, ParameterSpec

__all__ = [
    "ENGINE_PARAMETERS",
    "PARAMETERS",
    "ParameterError",
    "allowed_values",
    "check_value",
    "declare_parameters",
    "descriptor",
    "parse_override",
    "read_parameters",
    "validate_parameters",
]


class ParameterError(ValueError):
    """A parameter value the node cannot run with; the message is the reason given to the caller."""


def descriptor(name: str, spec: ParameterSpec | None = None) -> ParameterDescriptor:
    """The rclpy descriptor of parameter ``name`` (``spec`` defaults to its :data:`PARAMETERS` entry)."""
    spec = spec or PARAMETERS[name]
    result = ParameterDescriptor(name=name, description=spec.description, read_only=spec.read_only)
    if spec.choices:
        result.additional_constraints = "one of: " + ", ".join(spec.choices)
    if spec.integer_range is not None:
        low, high = spec.integer_range
        if isinstance(spec.default, int):
            result.integer_range = [IntegerRange(from_value=low, to_value=high, step=spec.integer_step)]
        else:
            # ROS ranges apply to scalars only; array elements are checked in validate_parameters.
            result.additional_constraints = f"each element in [{low}, {high}], no repeats"
    if spec.float_range is not None:
        low, high = spec.float_range
        result.floating_point_range = [FloatingPointRange(from_value=low, to_value=high, step=0.0)]
    return result


def declare_parameters(node: Node) -> None:
    """Declare every parameter of :data:`PARAMETERS` on ``node`` with its descriptor.

    Raises:
        ParameterError: a value given at start-up (``-p``, a params file) of the wrong type or out of
            range; the message names the parameter, the value and what is allowed.
    """
    overrides = getattr(node, "_parameter_overrides", {})  # rclpy's -p/params-file values (Humble and Jazzy)
    for name, spec in PARAMETERS.items():
        given = overrides.get(name)
        if isinstance(spec.default, float) and given is not None and given.type_ == Parameter.Type.INTEGER:
            # `-p batch_wait_ms:=5` arrives as an integer, which rclpy refuses for a number parameter.
            overrides[name] = Parameter(name, Parameter.Type.DOUBLE, float(given.value))
        # An empty list says nothing of its type to rclpy (it would take it for a byte array): such a
        # parameter is declared by type, unset, and read_parameters gives the table's default.
        default = spec.default if spec.default != [] else _ARRAY_TYPES[spec.item_type]
        try:
            node.declare_parameter(name, default, descriptor(name, spec))
        except ParameterException as exc:
            raise ParameterError(f"{exc}; {name} takes {allowed_values(spec)}") from None


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "text"}
_ARRAY_TYPES = {int: Parameter.Type.INTEGER_ARRAY, str: Parameter.Type.STRING_ARRAY}


def allowed_values(spec: ParameterSpec) -> str:
    """What a parameter accepts, in words (``an integer in [32, 8192], a multiple of 32``)."""
    if isinstance(spec.default, list):
        text = "a list of integers" if spec.item_type is int else "a list of names"
    else:
        text = _TYPE_NAMES[type(spec.default)]
    if spec.choices:
        return f"one of {', '.join(spec.choices)}"
    if spec.integer_range is not None:
        low, high = spec.integer_range
        text += f" in [{low}, {high}]" if isinstance(spec.default, int) else f", each in [{low}, {high}], no repeats"
        if spec.integer_step:
            text += f", a multiple of {spec.integer_step}"
    if spec.float_range is not None:
        text += f" in [{spec.float_range[0]}, {spec.float_range[1]}]"
    return text


def check_value(name: str, value: Any, spec: ParameterSpec | None = None) -> Any:
    """``value`` checked against parameter ``name``'s type, choices, range and step; returns it in the
    parameter's type (an integer given for a floating-point parameter becomes a float, as rclpy wants).

    This is what the launch file runs on its arguments before the node starts, so a wrong override
    ends the launch with one line instead of a traceback from the node.

    Raises:
        ParameterError: naming the parameter, the value and what is allowed.
    """
    spec = spec or PARAMETERS[name]
    default = spec.default

    def fail() -> ParameterError:
        return ParameterError(f"parameter {name}: {value!r} is not allowed; it takes {allowed_values(spec)}")

    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise fail()
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail()
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail()
        value = float(value)
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise fail()
    elif isinstance(default, list):
        # An integer list (scales) must not be empty; a list of names (cameras) may.
        if not isinstance(value, (list, tuple)) or (not value and spec.item_type is int) or any(
                isinstance(item, bool) or not isinstance(item, spec.item_type) for item in value):
            raise fail()
        value = list(value)
        if len(set(value)) != len(value):
            raise fail()
    try:
        _check_constraints(name, spec, value)
    except ParameterError:
        raise fail() from None
    _check_form(name, spec, value)
    if spec.integer_step and spec.integer_range is not None and isinstance(value, int):
        if (value - spec.integer_range[0]) % spec.integer_step:
            raise fail()
    return value


def parse_override(name: str, text: str) -> Any:
    """A parameter value typed as text (a launch argument) parsed like a params file, then checked.

    Raises:
        ParameterError: text that does not parse, or a value :func:`check_value` refuses.
    """
    spec = PARAMETERS[name]
    try:
        value = spec.parse(text)
    except Exception:  # noqa: BLE001 - yaml's errors: the message below says what is wanted
        raise ParameterError(f"parameter {name}: {text!r} does not parse; it takes {allowed_values(spec)}") from None
    return check_value(name, value, spec)


def read_parameters(node: Node) -> dict[str, Any]:
    """The current value of every declared parameter, by name (an unset list: the table's default)."""
    # get_parameter_or: an unset parameter (declared by type) reads as None instead of raising.
    values = {name: node.get_parameter_or(name).value for name in PARAMETERS}
    return {name: PARAMETERS[name].default if value is None else value for name, value in values.items()}


def validate_parameters(values: Mapping[str, Any]) -> SegmenterConfig:
    """Check a full set of parameter values and turn the engine ones into a SegmenterConfig.

    Besides the parameters' own constraints this runs :meth:`SegmenterConfig.check`: the settings
    fit together and this machine can run them (CUDA, optional libraries), so a change that cannot
    work is rejected before a rebuild starts. ``weights`` is resolved to a file (a path, a file name
    in the models folders, or a manifest entry).

    Raises:
        ParameterError: the first problem found, worded for the person who set the value.
    """
    for name, spec in PARAMETERS.items():
        _check_constraints(name, spec, values[name])
        _check_form(name, spec, values[name])
    try:
        config = SegmenterConfig.from_parameters(values)
        config = dataclasses.replace(config, weights=_weights_path(values["weights"]))
        config.check()
    except ConfigError as exc:
        raise ParameterError(str(exc)) from None
    return config


def _check_constraints(name: str, spec: ParameterSpec, value: Any) -> None:
    """The table's own constraints on one value (choices, ranges)."""
    if spec.choices and value not in spec.choices:
        raise ParameterError(f"{name} must be one of {', '.join(spec.choices)}; got {value!r}")
    if spec.integer_range is not None:
        low, high = spec.integer_range
        items = _as_sequence(value)
        if not items or not all(_within(item, low, high) for item in items):
            raise ParameterError(f"{name} must be in [{low}, {high}]; got {value!r}")
    if spec.float_range is not None and not _within(value, *spec.float_range):
        raise ParameterError(f"{name} must be in [{spec.float_range[0]}, {spec.float_range[1]}]; got {value!r}")


def _check_form(name: str, spec: ParameterSpec, value: Any) -> None:
    """The entry's own check of a value's form (``output_resolution``'s ``WIDTHxHEIGHT``), with its reason."""
    if spec.check is None:
        return
    try:
        spec.check(value)
    except ValueError as exc:
        raise ParameterError(f"parameter {name}: {exc}") from None


def _within(value: Any, low: float, high: float) -> bool:
    try:
        return low <= value <= high
    except TypeError:  # not a number: out of range, and the message shows the value
        return False


def _weights_path(weights: str) -> str | None:
    """A weights parameter (a path, a file name in the models folders, or a manifest entry) as a path."""
    if not weights:
        return None
    from rtseg_ros.nets import WeightsError
    from rtseg_ros.nets.weights import resolve_weights

    try:
        return str(resolve_weights(weights))
    except WeightsError as exc:
        raise ParameterError(f"{exc}; or set 'weights' to '' to run with untrained random weights") from None


def _as_sequence(value: Any) -> Sequence[Any]:
    return [value] if isinstance(value, (int, float)) else list(value)
