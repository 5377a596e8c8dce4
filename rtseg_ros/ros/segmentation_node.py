"""The ROS 2 segmentation node: camera frames in, labels, confidence and an overlay out.

Topics (relative names, so a namespace or remap moves them):

* in  ``image`` (sensor_msgs/Image, or sensor_msgs/CompressedImage with ``input_transport:=compressed``),
  ``camera_info`` (sensor_msgs/CameraInfo, optional)
* out ``segmentation/labels`` (mono8 class ids), ``segmentation/confidence`` (32FC1 or mono8),
  ``segmentation/overlay`` (rgb8), ``segmentation/camera_info`` (scaled to the label image),
  ``segmentation/label_info`` (vision_msgs/LabelInfo, transient local), ``segmentation/label_info_meta``
  (std_msgs/String, transient local), and ``/diagnostics`` once a second.

With ``cameras: [front, rear]`` one node serves several cameras with one engine, their frames batched:
each camera's topics are under its name (``front/image`` ... ``front/segmentation/labels``), and
/diagnostics has one status per camera.

Every output carries the input frame's header. Two nodes, one implementation
(:class:`~rtseg_ros.ros.segmentation_server.SegmentationServer`): ``SegmentationNode`` configures and
activates itself at start-up; ``ManagedSegmentationNode`` (``segmentation_node --lifecycle``, or the launch
file's ``lifecycle:=true``) is a lifecycle node that an external manager (Nav2's lifecycle manager,
``ros2 lifecycle set``) configures, activates, deactivates and cleans up.

Topic names, types and QoS are :class:`rtseg_ros.names.Topics`; parameters are
:data:`rtseg_ros.names.PARAMETERS`.

``label_info`` is always ``vision_msgs/LabelInfo`` (class ids and names, ``threshold`` 0); without
vision_msgs the node does not start (exit code 2). What LabelInfo has no field for goes in the
latched companion ``label_info_meta``, a ``std_msgs/String`` holding JSON
(:meth:`SegmenterConfig.label_info_fields`), re-published with label_info after every engine swap::

    {"format": "rtseg_ros/label_info/1", "label_set": "cityscapes", "num_classes": 19,
     "ignore_index": 255, "classes": [{"id": 0, "name": "road", "color": [128, 64, 128]}, ...],
     "model": "mfaranet", "scales": [1, 2, 3, 4], "weights": "/path/or/empty", "weights_sha256": "...",
     "input_size": [512, 1024], "output_resolution": "input", "backend": "torch", "precision": "fp32",
     "device": "cpu"}

``input_size`` is (height, width); ``weights_sha256`` identifies the random initial weights too.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions
from rclpy.utilities import remove_ros_args

from rtseg_ros.names import LABEL_INFO_FORMAT, LIFECYCLE_FLAG, NODE_NAME
from rtseg_ros.ros.frame_path import scale_camera_info
from rtseg_ros.ros.interfaces import LABEL_INFO_QOS, diagnostic_name
from rtseg_ros.ros.segmentation_server import SegmentationServer, StartupError

# The longest the executor waits before it looks at signals again (SIGINT, SIGTERM).
SPIN_PERIOD_S = 0.25

__all__ = [
    "LABEL_INFO_FORMAT",
    "LABEL_INFO_QOS",
    "LIFECYCLE_FLAG",
    "ManagedSegmentationNode",
    "SegmentationNode",
    "StartupError",
    "diagnostic_name",
    "main",
    "scale_camera_info",
]

class SegmentationNode(Node):
    """Semantic segmentation of one or more camera streams, serving from start-up.

    Raises:
        StartupError: invalid parameters (of the wrong type too), weights that are missing or do not fit
            the model, or vision_msgs missing.
    """

    def __init__(self, **node_options: Any) -> None:
        super().__init__(NODE_NAME, **node_options)
        self.server = SegmentationServer(self)
        self.server.configure()
        self.server.activate()

    @property
    def fatal_error(self) -> str:
        return self.server.fatal_error

    def destroy_node(self) -> None:
        self.server.deactivate(log=False)
        super().destroy_node()


class ManagedSegmentationNode(LifecycleNode):
    """The same node as a managed (lifecycle) node.

    ``configure`` validates the parameters, loads the weights and builds or loads the engines (a failure
    leaves it unconfigured and says why in the log); ``activate`` starts taking frames and publishing;
    ``deactivate`` stops taking frames and keeps the engines; ``cleanup`` frees engines and weights;
    ``shutdown`` works from any state. Parameters can be read and set in every state.
    """

    def __init__(self, **node_options: Any) -> None:
        super().__init__(NODE_NAME, **node_options)
        self.server = SegmentationServer(self, wait_for_engines=True)

    @property
    def fatal_error(self) -> str:
        return ""  # a failed configure is the transition's result, not the process's

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.server.configure()
        except StartupError as exc:
            self.get_logger().error(f"configure failed, staying unconfigured: {exc}")
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.server.activate()
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.server.deactivate()
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.server.cleanup()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.server.shutdown()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error in state {state.label}: freeing the engines")
        self.server.cleanup()
        return TransitionCallbackReturn.SUCCESS  # back to unconfigured, ready for another configure

    def destroy_node(self) -> None:
        self.server.shutdown()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Run the node until SIGINT or SIGTERM (console script ``segmentation_node``; takes ``--ros-args``;
    ``--lifecycle`` runs the managed node)."""
    argv = list(sys.argv if args is None else args)
    managed = LIFECYCLE_FLAG in remove_ros_args(argv)[1:]
    # rclpy's own handlers would invalidate the context at once, under a frame still being
    # published; as KeyboardInterrupt the signals stop the worker first, then ROS.
    rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    for signum in (signal.SIGINT, signal.SIGTERM):  # also when started with SIGINT ignored (shell `&`)
        signal.signal(signum, signal.default_int_handler)
    # Made before the node: a start-up build that fails in the background shuts the context down, and
    # an executor made after that could not be (spinning this one just ends).
    executor = SingleThreadedExecutor()
    try:
        node: SegmentationNode | ManagedSegmentationNode = (
            ManagedSegmentationNode() if managed else SegmentationNode())
    except StartupError as exc:
        get_logger(NODE_NAME).fatal(str(exc))
        rclpy.try_shutdown()
        return 2
    except KeyboardInterrupt:  # stopped while the engine was being built
        rclpy.try_shutdown()
        return _exit_code(0)
    try:
        executor.add_node(node)
        # Waits bounded in time: a signal is handled only between them, and an unconfigured managed node
        # has no timer or frame to end a wait.
        while node.context.ok():
            executor.spin_once(timeout_sec=SPIN_PERIOD_S)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return _exit_code(2 if node.fatal_error else 0)


def _exit_code(code: int) -> int:
    """``code``, for the process to exit with; ends the process at once while an engine build still runs.

    A background build (a daemon thread inside a native compiler such as OpenVINO's) torn down by the
    interpreter's finalisation aborts the process ("terminate called without an active exception",
    exit -6), so a clean Ctrl-C during a rebuild would look like a crash to ``ros2 launch`` and its
    supervisor. Everything is published and ROS is shut down by now; the unfinished build is dropped.
    """
    if any(thread.daemon and thread.is_alive() for thread in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
