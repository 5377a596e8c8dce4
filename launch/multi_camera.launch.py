"""Two cameras, two segmentation nodes: ``/front/segmentation_node`` and ``/rear/segmentation_node``.

    ros2 launch rtseg_ros multi_camera.launch.py
    ros2 launch rtseg_ros multi_camera.launch.py front_image_topic:=/cam0/image_raw \
        rear_image_topic:=/cam1/image_raw config:=atonet_cityscapes.yaml weights:=atonet_cityscapes.pth

Each camera gets ``segmentation.launch.py`` in a namespace of its own, so its outputs are
``/front/segmentation/labels``, ``/rear/segmentation/labels`` ..., and its /diagnostics status is named
after its node (``/front/segmentation_node: segmentation``). Every other argument of
``segmentation.launch.py`` (``config``, ``weights``, ``input_width``, ``log_level`` ...) applies to
both nodes. If either node fails, the launch stops both and exits non-zero.

Copy this file for more cameras, or for per-camera settings (an ``input_width`` in one group's
``launch_arguments``).
"""
from __future__ import annotations

import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration

SEGMENTATION_LAUNCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "segmentation.launch.py")
CAMERAS = ("front", "rear")


def _camera(name: str) -> GroupAction:
    """One node for camera ``name``, in namespace ``name``; scoped, so the two includes do not mix."""
    return GroupAction(
        [
            IncludeLaunchDescription(
                PythonLaunchDescriptionSource(SEGMENTATION_LAUNCH),
                launch_arguments={
                    "namespace": name,
                    "image_topic": LaunchConfiguration(f"{name}_image_topic"),
                    "camera_info_topic": LaunchConfiguration(f"{name}_camera_info_topic"),
                }.items(),
            )
        ],
        scoped=True,
        forwarding=True,
    )


def generate_launch_description() -> LaunchDescription:
    arguments = []
    for name in CAMERAS:
        arguments += [
            DeclareLaunchArgument(f"{name}_image_topic", default_value=f"/{name}/camera/image_raw",
                                  description=f"Image topic of the {name} camera."),
            DeclareLaunchArgument(f"{name}_camera_info_topic", default_value=f"/{name}/camera/camera_info",
                                  description=f"CameraInfo topic of the {name} camera."),
        ]
    return LaunchDescription([*arguments, *(_camera(name) for name in CAMERAS)])
