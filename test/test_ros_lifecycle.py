"""A launch_testing test of the managed (lifecycle) node, launched with ``lifecycle:=true autostart:=false``.

The test drives it through its lifecycle services, as ``ros2 lifecycle set`` and Nav2's lifecycle manager
do: unconfigured -> configure -> activate (labels, confidence, overlay, label_info and diagnostics flow)
-> deactivate (no labels for 2 s while the camera keeps publishing, and no subscription to the camera) ->
activate (labels again) -> cleanup -> shutdown. A second managed node, whose weights do not exist, fails
its configure, stays unconfigured and says why; a third is shut down while active. Resident memory before
configure, after activate and after cleanup is printed (docs/lifecycle.md reports it). Skips without the
ROS tools.
"""
from __future__ import annotations

import time
import unittest
from pathlib import Path

import numpy as np
import pytest

import ros_workspace

REASON = ros_workspace.missing_tools()
pytestmark = [pytest.mark.ros, pytest.mark.skipif(bool(REASON), reason=REASON or "runs")]
MANAGED = "managed_segmentation"
BROKEN = "managed_no_weights"
SHUT_WHILE_ACTIVE = "managed_shut_while_active"
CAMERA_TOPIC = "/lifecycle_test/image_raw"
FRAME = np.random.default_rng(2).integers(0, 255, (72, 120, 3), dtype=np.uint8)
STARTUP_S = 120.0

if not REASON:
    import launch_testing
    import launch_testing.actions
    import launch_testing.asserts
    from launch import LaunchDescription
    from launch.actions import GroupAction, IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource


def _managed_node(launch_file: Path, name: str, **arguments: str) -> "GroupAction":
    # A scoped group: an include's launch arguments would otherwise stay set for the includes after it.
    return GroupAction([IncludeLaunchDescription(PythonLaunchDescriptionSource(str(launch_file)), launch_arguments={
        "node_name": name, "lifecycle": "true", "autostart": "false", "image_topic": CAMERA_TOPIC,
        "model": "atonet", "backend": "torch", "input_width": "128", "input_height": "64", **arguments}.items())])


@pytest.mark.skipif(bool(REASON), reason=REASON or "runs")
@pytest.mark.launch_test
def generate_test_description():
    launch_file = ros_workspace.installed_launch_file("segmentation.launch.py")
    return LaunchDescription([
        _managed_node(launch_file, MANAGED),
        _managed_node(launch_file, BROKEN, weights="/nonexistent/weights.pth"),
        _managed_node(launch_file, SHUT_WHILE_ACTIVE, image_topic="/lifecycle_test/other_camera"),
        launch_testing.actions.ReadyToTest(),
    ]), {}


def _resident_mib(node_name: str) -> float:
    """VmRSS of the process started for ``node_name`` (found by its remap argument)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f"__node:={node_name}".encode() in (entry / "cmdline").read_bytes():
                for line in (entry / "status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            continue
    raise AssertionError(f"no process for {node_name}")


class TestManagedNode(unittest.TestCase):
    """Active tests: they run while the launched nodes run."""

    def test_transitions(self) -> None:
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState, GetState

        from rtseg_ros.names import Topics
        from rtseg_ros.ros.clients import CameraFeeder, ClientSession, OutputListener

        with ClientSession() as session:
            client = session.add(__import__("rclpy.node", fromlist=["Node"]).Node(
                "rtseg_lifecycle_client", context=session.context))
            feeder = session.add(CameraFeeder(image_topic=CAMERA_TOPIC, frame_id="lc_camera",
                                              node_name="rtseg_lc_camera", context=session.context))
            listener = session.add(OutputListener(outputs=(Topics.LABELS, Topics.CONFIDENCE, Topics.OVERLAY),
                                                  keep_messages=True, node_name=MANAGED,
                                                  listener_name="rtseg_lc_listener", context=session.context))
            labels_topic = listener.topic(Topics.LABELS)
            image_topics = [listener.topic(spec) for spec in (Topics.LABELS, Topics.CONFIDENCE, Topics.OVERLAY)]

            def call(node: str, kind: type, service: str, request: object) -> object:
                service_client = client.create_client(kind, f"/{node}/{service}")
                session.wait_until(service_client.service_is_ready, STARTUP_S, f"/{node}/{service}")
                future = service_client.call_async(request)
                session.wait_until(future.done, 180.0, f"the answer of /{node}/{service}")
                return future.result()

            def state(node: str) -> str:
                return call(node, GetState, "get_state", GetState.Request()).current_state.label

            def transition(node: str, transition_id: int) -> bool:
                return call(node, ChangeState, "change_state",
                            ChangeState.Request(transition=Transition(id=transition_id))).success

            def labels_count() -> int:
                return len(listener.messages.get(labels_topic, []))

            def counts() -> list[int]:
                return [len(listener.messages.get(topic, [])) for topic in image_topics]

            def outputs_flow() -> None:
                before = counts()
                session.wait_until(lambda: all(now > then for now, then in zip(counts(), before))
                                   or feeder.publish_frame(FRAME, "rgb") is None or session.spin_for(0.3), 60.0,
                                   "labels, confidence and overlay from the active node")

            def camera_subscribers() -> int:
                return client.count_subscribers(CAMERA_TOPIC)

            self.assertEqual(state(MANAGED), "unconfigured")
            memory = {"before configure": _resident_mib(MANAGED)}
            self.assertTrue(transition(MANAGED, Transition.TRANSITION_CONFIGURE))
            self.assertEqual(state(MANAGED), "inactive")
            self.assertTrue(transition(MANAGED, Transition.TRANSITION_ACTIVATE))
            self.assertEqual(state(MANAGED), "active")
            self.assertEqual(camera_subscribers(), 1)
            outputs_flow()
            self.assertIsNotNone(listener.label_info)  # latched, published on activation
            statuses = listener.status_count
            session.wait_until(lambda: listener.status_count > statuses, 10.0, "/diagnostics of the active node")
            memory["after activate"] = _resident_mib(MANAGED)

            self.assertTrue(transition(MANAGED, Transition.TRANSITION_DEACTIVATE))
            self.assertEqual(state(MANAGED), "inactive")
            self.assertEqual(camera_subscribers(), 0, "an inactive node still subscribes to the camera")
            session.spin_for(0.5)  # a frame in flight at deactivation may still land
            before = labels_count()
            end = time.monotonic() + 2.0
            while time.monotonic() < end:  # the camera keeps publishing: nothing comes back
                feeder.publish_frame(FRAME, "rgb")
                session.spin_for(0.2)
            self.assertEqual(labels_count(), before, "an inactive node published labels")

            self.assertTrue(transition(MANAGED, Transition.TRANSITION_ACTIVATE))
            outputs_flow()
            self.assertTrue(transition(MANAGED, Transition.TRANSITION_DEACTIVATE))
            self.assertTrue(transition(MANAGED, Transition.TRANSITION_CLEANUP))
            self.assertEqual(state(MANAGED), "unconfigured")
            time.sleep(1.0)
            memory["after cleanup"] = _resident_mib(MANAGED)
            print("resident memory of the managed node (MiB): " +
                  ", ".join(f"{when} {mib:.0f}" for when, mib in memory.items()))
            # The engines and weights are gone: most of what configure added is handed back.
            added = memory["after activate"] - memory["before configure"]
            self.assertLess(memory["after cleanup"] - memory["before configure"], 0.5 * added + 20, memory)
            self.assertTrue(transition(MANAGED, Transition.TRANSITION_UNCONFIGURED_SHUTDOWN))
            self.assertEqual(state(MANAGED), "finalized")

            # Missing weights: configure fails, the node stays unconfigured and its log says why.
            self.assertFalse(transition(BROKEN, Transition.TRANSITION_CONFIGURE))
            self.assertEqual(state(BROKEN), "unconfigured")

            # Shutdown from the active state: the node finalizes without being deactivated first.
            self.assertTrue(transition(SHUT_WHILE_ACTIVE, Transition.TRANSITION_CONFIGURE))
            self.assertTrue(transition(SHUT_WHILE_ACTIVE, Transition.TRANSITION_ACTIVATE))
            self.assertEqual(state(SHUT_WHILE_ACTIVE), "active")
            self.assertTrue(transition(SHUT_WHILE_ACTIVE, Transition.TRANSITION_ACTIVE_SHUTDOWN))
            self.assertEqual(state(SHUT_WHILE_ACTIVE), "finalized")
        self.proc_output.assertWaitFor("configure failed, staying unconfigured", timeout=10, stream="stderr")
        self.proc_output.assertWaitFor("/nonexistent/weights.pth", timeout=10, stream="stderr")


@launch_testing.post_shutdown_test() if not REASON else (lambda cls: cls)
class TestAfterShutdown(unittest.TestCase):
    def test_exit_codes(self, proc_info) -> None:
        launch_testing.asserts.assertExitCodes(proc_info)
