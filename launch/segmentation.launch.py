"""Start the rtseg_ros segmentation node with a parameter file from the package's config folder.

    ros2 launch rtseg_ros segmentation.launch.py
    ros2 launch rtseg_ros segmentation.launch.py config:=atonet_cityscapes.yaml \
        weights:=/data/atonet_cityscapes.pth image_topic:=/front/image_raw namespace:=front

``config`` is a file name in ``share/rtseg_ros/config`` or a path. Every node parameter
(``rtseg_ros.names.PARAMETERS``, also printed by ``rtseg params``) is an argument of the same name
that overrides the file's value when it is not empty. ``localhost_dds:=true`` keeps DDS on this
host with the package's Fast DDS profile (shared memory for large images); leave it off when the
camera or the consumers run on other machines.
"""
from __future__ import annotations

import json
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from rtseg_ros.names import NODE_EXECUTABLE, PACKAGE, PARAMETERS, ParameterSpec

EXECUTABLE = NODE_EXECUTABLE
CONFIG_DIR = os.path.join(get_package_share_directory(PACKAGE), "config")
DDS_PROFILE = os.path.join(CONFIG_DIR, "fastdds_localhost.xml")


def _override_description(spec: ParameterSpec) -> str:
    """A parameter's launch argument help: the parameter's own description, its choices, what empty keeps."""
    choices = f" One of: {', '.join(spec.choices)}." if spec.choices else ""
    default = json.dumps(spec.default)
    return f"{spec.description}{choices} Leave empty to keep the config file's value (node default: {default})."


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
    for name, spec in PARAMETERS.items():
        value = LaunchConfiguration(name).perform(context)
        if value:
            overrides[name] = spec.parse(value)  # typed like a params file; text stays text
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
            *(DeclareLaunchArgument(name, default_value="", description=_override_description(spec))
              for name, spec in PARAMETERS.items()),
            SetEnvironmentVariable("FASTRTPS_DEFAULT_PROFILES_FILE", DDS_PROFILE, condition=IfCondition(localhost_dds)),
            SetEnvironmentVariable("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST", condition=IfCondition(localhost_dds)),
            OpaqueFunction(function=_segmentation_node),
        ]
    )
