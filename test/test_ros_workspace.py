"""The package as a ROS 2 user meets it: colcon build, ``source install/setup.bash``, ``ros2 launch``, the ros2 CLI.

One ``colcon build`` in a temporary workspace serves the session (``ros_workspace.colcon_workspace``);
``segmentation.launch.py`` with its default config (``cpu.yaml``, on the CPU) and a small input runs
from that install, and the README's ROS commands run against it verbatim. Skips, with the reason,
where the ROS tools are not installed.
"""
from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import ros_workspace
from ros_workspace import Launch, run_in_workspace

pytestmark = [pytest.mark.ros, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
# Small frames and a small network input keep the launches cheap on 2 cores. The listeners take labels
# only: a confidence subscriber would have the node build a second engine. Where the test is not about
# the default config, eager PyTorch starts fastest.
SMALL = "input_width:=128 input_height:=64"
QUICK = f"{SMALL} backend:=torch"
FRAME = np.random.default_rng(0).integers(0, 255, (64, 128, 3), dtype=np.uint8)
STARTUP_S = 120.0
# The README's commands, as written there (checked below, so the two cannot drift apart).
HZ = "ros2 topic hz /segmentation/labels"
PARAM_SET = "ros2 param set /segmentation_node input_width 768"
ECHO_LABEL_INFO = "ros2 topic echo /segmentation/label_info --once"


def _labels(listener) -> str:
    from rtseg_ros.names import Topics

    return listener.topic(Topics.LABELS)


@pytest.fixture(scope="module", autouse=True)
def tools() -> Iterator[None]:
    ros_workspace.skip_without_tools()
    yield
    ros_workspace.stop_daemon()


class Cameras:
    """Cameras publishing frames at ~10 Hz from a thread, while ros2 CLI commands run; and listeners."""

    def __init__(self, namespaces: dict[str, str]) -> None:
        """``namespaces``: the node namespace -> the camera topic its node is remapped to."""
        from rtseg_ros.names import Topics
        from rtseg_ros.ros.clients import CameraFeeder, ClientSession, OutputListener

        self.session = ClientSession()
        self.feeders = {ns: self.session.add(CameraFeeder(image_topic=topic, frame_id=f"camera{ns.replace('/', '_')}",
                                                          node_name=f"rtseg_ws_camera{ns.replace('/', '_')}",
                                                          context=self.session.context))
                        for ns, topic in namespaces.items()}
        self.listeners = {ns: self.session.add(OutputListener(
            namespace=ns, outputs=(Topics.LABELS,), keep_messages=True,
            listener_name=f"rtseg_ws_listener{ns.replace('/', '_')}", context=self.session.context))
            for ns in namespaces}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_frame = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                if time.monotonic() >= next_frame:
                    for feeder in self.feeders.values():
                        if feeder.connected:
                            feeder.publish_frame(FRAME, "rgb")
                    next_frame += 0.1
                self.session.spin_once(0.02)

    def wait(self, condition, timeout_s: float, what: str, launch: Launch) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                if condition():
                    return
            launch.check_running()
            assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting for {what}:\n" \
                                                f"{launch.log()[-3000:]}"
            time.sleep(0.1)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.session.close()


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Launch, Cameras]]:
    """``ros2 launch rtseg_ros segmentation.launch.py`` (default config) with a camera on /camera/image_raw."""
    ros_workspace.colcon_workspace()
    log = tmp_path_factory.mktemp("workspace_launch") / "launch.log"
    launch = Launch(f"rtseg_ros segmentation.launch.py {SMALL}", log)
    cameras = Cameras({"/": "/camera/image_raw"})
    listener = cameras.listeners["/"]
    try:
        cameras.wait(lambda: listener.ready and listener.stats(_labels(listener)).count > 0, STARTUP_S,
                     "the launched node's first labels", launch)
        yield launch, cameras
    finally:
        cameras.close()
        code = launch.stop()
    assert code == 0, f"ros2 launch ended with {code} after Ctrl-C:\n{launch.log()[-3000:]}"


def test_the_readme_shows_these_commands() -> None:
    for command in (HZ, PARAM_SET, ECHO_LABEL_INFO, "colcon build", "source install/setup.bash",
                    "ros2 launch rtseg_ros segmentation.launch.py"):
        assert command in README, f"the README no longer shows {command!r}; keep this test's copy in step"


def test_colcon_installs_the_executables_launch_files_and_config() -> None:
    prefix = ros_workspace.install_prefix()
    assert (prefix / "lib" / "rtseg_ros" / "segmentation_node").is_file()
    launch_dir = prefix / "share" / "rtseg_ros" / "launch"
    assert {"segmentation.launch.py", "multi_camera.launch.py"} <= {p.name for p in launch_dir.iterdir()}
    assert (prefix / "share" / "rtseg_ros" / "config" / "cpu.yaml").is_file()
    assert (prefix / "share" / "rtseg_ros" / "package.xml").is_file()


def test_the_default_launch_serves_the_cpu_config(launched: tuple[Launch, Cameras]) -> None:
    launch, cameras = launched
    listener = cameras.listeners["/"]
    meta = listener.label_info_meta
    assert (meta["model"], meta["input_size"]) == ("atonet", [64, 128])  # cpu.yaml, with the small input
    labels = listener.messages[_labels(listener)][-1][1]
    assert labels.header.frame_id == "camera_" and (labels.height, labels.width) == FRAME.shape[:2]
    assert "subscribed to /camera/image_raw" in launch.log()
    # cpu.yaml asks for backend auto; the log names the backend that was taken
    assert re.search(r"serving atonet \((openvino|onnxruntime|compile|torch), from auto, ", launch.log()), launch.log()
    cameras.wait(lambda: "backend" in listener.status, 30.0, "a /diagnostics status", launch)
    assert listener.status["backend"] in ("openvino", "onnxruntime", "compile", "torch"), listener.status
    assert listener.label_info_meta["backend"] == listener.status["backend"]


def test_topic_hz_shows_a_rate(launched: tuple[Launch, Cameras]) -> None:
    _, cameras = launched
    code, output = run_in_workspace(HZ, timeout_s=60, stop_after_s=12)
    rates = [float(rate) for rate in re.findall(r"average rate: ([0-9.]+)", output)]
    assert rates and rates[-1] > 0, output


def test_topic_echo_label_info_prints_the_class_map(launched: tuple[Launch, Cameras]) -> None:
    code, output = run_in_workspace(ECHO_LABEL_INFO, timeout_s=20, retry_on_timeout=True)
    assert code == 0, output
    assert "class_map:" in output and "class_name: road" in output and "class_name: bicycle" in output, output
    assert "threshold: 0.0" in output


def test_param_set_rejects_invalid_values_with_the_reason(launched: tuple[Launch, Cameras]) -> None:
    code, output = run_in_workspace("ros2 param set /segmentation_node input_width 500", timeout_s=60)
    assert "Setting parameter failed" in output and "step" in output and "500" in output, output
    code, output = run_in_workspace("ros2 param set /segmentation_node model unet", timeout_s=60)
    assert "Setting parameter failed: model must be one of mfaranet, atonet; got 'unet'" in output, output


def test_param_set_input_width_rebuilds_while_labels_keep_coming(launched: tuple[Launch, Cameras]) -> None:
    launch, cameras = launched
    listener = cameras.listeners["/"]
    code, output = run_in_workspace(PARAM_SET, timeout_s=60)
    assert "Set parameter successful" in output, output
    cameras.wait(lambda: listener.status.get("input_size") == "64x768", STARTUP_S,
                 "/diagnostics to report the 64x768 engine", launch)
    labels_topic = _labels(listener)
    count = listener.stats(labels_topic).count
    cameras.wait(lambda: listener.stats(labels_topic).count >= count + 3, 60.0, "labels from the new engine", launch)
    assert listener.label_info_meta["input_size"] == [64, 768]


def test_wrong_overrides_end_the_launch_before_the_node_starts() -> None:
    ros_workspace.colcon_workspace()
    for argument, expected in (("scales:=2", "parameter scales: 2 is not allowed"),
                               ("input_width:=500", "parameter input_width: 500 is not allowed"),
                               ("publish_overlay:=1", "parameter publish_overlay: 1 is not allowed; it takes true or false"),
                               ("model:=null", "Argument \"model\" provided value \"null\" is not valid")):
        code, output = run_in_workspace(f"ros2 launch rtseg_ros segmentation.launch.py {argument}", timeout_s=60)
        assert code != 0 and expected in output, output
        assert "process started" not in output and "Traceback" not in output, output


def test_a_node_that_fails_at_start_fails_the_launch(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pth"
    code, output = run_in_workspace(f"ros2 launch rtseg_ros segmentation.launch.py weights:={missing} {QUICK}",
                                    timeout_s=STARTUP_S)
    assert code == 1, output
    assert "exit code 2" in output and "segmentation_node-1 exited with code 2" in output and str(missing) in output


def test_compressed_input_subscribes_to_the_compressed_topic(tmp_path: Path) -> None:
    launch = Launch(f"rtseg_ros segmentation.launch.py input_transport:=compressed namespace:=cmp use_sim_time:=true "
                    f"log_level:=debug {QUICK}", tmp_path / "launch.log")
    try:
        deadline = time.monotonic() + STARTUP_S
        while "subscribed to" not in launch.log():
            launch.check_running()
            assert time.monotonic() < deadline, launch.log()[-3000:]
            time.sleep(0.5)
    finally:
        code = launch.stop()
    assert "subscribed to /camera/image_raw/compressed" in launch.log()
    assert code == 0, launch.log()[-3000:]


def _wait_for_each_camera_s_labels(cameras: "Cameras", launch: "Launch") -> None:
    """Labels come for every camera, each with that camera's own frame_id."""
    for ns, listener in cameras.listeners.items():
        cameras.wait(lambda listener=listener: listener.ready and listener.stats(_labels(listener)).count > 0,
                     STARTUP_S, f"labels of the {ns} camera", launch)
    for ns, listener in cameras.listeners.items():
        labels = listener.messages[_labels(listener)][-1][1]
        assert labels.header.frame_id == f"camera_{ns.strip('/')}"


def test_multi_camera_launch_serves_both_cameras_from_one_node(tmp_path: Path) -> None:
    launch = Launch(f"rtseg_ros multi_camera.launch.py {QUICK}", tmp_path / "multi.log")
    cameras = Cameras({"/front": "/front/camera/image_raw", "/rear": "/rear/camera/image_raw"})
    try:
        _wait_for_each_camera_s_labels(cameras, launch)
    finally:
        cameras.close()
        code = launch.stop()
    log = launch.log()
    assert code == 0, log[-3000:]
    # One process, one engine for both cameras.
    assert log.count("process started") == 1 and "batches of up to 2" in log, log[-3000:]
    assert "subscribed to /front/camera/image_raw, /rear/camera/image_raw" in log, log[-3000:]


def test_multi_camera_launch_one_node_per_camera(tmp_path: Path) -> None:
    launch = Launch(f"rtseg_ros multi_camera.launch.py one_node_per_camera:=true {QUICK}", tmp_path / "multi.log")
    cameras = Cameras({"/front": "/front/camera/image_raw", "/rear": "/rear/camera/image_raw"})
    try:
        _wait_for_each_camera_s_labels(cameras, launch)
        for ns, listener in cameras.listeners.items():
            cameras.wait(lambda listener=listener: listener.status_count > 0, 30.0, f"{ns} diagnostics", launch)
            assert listener.node_path == f"{ns}/segmentation_node"
    finally:
        cameras.close()
        code = launch.stop()
    assert code == 0, launch.log()[-3000:]


def test_lifecycle_launch_autostarts_and_the_lifecycle_cli_drives_it(tmp_path: Path) -> None:
    launch = Launch(f"rtseg_ros segmentation.launch.py lifecycle:=true node_name:=managed_seg {QUICK}",
                    tmp_path / "lifecycle.log")
    cameras = Cameras({"/": "/camera/image_raw"})
    listener = cameras.listeners["/"]
    try:
        cameras.wait(lambda: listener.ready and listener.stats(_labels(listener)).count > 0, STARTUP_S,
                     "labels of the autostarted managed node", launch)
        # A fresh CLI process (and its daemon) may not have discovered the node yet: ask again a few times.
        assert "/managed_seg" in _until("ros2 lifecycle nodes", lambda out: "/managed_seg" in out)
        assert _until("ros2 lifecycle get /managed_seg", lambda out: out.strip().startswith("active")
                      ).strip().startswith("active")
        code, output = run_in_workspace("ros2 lifecycle set /managed_seg deactivate", timeout_s=60)
        assert "Transitioning successful" in output, output
        assert _until("ros2 lifecycle get /managed_seg", lambda out: out.strip().startswith("inactive")
                      ).strip().startswith("inactive")
    finally:
        cameras.close()
        code = launch.stop()
    assert code == 0, launch.log()[-3000:]


def _until(command: str, done, attempts: int = 10) -> str:
    """The output of ``command``, run again (a second apart) until ``done(output)`` or ``attempts`` runs."""
    output = ""
    for _ in range(attempts):
        _, output = run_in_workspace(command, timeout_s=60)
        if done(output):
            break
        time.sleep(1.0)
    return output
