"""Start the rtseg_ros segmentation node with a parameter file from the package's config folder.

    ros2 launch rtseg_ros segmentation.launch.py
    ros2 launch rtseg_ros segmentation.launch.py config:=atonet_cityscapes.yaml \
        weights:=/data/atonet_cityscapes.pth image_topic:=/front/image_raw namespace:=front

``config`` is a file name in ``share/rtseg_ros/config`` or a path. The other arguments override
single parameters of that file when they are not empty. ``localhost_dds:=true`` keeps DDS on this
host with the package's Fast DDS profile (shared memory for large images); leave it off when the
camera or the consumers run on other machines.
"""
from __future__ import annotations

import os

import yaml
from ament_index_python.packages import get_package_share_directory
from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = "rtseg_ros"
EXECUTABLE = "segmentation_node"
CONFIG_DIR = os.path.join(get_package_share_directory(PACKAGE), "config")
DDS_PROFILE = os.path.join(CONFIG_DIR, "fastdds_localhost.xml")

# Launch arguments that override one node parameter each when given a non-empty value.
PARAMETER_OVERRIDES = {
    "weights": "Checkpoint file; overrides the config's 'weights'.",
    "model": "mfaranet or atonet.",
    "label_set": "cityscapes or camvid.",
    "input_width": "Network input width (multiple of 32).",
    "input_height": "Network input height (multiple of 32).",
    "scales": "MFARANet scales, e.g. [2].",
    "backend": "torch, compile, tensorrt or onnxruntime.",
    "precision": "fp32, fp16 or int8.",
    "device": "cpu, cuda or cuda:N.",
    "output_resolution": "input or network.",
    "input_transport": "raw or compressed (then point image_topic at the .../compressed topic).",
    "confidence_encoding": "32FC1 or mono8.",
    "publish_overlay": "true or false.",
    "qos_reliability": "best_effort or reliable.",
    "engine_cache_dir": "Folder for exported and compiled engines.",
}


def _config_path(name: str) -> str:
    """A config argument as a path: an existing path as given, else a file in the package config dir."""
    expanded = os.path.expanduser(name)
    if os.path.isfile(expanded):
        return expanded
    candidate = os.path.join(CONFIG_DIR, name)
    if not os.path.isfile(candidate):
        available = ", ".join(sorted(f for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml")))
        raise FileNotFoundError(f"config {name!r} is neither a file nor one of {CONFIG_DIR}: {available}")
    return candidate


def _segmentation_node(context: LaunchContext) -> list[Node]:
    """The node, built once the launch arguments are known (empty overrides are left out)."""
    overrides = {}
    for name in PARAMETER_OVERRIDES:
        value = LaunchConfiguration(name).perform(context)
        if value:
            # Typed like a params file (512 -> int, [2] -> list), except paths, which stay strings.
            overrides[name] = value if name in ("weights", "engine_cache_dir") else yaml.safe_load(value)
    return [
        Node(
            package=PACKAGE,
            executable=EXECUTABLE,
            name=LaunchConfiguration("node_name").perform(context),
            namespace=LaunchConfiguration("namespace").perform(context),
            parameters=[_config_path(LaunchConfiguration("config").perform(context)), overrides],
            remappings=[
                ("image", LaunchConfiguration("image_topic").perform(context)),
                ("camera_info", LaunchConfiguration("camera_info_topic").perform(context)),
            ],
            ros_arguments=["--log-level", LaunchConfiguration("log_level").perform(context)],
            output="screen",
            emulate_tty=True,
        )
    ]


def generate_launch_description() -> LaunchDescription:
    localhost_dds = LaunchConfiguration("localhost_dds")
    return LaunchDescription(
        [
            DeclareLaunchArgument("config", default_value="cpu.yaml",
                                  description=f"Parameter file: a name in {CONFIG_DIR} or a path."),
            DeclareLaunchArgument("image_topic", default_value="/camera/image_raw",
                                  description="Camera topic the node's 'image' input is remapped to."),
            DeclareLaunchArgument("camera_info_topic", default_value="/camera/camera_info",
                                  description="CameraInfo topic the node's 'camera_info' input is remapped to."),
            DeclareLaunchArgument("namespace", default_value="",
                                  description="Namespace of the node and of its output topics."),
            DeclareLaunchArgument("node_name", default_value=EXECUTABLE, description="Node name."),
            DeclareLaunchArgument("log_level", default_value="info", description="debug, info, warn or error."),
            DeclareLaunchArgument("localhost_dds", default_value="false",
                                  description="true: keep DDS on this host with the package's Fast DDS profile."),
            *(DeclareLaunchArgument(name, default_value="", description=description)
              for name, description in PARAMETER_OVERRIDES.items()),
            SetEnvironmentVariable("FASTRTPS_DEFAULT_PROFILES_FILE", DDS_PROFILE, condition=IfCondition(localhost_dds)),
            SetEnvironmentVariable("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST", condition=IfCondition(localhost_dds)),
            OpaqueFunction(function=_segmentation_node),
        ]
    )
