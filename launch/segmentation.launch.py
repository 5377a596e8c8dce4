"""Start the rtseg_ros segmentation node with a parameter file from the package's config folder.

    ros2 launch rtseg_ros segmentation.launch.py
    ros2 launch rtseg_ros segmentation.launch.py config:=atonet_cityscapes.yaml \
        weights:=/data/atonet_cityscapes.pth image_topic:=/front/image_raw namespace:=front
    ros2 launch rtseg_ros segmentation.launch.py --show-args

``config`` is a file name in ``share/rtseg_ros/config`` or a path. Every node parameter
(``rtseg_ros.names.PARAMETERS``, also printed by ``rtseg params``) is an argument of the same name
that overrides the file's value when it is not empty. Overrides are read like a params file
(``input_width:=512``, ``scales:=[2]``, ``publish_overlay:=false``; text stays text) and checked
against the parameter table before the node starts: a wrong type or range ends the launch with one
line naming the parameter, the value and what it takes, and a non-zero exit status.

``image_topic`` defaults to ``/camera/image_raw``, or ``/camera/image_raw/compressed`` when the
node's ``input_transport`` (this argument or the config file) is ``compressed``.

``lifecycle:=true`` starts the managed (lifecycle) node instead: with ``autostart:=true`` (the default) the
launch configures it and, once it is inactive, activates it, as Nav2's lifecycle manager would; with
``autostart:=false`` it stays unconfigured for an external manager (``ros2 lifecycle set``, Nav2's
``lifecycle_manager``). ``cameras:=[front,rear]`` makes one node serve several cameras with one engine
(``multi_camera.launch.py`` remaps each camera's topics).

When the node exits with an error (bad weights, a missing library), the launch stops and
``ros2 launch`` exits with status 1, so a supervisor (systemd, a robot's process manager) sees it.

``localhost_dds:=true`` sets ``FASTRTPS_DEFAULT_PROFILES_FILE`` to the package's Fast DDS profile
(shared memory for large images, UDP on 127.0.0.1 only) and keeps discovery on this host
(``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``; ``ROS_LOCALHOST_ONLY=1`` on Humble) for the processes
this launch starts, i.e. the node. It does not change the shell, the camera driver or other
launches: a process on another host cannot reach the node then, and processes on this host reach
it over shared memory or loopback UDP only if they use the same settings (export them, as
docs/ros.md shows). Leave it off when the camera or the consumers run on other machines.
"""
from __future__ import annotations

import json
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.event_handlers import OnProcessExit
from launch.events.process import ProcessExited
from launch.substitutions import LaunchConfiguration
from launch.events import matches_action
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.parameter_descriptions import ParameterValue
from lifecycle_msgs.msg import Transition

from rtseg_ros.names import LIFECYCLE_FLAG, NODE_EXECUTABLE, PACKAGE, PARAMETERS, ParameterSpec
from rtseg_ros.ros.node_process import read_params_file
from rtseg_ros.ros.parameters import ParameterError, parse_override

EXECUTABLE = NODE_EXECUTABLE
CONFIG_DIR = os.path.join(get_package_share_directory(PACKAGE), "config")
DDS_PROFILE = os.path.join(CONFIG_DIR, "fastdds_localhost.xml")
# The camera topic by input_transport, when image_topic is left empty.
DEFAULT_IMAGE_TOPICS = {"raw": "/camera/image_raw", "compressed": "/camera/image_raw/compressed"}
LOG_LEVELS = ["debug", "info", "warn", "error", "fatal"]
BOOLEANS = ["true", "false"]
# Humble's middleware reads ROS_LOCALHOST_ONLY; Iron and later read ROS_AUTOMATIC_DISCOVERY_RANGE.
LOCALHOST_DISCOVERY = (("ROS_LOCALHOST_ONLY", "1") if os.environ.get("ROS_DISTRO") == "humble"
                       else ("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST"))


class NodeFailed(RuntimeError):
    """The segmentation node exited with an error; raised in the launch so that it ends non-zero."""


def _override_description(spec: ParameterSpec) -> str:
    """A parameter's launch argument help: its own description and what empty keeps (launch adds the choices)."""
    default = json.dumps(spec.default)
    return f"{spec.description} Leave empty to keep the config file's value (node default: {default})"


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


def _overrides(context: LaunchContext) -> dict[str, object]:
    """The non-empty parameter arguments, typed and checked against the parameter table.

    Raises:
        ParameterError: the first argument the node would refuse (the launch prints it and exits 1).
    """
    overrides: dict[str, object] = {}
    for name in PARAMETERS:
        text = LaunchConfiguration(name).perform(context)
        if text:
            value = parse_override(name, text)
            # Text must reach the node as text: launch_ros would read "null" or "2024" as YAML.
            overrides[name] = ParameterValue(value, value_type=str) if isinstance(value, str) else value
    return overrides


def _stop_on_failure(event: ProcessExited, context: LaunchContext) -> None:
    """End the launch with an error when the node fails (a non-zero exit, or a signal nobody here sent)."""
    if event.returncode > 0 or (event.returncode < 0 and not context.is_shutdown):
        raise NodeFailed(f"{event.process_name} exited with code {event.returncode}; see its log above")


def _segmentation_node(context: LaunchContext) -> list:
    """The node, built once the launch arguments are known (empty overrides are left out)."""
    overrides = _overrides(context)
    node_name = LaunchConfiguration("node_name").perform(context)
    config = _config_path(LaunchConfiguration("config").perform(context))
    image_topic = LaunchConfiguration("image_topic").perform(context)
    if not image_topic:
        transport = LaunchConfiguration("input_transport").perform(context) or read_params_file(
            config, node_name).get("input_transport", PARAMETERS["input_transport"].default)
        try:
            image_topic = DEFAULT_IMAGE_TOPICS[transport]
        except KeyError:
            raise ParameterError(f"input_transport {transport!r} in {config} is not one of "
                                 f"{', '.join(DEFAULT_IMAGE_TOPICS)}") from None
    use_sim_time = LaunchConfiguration("use_sim_time").perform(context) == "true"
    managed = LaunchConfiguration("lifecycle").perform(context) == "true"
    remappings = [("image", image_topic), ("camera_info", LaunchConfiguration("camera_info_topic").perform(context))]
    # Further remaps, e.g. each camera's topics of a multi-camera node (multi_camera.launch.py fills it).
    remappings += [tuple(pair.split(":=", 1)) for pair in LaunchConfiguration("remappings").perform(context).split()
                   if ":=" in pair]
    node = (LifecycleNode if managed else Node)(
        package=PACKAGE,
        executable=EXECUTABLE,
        name=node_name,
        namespace=LaunchConfiguration("namespace").perform(context),
        parameters=[config, {"use_sim_time": use_sim_time}, overrides],
        remappings=remappings,
        arguments=[LIFECYCLE_FLAG] if managed else [],
        ros_arguments=["--log-level", LaunchConfiguration("log_level").perform(context)],
        output="screen",
        emulate_tty=True,
    )
    actions = [node, RegisterEventHandler(OnProcessExit(target_action=node, on_exit=_stop_on_failure))]
    if managed and LaunchConfiguration("autostart").perform(context) == "true":
        actions += _autostart(node)
    return actions


def _autostart(node: LifecycleNode) -> list:
    """Configure the managed node at once and activate it when it reaches inactive (what Nav2's lifecycle
    manager does); launch events, which Humble's and Jazzy's launch_ros both have."""
    def transition(transition_id: int) -> EmitEvent:
        return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=transition_id))

    return [
        RegisterEventHandler(OnStateTransition(target_lifecycle_node=node, start_state="configuring",
                                               goal_state="inactive",
                                               entities=[transition(Transition.TRANSITION_ACTIVATE)])),
        transition(Transition.TRANSITION_CONFIGURE),
    ]


def generate_launch_description() -> LaunchDescription:
    localhost_dds = LaunchConfiguration("localhost_dds")
    return LaunchDescription(
        [
            DeclareLaunchArgument("config", default_value="cpu.yaml",
                                  description=f"Parameter file: a name in {CONFIG_DIR} or a path."),
            DeclareLaunchArgument("image_topic", default_value="",
                                  description="Camera topic the node's 'image' input is remapped to. Empty: "
                                  f"{DEFAULT_IMAGE_TOPICS['raw']}, or {DEFAULT_IMAGE_TOPICS['compressed']} "
                                  "with input_transport compressed."),
            DeclareLaunchArgument("camera_info_topic", default_value="/camera/camera_info",
                                  description="CameraInfo topic the node's 'camera_info' input is remapped to."),
            DeclareLaunchArgument("namespace", default_value="",
                                  description="Namespace of the node and of its output topics."),
            DeclareLaunchArgument("node_name", default_value=EXECUTABLE, description="Node name."),
            DeclareLaunchArgument("lifecycle", default_value="false", choices=BOOLEANS,
                                  description="true: the managed (lifecycle) node, configured and activated by "
                                  "autostart or by an external lifecycle manager."),
            DeclareLaunchArgument("autostart", default_value="true", choices=BOOLEANS,
                                  description="With lifecycle:=true: configure, then activate, at launch; false: "
                                  "leave the node unconfigured for a lifecycle manager."),
            DeclareLaunchArgument("remappings", default_value="",
                                  description="More topic remaps, space-separated FROM:=TO pairs (e.g. a "
                                  "multi-camera node's front/image:=/front/camera/image_raw)."),
            DeclareLaunchArgument("log_level", default_value="info", choices=LOG_LEVELS,
                                  description="The node's log level."),
            DeclareLaunchArgument("use_sim_time", default_value="false", choices=BOOLEANS,
                                  description="true: the node's clock follows /clock (a bag played with --clock), "
                                  "so latency is measured in bag time."),
            DeclareLaunchArgument("localhost_dds", default_value="false", choices=BOOLEANS,
                                  description="true: the node (only the processes of this launch) uses the "
                                  "package's Fast DDS profile (shared memory, UDP on 127.0.0.1) and discovers "
                                  "peers on this host only."),
            *(DeclareLaunchArgument(name, default_value="", description=_override_description(spec),
                                    choices=["", *spec.choices] if spec.choices else None)
              for name, spec in PARAMETERS.items()),
            SetEnvironmentVariable("FASTRTPS_DEFAULT_PROFILES_FILE", DDS_PROFILE, condition=IfCondition(localhost_dds)),
            SetEnvironmentVariable(*LOCALHOST_DISCOVERY, condition=IfCondition(localhost_dds)),
            OpaqueFunction(function=_segmentation_node),
        ]
    )
