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
from std_msgs.msg import String

from rtseg_ros.names import QosSpec, Topics, TopicSpec

try:  # vision_msgs is optional: the JSON label_info stands in where it is missing.
    from vision_msgs.msg import LabelInfo, VisionClass
except ImportError:
    LabelInfo = VisionClass = None

__all__ = [
    "LABEL_INFO_QOS",
    "LABEL_INFO_TYPE",
    "LabelInfo",
    "VisionClass",
    "describe_label_info",
    "diagnostic_name",
    "message_type",
    "qos_profile",
]

_RELIABILITY = {"reliable": ReliabilityPolicy.RELIABLE, "best_effort": ReliabilityPolicy.BEST_EFFORT}
_DURABILITY = {"volatile": DurabilityPolicy.VOLATILE, "transient_local": DurabilityPolicy.TRANSIENT_LOCAL}


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


def message_type(spec: TopicSpec) -> type:
    """The message class of a topic of the node.

    ``label_info`` is ``vision_msgs/LabelInfo`` where vision_msgs is installed and a ``std_msgs/String``
    of JSON otherwise (:data:`LABEL_INFO_TYPE`), as the node publishes it on this machine.

    Raises:
        ImportError: the topic's message package is not installed.
    """
    if spec == Topics.LABEL_INFO:
        return LABEL_INFO_TYPE
    try:
        return _import_message(spec.msg_type)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ImportError(f"message type {spec.msg_type} of topic {spec.name!r} is not available: {exc}") from None


LABEL_INFO_TYPE: type = LabelInfo if LabelInfo is not None else String
LABEL_INFO_QOS: QoSProfile = qos_profile(Topics.LABEL_INFO.qos)


def diagnostic_name(node_path: str) -> str:
    """The name of a node's status on /diagnostics; the node's full path tells several cameras apart."""
    return f"{node_path}: segmentation"


def describe_label_info(msg: Any) -> str:
    """One line about the engine a label_info message announces (what the demo prints when the node is up)."""
    if LabelInfo is not None and isinstance(msg, LabelInfo):
        return f"{len(msg.class_map)} classes"
    info = json.loads(msg.data)
    height, width = info["input_size"]
    return (f"{info['model']} on {info['label_set']} ({info['num_classes']} classes), input {height}x{width}, "
            f"{info['backend']}/{info['precision']} on {info['device']}")
