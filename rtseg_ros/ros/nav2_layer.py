"""The ``observation_sources`` block of Nav2's semantic segmentation costmap layer, for a label set.

``semantic_segmentation_layer::SemanticSegmentationLayer`` (github.com/kiwicampus/semantic_segmentation_layer)
reads, per camera source, the topics of a class-id mask, its confidence, the ``vision_msgs/LabelInfo``
and the depth camera's organized cloud, and a list of class types (a cost for a group of class names).
It logs an error for every LabelInfo class that no class type names, so the block lists every class
of the label set: the ones given to a type by name, and all others in the fallback type.

No rclpy and no torch: ``python -m rtseg_ros.ros.nav2_layer --label-set classes.yaml`` prints a block.
"""
from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import yaml

from rtseg_ros.datasets.labels import LabelSet, get_label_set
from rtseg_ros.names import Topics

__all__ = ["PLUGIN", "ClassType", "EXAMPLE_TYPES", "layer_block", "layer_yaml", "main"]

PLUGIN = "semantic_segmentation_layer::SemanticSegmentationLayer"


@dataclass(frozen=True)
class ClassType:
    """One ``class_types`` entry of the layer: the costs of a group of classes (names as the layer reads them).

    Attributes:
        base_cost: the tile's cost after one observation of the class.
        max_cost: its cost once ``samples_to_max_cost`` observations average more than ``mark_confidence``.
        mark_confidence: the average confidence (0..255, the mono8 confidence image) that ``max_cost`` needs.
        samples_to_max_cost: observations that ``max_cost`` needs.
        dominant_priority: an observation of the class clears the tile's other classes at once.
    """

    base_cost: int
    max_cost: int
    mark_confidence: int = 0
    samples_to_max_cost: int = 0
    dominant_priority: bool = False


# The example costs of docs/nav2.md (254 is Nav2's lethal obstacle): somewhere to drive, somewhere to
# avoid when possible (marked fully once seen confidently a few times), and obstacles that win a tile at once.
EXAMPLE_TYPES: dict[str, ClassType] = {
    "traversable": ClassType(base_cost=0, max_cost=0),
    "caution": ClassType(base_cost=100, max_cost=200, mark_confidence=180, samples_to_max_cost=3),
    "obstacle": ClassType(base_cost=254, max_cost=254, dominant_priority=True),
}


def layer_block(label_set: LabelSet, groups: Mapping[str, Sequence[str]], *, fallback: str = "obstacle",
                types: Mapping[str, ClassType] = EXAMPLE_TYPES, namespace: str = "",
                cloud_topic: str = "/camera/depth/points", source: str = "camera",
                approximate_sync: bool = False) -> dict:
    """The layer's parameters (the mapping under its name in a costmap's params) for ``label_set``.

    Args:
        label_set: the classes the node publishes (its LabelInfo).
        groups: class type -> class names given to it; every other class goes to ``fallback``.
        fallback: the class type of the classes no group names.
        types: the costs of each class type.
        namespace: the segmentation node's namespace (its topics are under it).
        cloud_topic: the depth camera's organized cloud, aligned to the colour camera.
        source: the name of the observation source.
        approximate_sync: the layer's ``use_approximate_time_sync``.

    Raises:
        ValueError: a class the label set does not have, a class in two groups, or a type without costs.
    """
    known = set(label_set.class_names)
    owner: dict[str, str] = {}
    for type_name, names in groups.items():
        for name in names:
            if name not in known:
                raise ValueError(f"label set {label_set.name!r} has no class {name!r}; it has "
                                 f"{', '.join(label_set.class_names)}")
            if name in owner:
                raise ValueError(f"class {name!r} is in both {owner[name]!r} and {type_name!r}")
            owner[name] = type_name
    members = {type_name: list(names) for type_name, names in groups.items()}
    rest = [name for name in label_set.class_names if name not in owner]
    if rest:
        members.setdefault(fallback, []).extend(rest)
    members = {type_name: names for type_name, names in members.items() if names}
    missing = sorted(set(members) - set(types))
    if missing:
        raise ValueError(f"no costs for class types {missing}; known: {', '.join(types)}")
    prefix = "/" + namespace.strip("/") + "/" if namespace.strip("/") else "/"
    camera = {
        "segmentation_topic": prefix + Topics.LABELS.name,
        "confidence_topic": prefix + Topics.CONFIDENCE.name,
        "labels_topic": prefix + Topics.LABEL_INFO.name,
        "pointcloud_topic": cloud_topic,
        "class_types": list(members),
    }
    for type_name, names in members.items():
        costs = types[type_name]
        camera[type_name] = {"classes": names, "base_cost": costs.base_cost, "max_cost": costs.max_cost,
                             "mark_confidence": costs.mark_confidence,
                             "samples_to_max_cost": costs.samples_to_max_cost,
                             "dominant_priority": costs.dominant_priority}
    return {"plugin": PLUGIN, "enabled": True, "use_approximate_time_sync": approximate_sync,
            "observation_sources": source, source: camera}


def layer_yaml(label_set: LabelSet, groups: Mapping[str, Sequence[str]], *, layer: str = "semantic_segmentation_layer",
               **options: object) -> str:
    """:func:`layer_block` as the YAML to paste under a costmap's ``ros__parameters`` (lists on one line)."""
    return yaml.safe_dump({layer: layer_block(label_set, groups, **options)}, sort_keys=False,
                          default_flow_style=None, width=100)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the layer block of a label set: ``--traversable`` and ``--caution`` name classes, the rest are obstacles."""
    parser = argparse.ArgumentParser(prog="python -m rtseg_ros.ros.nav2_layer", description=main.__doc__)
    parser.add_argument("--label-set", default="cityscapes", help="cityscapes, camvid or a label set YAML file")
    parser.add_argument("--traversable", default="", help="comma-separated class names the robot may drive on")
    parser.add_argument("--caution", default="", help="comma-separated class names to avoid when possible")
    parser.add_argument("--namespace", default="", help="the segmentation node's namespace")
    parser.add_argument("--cloud-topic", default="/camera/depth/points",
                        help="the depth camera's organized cloud, aligned to the colour camera")
    parser.add_argument("--approximate-sync", action="store_true", help="the layer's use_approximate_time_sync")
    args = parser.parse_args(argv)
    groups = {name: [item.strip() for item in text.split(",") if item.strip()]
              for name, text in (("traversable", args.traversable), ("caution", args.caution))}
    try:
        text = layer_yaml(get_label_set(args.label_set), groups, namespace=args.namespace,
                          cloud_topic=args.cloud_topic, approximate_sync=args.approximate_sync)
    except ValueError as exc:
        parser.error(str(exc))
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
