"""A launch_testing test of the node, started through the package's launch file from a colcon install.

launch_testing's pytest plugin collects this file (``generate_test_description`` marked
``launch_test``) under a plain ``python -m pytest``: it launches ``segmentation.launch.py``, signals
ReadyToTest, runs the active tests while the node runs (frames in; labels with the camera's header, a
confidence image, label_info as vision_msgs/LabelInfo, a /diagnostics status), shuts the launch down
and runs the post-shutdown tests (exit code 0). Skips, with the reason, without the ROS tools.
"""
from __future__ import annotations

import unittest

import numpy as np
import pytest

import ros_workspace

REASON = ros_workspace.missing_tools()
# Without launch_testing's plugin pytest would collect the test classes below as plain unittest cases.
pytestmark = [pytest.mark.ros, pytest.mark.skipif(bool(REASON), reason=REASON or "runs")]
NAMESPACE = "/launch_test"
FRAME = np.random.default_rng(1).integers(0, 255, (72, 120, 3), dtype=np.uint8)
STARTUP_S = 120.0

if not REASON:
    import launch_testing
    import launch_testing.actions
    import launch_testing.asserts
    from launch import LaunchDescription
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource


@pytest.mark.skipif(bool(REASON), reason=REASON or "runs")
@pytest.mark.launch_test
def generate_test_description():
    """segmentation.launch.py from the colcon install (default config, small input) in a namespace."""
    launch_file = ros_workspace.installed_launch_file("segmentation.launch.py")
    segmentation = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(launch_file)),
        launch_arguments={"namespace": NAMESPACE.strip("/"), "image_topic": f"{NAMESPACE}/camera/image_raw",
                          "input_width": "128", "input_height": "64"}.items())
    return LaunchDescription([segmentation, launch_testing.actions.ReadyToTest()]), {}


class TestTheRunningNode(unittest.TestCase):
    """Active tests: they run while the launched node runs."""

    def test_outputs_for_camera_frames(self) -> None:
        from rtseg_ros.names import Topics
        from rtseg_ros.ros.clients import CameraFeeder, ClientSession, OutputListener
        from rtseg_ros.ros.interfaces import message_type

        with ClientSession() as session:
            feeder = session.add(CameraFeeder(image_topic=f"{NAMESPACE}/camera/image_raw", frame_id="lt_camera",
                                              node_name="rtseg_lt_camera", context=session.context))
            listener = session.add(OutputListener(namespace=NAMESPACE, outputs=(Topics.LABELS, Topics.CONFIDENCE),
                                                  keep_messages=True, listener_name="rtseg_lt_listener",
                                                  context=session.context))
            session.wait_until(lambda: listener.ready and feeder.connected, STARTUP_S, "the launched node")
            labels_topic, confidence_topic = listener.topic(Topics.LABELS), listener.topic(Topics.CONFIDENCE)

            def outputs_of(header) -> bool:
                return all(listener.by_stamp(topic, header) is not None for topic in (labels_topic, confidence_topic))

            # The first frames may get labels only: the node may build its confidence engine once someone
            # subscribes to confidence. Frames keep coming until three have both.
            headers: list = []
            sent = [feeder.publish_frame(FRAME, "rgb")]
            session.wait_until(lambda: outputs_of(sent[-1]) or sent.append(feeder.publish_frame(FRAME, "rgb"))
                               or session.spin_for(0.5), STARTUP_S, "labels and confidence of a frame")
            for _ in range(3):
                headers.append(feeder.publish_frame(FRAME, "rgb"))
                session.wait_until(lambda: outputs_of(headers[-1]), 30.0, "labels and confidence of a frame")
            session.wait_until(lambda: listener.status_count > 0, 10.0, "the node's /diagnostics status")

            for header in headers:
                labels = listener.by_stamp(labels_topic, header)
                confidence = listener.by_stamp(confidence_topic, header)
                self.assertEqual(labels.header, header)  # the camera's stamp and frame_id
                self.assertEqual((labels.encoding, labels.height, labels.width), ("mono8", 72, 120))
                self.assertEqual(confidence.header, header)
                self.assertIn(confidence.encoding, ("32FC1", "mono8"))
                self.assertEqual((confidence.height, confidence.width), (72, 120))
            self.assertIsInstance(listener.label_info, message_type(Topics.LABEL_INFO))
            self.assertEqual(listener.label_info.class_map[0].class_name, "road")
            self.assertEqual(len(listener.label_info.class_map), listener.label_info_meta["num_classes"])
            self.assertNotEqual(listener.status["frames_published"], "0")
            self.assertEqual(listener.status["input_size"], "64x128")


@launch_testing.post_shutdown_test() if not REASON else (lambda cls: cls)
class TestAfterShutdown(unittest.TestCase):
    """Post-shutdown tests: the node stopped cleanly."""

    def test_exit_code_is_zero(self, proc_info) -> None:
        launch_testing.asserts.assertExitCodes(proc_info)
