"""The segmentation node's parameters: declaration with descriptors, validation, SegmenterConfig.

The table ``PARAMETERS`` is the single description of every parameter (default, meaning, allowed
values); the node declares from it and validates against it, and the README's parameter table
follows it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node

from rtseg_ros.datasets.labels import LABEL_SETS
from rtseg_ros.engines import BACKENDS, OUTPUT_RESOLUTIONS, PRECISIONS, ConfigError, SegmenterConfig, check_runtime
from rtseg_ros.nets import MODEL_NAMES, WeightsError
from rtseg_ros.nets.weights import resolve_weights

__all__ = [
    "PARAMETERS",
    "ENGINE_PARAMETERS",
    "ParameterError",
    "ParameterSpec",
    "declare_parameters",
    "read_parameters",
    "validate_parameters",
    "segmenter_config",
]


class ParameterError(ValueError):
    """A parameter value the node cannot run with; the message is the reason given to the caller."""


@dataclass(frozen=True)
class ParameterSpec:
    """One node parameter.

    Attributes:
        default: the value when neither a params file nor ``-p`` sets it; its type is the
            parameter's type.
        description: shown by ``ros2 param describe``.
        choices: the allowed values of a string parameter, if limited.
        integer_range: inclusive bounds of an integer (or each element of an integer array).
        integer_step: if not 0, valid integers are the lower bound plus a multiple of it.
        float_range: inclusive bounds of a floating-point parameter.
        rebuilds_engine: changing it at run time builds a new Segmenter in the background.
        read_only: fixed at start-up (it shapes subscriptions or publishers).
    """

    default: Any
    description: str
    choices: tuple[str, ...] = ()
    integer_range: tuple[int, int] | None = None
    integer_step: int = 0
    float_range: tuple[float, float] | None = None
    rebuilds_engine: bool = False
    read_only: bool = False

    def descriptor(self, name: str) -> ParameterDescriptor:
        descriptor = ParameterDescriptor(name=name, description=self.description, read_only=self.read_only)
        if self.choices:
            descriptor.additional_constraints = "one of: " + ", ".join(self.choices)
        if self.integer_range is not None:
            low, high = self.integer_range
            if isinstance(self.default, int):
                descriptor.integer_range = [IntegerRange(from_value=low, to_value=high, step=self.integer_step)]
            else:
                # ROS ranges apply to scalars only; array elements are checked in validate_parameters.
                descriptor.additional_constraints = f"each element in [{low}, {high}], no repeats"
        if self.float_range is not None:
            low, high = self.float_range
            descriptor.floating_point_range = [FloatingPointRange(from_value=low, to_value=high, step=0.0)]
        return descriptor


PARAMETERS: dict[str, ParameterSpec] = {
    "model": ParameterSpec(
        "mfaranet", "Network architecture.", choices=MODEL_NAMES, rebuilds_engine=True),
    "weights": ParameterSpec(
        "", "Checkpoint: a path, a file name in the models folders, or a models/manifest.yaml entry "
        "(ours or the authors' files). Empty: untrained random weights, for testing only.",
        rebuilds_engine=True),
    "label_set": ParameterSpec(
        "cityscapes", "Classes the weights predict; sets the class names and overlay colours.",
        choices=tuple(LABEL_SETS), rebuilds_engine=True),
    "input_width": ParameterSpec(
        1024, "Network input width in pixels, a multiple of 32; frames are resized to it.",
        integer_range=(32, 8192), integer_step=32, rebuilds_engine=True),
    "input_height": ParameterSpec(
        512, "Network input height in pixels, a multiple of 32; frames are resized to it.",
        integer_range=(32, 8192), integer_step=32, rebuilds_engine=True),
    "scales": ParameterSpec(
        [1, 2, 3, 4], "MFARANet prediction scales kept at inference (pruning); ATONet needs the default.",
        integer_range=(1, 4), rebuilds_engine=True),
    "backend": ParameterSpec(
        "torch", "Inference engine.", choices=BACKENDS,
        rebuilds_engine=True),
    "precision": ParameterSpec(
        "fp32", "Numeric precision of the engine.", choices=PRECISIONS, rebuilds_engine=True),
    "device": ParameterSpec("cpu", "Compute device: cpu, cuda or cuda:N.", rebuilds_engine=True),
    "output_resolution": ParameterSpec(
        "input", "Size of the published labels: 'input' (the camera frame's) or 'network' (the input_* size).",
        choices=OUTPUT_RESOLUTIONS, rebuilds_engine=True),
    "engine_cache_dir": ParameterSpec(
        "", "Folder for exported/compiled engines. Empty: $RTSEG_ROS_CACHE, else ~/.cache/rtseg_ros.",
        rebuilds_engine=True),
    "confidence_encoding": ParameterSpec(
        "32FC1", "Encoding of the confidence image: 32FC1 (probability) or mono8 (probability x 255).",
        choices=("32FC1", "mono8")),
    "publish_overlay": ParameterSpec(
        True, "Publish the colour overlay (computed only while someone subscribes)."),
    "overlay_alpha": ParameterSpec(
        0.5, "Weight of the class colours in the overlay, 0 (camera only) to 1 (colours only).",
        float_range=(0.0, 1.0)),
    "input_transport": ParameterSpec(
        "raw", "Camera topic type: 'raw' (sensor_msgs/Image) or 'compressed' (sensor_msgs/CompressedImage).",
        choices=("raw", "compressed"), read_only=True),
    "qos_reliability": ParameterSpec(
        "best_effort", "Reliability of the camera subscription; best_effort takes both kinds of camera publisher. "
        "The outputs are always reliable, which every subscriber accepts.",
        choices=("best_effort", "reliable"), read_only=True),
    "qos_depth": ParameterSpec(
        1, "History depth of the camera subscription and the output topics.", integer_range=(1, 100),
        read_only=True),
}

ENGINE_PARAMETERS: frozenset[str] = frozenset(name for name, spec in PARAMETERS.items() if spec.rebuilds_engine)


def declare_parameters(node: Node) -> None:
    """Declare every parameter of ``PARAMETERS`` on ``node`` with its descriptor."""
    for name, spec in PARAMETERS.items():
        node.declare_parameter(name, spec.default, spec.descriptor(name))


def read_parameters(node: Node) -> dict[str, Any]:
    """The current value of every declared parameter, by name."""
    return {name: node.get_parameter(name).value for name in PARAMETERS}


def validate_parameters(values: Mapping[str, Any]) -> SegmenterConfig:
    """Check a full set of parameter values and turn the engine ones into a SegmenterConfig.

    Besides the parameters' own constraints this runs the Segmenter's checks: the settings fit
    together and this machine can run them (CUDA, optional libraries), so a change that cannot
    work is rejected before a rebuild starts.

    Raises:
        ParameterError: the first problem found, worded for the person who set the value.
    """
    for name, spec in PARAMETERS.items():
        value = values[name]
        if spec.choices and value not in spec.choices:
            raise ParameterError(f"{name} must be one of {', '.join(spec.choices)}; got {value!r}")
        if spec.integer_range is not None:
            low, high = spec.integer_range
            items = _as_sequence(value)
            if not items or any(not low <= int(item) <= high for item in items):
                raise ParameterError(f"{name} must be in [{low}, {high}]; got {value!r}")
        if spec.float_range is not None and not spec.float_range[0] <= float(value) <= spec.float_range[1]:
            raise ParameterError(f"{name} must be in [{spec.float_range[0]}, {spec.float_range[1]}]; got {value!r}")
    config = segmenter_config(values)
    try:
        config.validate()
        check_runtime(config)
    except ConfigError as exc:
        raise ParameterError(str(exc)) from None
    return config


def segmenter_config(values: Mapping[str, Any]) -> SegmenterConfig:
    """The SegmenterConfig the engine parameters describe (weights resolved, nothing else validated).

    Raises:
        ParameterError: ``weights`` names no existing file or manifest entry.
    """
    return SegmenterConfig(
        model=values["model"],
        weights=_weights_path(values["weights"]),
        label_set=values["label_set"],
        input_height=int(values["input_height"]),
        input_width=int(values["input_width"]),
        scales=tuple(int(s) for s in _as_sequence(values["scales"])),
        backend=values["backend"],
        precision=values["precision"],
        device=values["device"],
        output_resolution=values["output_resolution"],
        cache_dir=values["engine_cache_dir"] or None,
    )


def _weights_path(weights: str) -> str | None:
    """A weights parameter (a path, a file name in the models folders, or a manifest entry) as a path."""
    if not weights:
        return None
    try:
        return str(resolve_weights(weights))
    except WeightsError as exc:
        raise ParameterError(f"{exc}; or set 'weights' to '' to run with untrained random weights") from None


def _as_sequence(value: Any) -> Sequence[Any]:
    return [value] if isinstance(value, int) else list(value)
