"""Several cameras: one segmentation node serving them all with one engine (batched), or one node per camera.

    ros2 launch rtseg_ros multi_camera.launch.py
    ros2 launch rtseg_ros multi_camera.launch.py cameras:=[front,rear,left] \
        image_topic_pattern:=/{camera}/image_raw config:=atonet_cityscapes.yaml weights:=synthetic_toy
    ros2 launch rtseg_ros multi_camera.launch.py one_node_per_camera:=true

Either way camera ``front``'s outputs are ``/front/segmentation/labels``, ``/front/segmentation/confidence``
..., and its input is ``image_topic_pattern`` with ``{camera}`` replaced by its name (default
``/front/camera/image_raw``; camera_info likewise), so the two layouts are interchangeable for
consumers:

* one node (the default): ``/segmentation_node`` with ``cameras:=[front,rear]``; one copy of the
  weights, one set of engine builds, frames of the cameras batched; /diagnostics has one status per
  camera (``/segmentation_node: segmentation (front)``).
* ``one_node_per_camera:=true``: ``segmentation.launch.py`` once per camera in the camera's namespace
  (``/front/segmentation_node``), each with its own engine.

Every other argument of ``segmentation.launch.py`` (``config``, ``weights``, ``input_width``, ``lifecycle``,
``log_level`` ...) applies to the node(s); ``remappings`` adds remaps of its own (``front/image:=/cam0/image``
overrides the pattern for one camera). If a node fails, the launch stops and exits non-zero.
"""
from __future__ import annotations

import os

from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction, IncludeLaunchDescription, OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration

from rtseg_ros.names import PARAMETERS
from rtseg_ros.ros.parameters import parse_override

SEGMENTATION_LAUNCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "segmentation.launch.py")
CAMERAS = ("front", "rear")
BOOLEANS = ["true", "false"]


def _cameras(context: LaunchContext) -> list[str]:
    """The cameras argument, checked like the node's parameter (a wrong list ends the launch with one line)."""
    return list(parse_override("cameras", LaunchConfiguration("cameras").perform(context)))


def _nodes(context: LaunchContext) -> list:
    cameras = _cameras(context)
    image_pattern = LaunchConfiguration("image_topic_pattern").perform(context)
    info_pattern = LaunchConfiguration("camera_info_topic_pattern").perform(context)
    extra = LaunchConfiguration("remappings").perform(context)
    include = PythonLaunchDescriptionSource(SEGMENTATION_LAUNCH)
    if LaunchConfiguration("one_node_per_camera").perform(context) == "true":
        # Scoped groups, so the includes' arguments do not leak into each other.
        return [GroupAction([IncludeLaunchDescription(include, launch_arguments={
            "namespace": camera,
            "cameras": "",
            "remappings": "",
            "image_topic": image_pattern.format(camera=camera),
            "camera_info_topic": info_pattern.format(camera=camera),
        }.items())], scoped=True, forwarding=True) for camera in cameras]
    remaps = [f"{camera}/image:={image_pattern.format(camera=camera)} "
              f"{camera}/camera_info:={info_pattern.format(camera=camera)}" for camera in cameras]
    return [IncludeLaunchDescription(include, launch_arguments={
        "cameras": "[" + ",".join(cameras) + "]",
        "remappings": " ".join([*remaps, extra]).strip(),
    }.items())]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([
        DeclareLaunchArgument("cameras", default_value="[" + ",".join(CAMERAS) + "]",
                              description=PARAMETERS["cameras"].description),
        DeclareLaunchArgument("one_node_per_camera", default_value="false", choices=BOOLEANS,
                              description="true: one node (and engine) per camera, in the camera's namespace, "
                              "instead of one node batching all cameras."),
        DeclareLaunchArgument("image_topic_pattern", default_value="/{camera}/camera/image_raw",
                              description="Each camera's image topic; {camera} is replaced by its name."),
        DeclareLaunchArgument("camera_info_topic_pattern", default_value="/{camera}/camera/camera_info",
                              description="Each camera's CameraInfo topic; {camera} is replaced by its name."),
        DeclareLaunchArgument("remappings", default_value="",
                              description="More remaps, space-separated FROM:=TO pairs (front/image:=/cam0/image)."),
        OpaqueFunction(function=_nodes),
    ])
