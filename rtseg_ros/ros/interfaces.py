"""The node's ROS interface as rclpy objects: QoS profiles, message types, label_info, diagnostics names.

:mod:`rtseg_ros.names` describes every topic as plain data; this module turns those descriptions into
what rclpy needs. It imports rclpy and message packages, never torch, so the demo, live evaluation, the
tests and any other client process can talk to the node without loading the engines.
"""
from __future__ import annotations

import importlib
import json
from functools import lru_cache
from typing import Any

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from rtseg_ros.names import PACKAGE, QosSpec, Topics, TopicSpec

__all__ = [
    "LABEL_INFO_QOS",
    "VisionMsgsMissing",
    "describe_label_info",
    "diagnostic_name",
    "label_info_message",
    "message_type",
    "parse_label_info_meta",
    "qos_profile",
    "vision_msgs_classes",
]

_RELIABILITY = {"reliable": ReliabilityPolicy.RELIABLE, "best_effort": ReliabilityPolicy.BEST_EFFORT}
_DURABILITY = {"volatile": DurabilityPolicy.VOLATILE, "transient_local": DurabilityPolicy.TRANSIENT_LOCAL}


class VisionMsgsMissing(ImportError):
    """vision_msgs, whose LabelInfo the node publishes on label_info, is not installed."""


def qos_profile(spec: QosSpec, depth: int | None = None) -> QoSProfile:
    """The rclpy profile of ``spec`` (keep-last history), with ``depth`` instead of the spec's if given.

    Raises:
        ValueError: an unknown reliability or durability name.
    """
    try:
        reliability, durability = _RELIABILITY[spec.reliability], _DURABILITY[spec.durability]
    except KeyError as exc:
        raise ValueError(f"unknown QoS setting {exc.args[0]!r} in {spec}") from None
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=spec.depth if depth is None else depth,
                      reliability=reliability, durability=durability)


@lru_cache(maxsize=None)
def _import_message(msg_type: str) -> type:
    package, kind, name = msg_type.split("/")
    return getattr(importlib.import_module(f"{package}.{kind}"), name)


def vision_msgs_classes() -> tuple[type, type]:
    """``(LabelInfo, VisionClass)`` of vision_msgs.

    Raises:
        VisionMsgsMissing: vision_msgs is not installed; the message says how to install it.
    """
    try:
        from vision_msgs.msg import LabelInfo, VisionClass
    except ImportError as exc:
        raise VisionMsgsMissing(
            f"vision_msgs is not installed ({exc}); {Topics.LABEL_INFO.name} is a vision_msgs/msg/LabelInfo. "
            f"Install it with rosdep (rosdep install --from-paths <workspace>/src --ignore-src -y, {PACKAGE}'s "
            "package.xml lists it) or apt (ros-$ROS_DISTRO-vision-msgs), or build it from source in the "
            "workspace") from None
    return LabelInfo, VisionClass


def message_type(spec: TopicSpec) -> type:
    """The message class of a topic of the node.

    Raises:
        VisionMsgsMissing: the topic is label_info and vision_msgs is not installed.
        ImportError: the topic's message package is not installed.
    """
    if spec == Topics.LABEL_INFO:
        return vision_msgs_classes()[0]
    try:
        return _import_message(spec.msg_type)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ImportError(f"message type {spec.msg_type} of topic {spec.name!r} is not available: {exc}") from None


LABEL_INFO_QOS: QoSProfile = qos_profile(Topics.LABEL_INFO.qos)


def label_info_message(class_names: list[str] | tuple[str, ...], threshold: float = 0.0) -> Any:
    """The ``vision_msgs/LabelInfo`` of a label set: class ids 0..N-1 with their names.

    ``threshold`` is 0: the node publishes every pixel's most likely class whatever its probability
    (the confidence image carries the probability).

    Raises:
        VisionMsgsMissing: vision_msgs is not installed.
    """
    label_info, vision_class = vision_msgs_classes()
    return label_info(class_map=[vision_class(class_id=i, class_name=name) for i, name in enumerate(class_names)],
                      threshold=float(threshold))


def diagnostic_name(node_path: str, camera: str = "") -> str:
    """The name of a node's status on /diagnostics (one per camera of a multi-camera node); the node's full
    path tells several nodes apart, the camera's name the cameras of one node."""
    return f"{node_path}: segmentation" + (f" ({camera})" if camera else "")


def describe_label_info(document: dict[str, Any]) -> str:
    """One line about the engine a label_info_meta document announces (what the demo prints when the node is up)."""
    height, width = document["input_size"]
    return (f"{document['model']} on {document['label_set']} ({document['num_classes']} classes), input "
            f"{height}x{width}, {document['backend']}/{document['precision']} on {document['device']}")


def parse_label_info_meta(msg: Any) -> dict[str, Any]:
    """The JSON document of a label_info_meta ``std_msgs/String``.

    Raises:
        ValueError: the text is not a label_info document.
    """
    try:
        document = json.loads(msg.data)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ValueError(f"not a label_info_meta document: {exc}") from None
    if not isinstance(document, dict) or "format" not in document:
        raise ValueError("not a label_info_meta document: no 'format' key")
    return document
