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
from rclpy.node import Node

from rtseg_ros.engines import ConfigError, SegmenterConfig
from rtseg_ros.names import ENGINE_PARAMETERS, PARAMETERS, ParameterSpec

__all__ = [
    "ENGINE_PARAMETERS",
    "PARAMETERS",
    "ParameterError",
    "declare_parameters",
    "descriptor",
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
    """Declare every parameter of :data:`PARAMETERS` on ``node`` with its descriptor."""
    for name, spec in PARAMETERS.items():
        node.declare_parameter(name, spec.default, descriptor(name, spec))


def read_parameters(node: Node) -> dict[str, Any]:
    """The current value of every declared parameter, by name."""
    return {name: node.get_parameter(name).value for name in PARAMETERS}


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
