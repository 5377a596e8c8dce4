"""The package built by colcon in a temporary workspace, once per test session, and commands run from it.

What a robotics engineer does: the sources in ``<ws>/src/rtseg_ros``, ``colcon build``, then
``source install/setup.bash`` before ``ros2 launch`` / ``ros2 topic`` / ``ros2 param``. The tests
that need it skip, with the reason, where the ROS tools (``../shared/ros2-tools``) are not installed.
"""
from __future__ import annotations

import atexit
import importlib.util
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUILD_TIMEOUT_S = 300
# Everything of the checkout but what git ignores or a build leaves behind.
_NOT_SOURCES = shutil.ignore_patterns(".git", "*.egg-info", "__pycache__", ".pytest_cache", "build", "install",
                                      "log", "runs", "cache", "*.onnx", "*.engine", "*.pth", "*.pt")


def missing_tools() -> str:
    """Why the workspace tests cannot run here ('' when they can)."""
    missing = [tool for tool in ("colcon", "ros2", "bash") if shutil.which(tool) is None]
    missing += [module for module in ("launch", "launch_ros", "launch_testing", "vision_msgs", "ament_index_python")
                if importlib.util.find_spec(module) is None]
    if not missing:
        return ""
    return (f"needs the ROS 2 tools ({', '.join(missing)} missing): bash ../shared/ros2-tools/install.sh and "
            "source ../shared/ros2-tools/env.sh, as .ci/run does, or a ROS 2 install")


def skip_without_tools() -> None:
    reason = missing_tools()
    if reason:
        pytest.skip(reason)


@lru_cache(maxsize=None)
def colcon_workspace() -> Path:
    """``<tmp>/ws`` with ``src/rtseg_ros`` (a copy of this checkout) built by ``colcon build``; built once.

    Raises:
        RuntimeError: colcon failed (the message ends with its output).
    """
    root = Path(tempfile.mkdtemp(prefix="rtseg_colcon_"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    workspace = root / "ws"
    shutil.copytree(REPO, workspace / "src" / "rtseg_ros", ignore=_NOT_SOURCES)
    result = subprocess.run(["colcon", "build", "--packages-select", "rtseg_ros"], cwd=workspace, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_S)
    if result.returncode != 0:
        raise RuntimeError(f"colcon build failed ({result.returncode}):\n{result.stdout[-4000:]}")
    return workspace


def install_prefix() -> Path:
    """The package's install prefix in the workspace (what ``ros2 pkg prefix rtseg_ros`` prints)."""
    return colcon_workspace() / "install" / "rtseg_ros"


def installed_launch_file(name: str) -> Path:
    """The package's launch file ``name`` in the colcon install, with the install put on
    ``AMENT_PREFIX_PATH`` as ``source install/setup.bash`` does, so launch_ros finds the package and its
    executable (for launch_testing, which launches in the test's own process)."""
    prefix = install_prefix()
    os.environ["AMENT_PREFIX_PATH"] = os.pathsep.join(
        [str(prefix), *filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep))])
    return prefix / "share" / "rtseg_ros" / "launch" / name


def in_workspace(command: str) -> list[str]:
    """``command`` (a shell line, as typed) run by bash after ``source install/setup.bash``."""
    setup = colcon_workspace() / "install" / "setup.bash"
    return ["bash", "-c", f"source {shlex.quote(str(setup))} && exec {command}"]


# What the ros2 CLI says when discovery has not found the node yet (ros2-tools README: retry it).
NOT_DISCOVERED = ("Node not found", "Unable to find node")
# `ros2 topic echo` without a type exits 1 with these when it has missed the publisher. `ros2 topic hz`
# prints the first one too but goes on waiting and succeeds, so a command stopped by SIGINT is not retried on them.
TOPIC_NOT_DISCOVERED = ("does not appear to be published yet", "Could not determine the type for the passed topic")


def run_in_workspace(command: str, timeout_s: float, *, stop_after_s: float | None = None,
                     discovery_retries: int = 5, retry_on_timeout: bool = False) -> tuple[int, str]:
    """Run ``command`` from the sourced workspace; returns (exit code, stdout and stderr).

    Args:
        timeout_s: kill it after this long (the output so far is returned, the code is -9).
        stop_after_s: send SIGINT after this long (for commands that run until stopped, ``ros2 topic hz``).
        discovery_retries: run it again (after a second) this many times while the CLI has not
            discovered the node (or its topic) yet; on a loaded machine a fresh CLI process can miss it once.
        retry_on_timeout: also run it again when it was killed at ``timeout_s``. ``ros2 topic echo --once``
            of a latched topic needs it: the CLI picks its QoS from the publishers it has discovered so far,
            and when it has seen none yet it subscribes volatile and waits for ever for a message that was
            published once (ros2topic's ``EchoVerb.choose_qos``). The daemon is stopped before such a
            retry: one whose graph lacks the publisher would make every later attempt wait the same way.
    """
    for _ in range(discovery_retries):
        code, output = _run_once(command, timeout_s, stop_after_s)
        timed_out = retry_on_timeout and code == -signal.SIGKILL
        missed = (any(message in output for message in NOT_DISCOVERED)
                  or (stop_after_s is None and code != 0 and any(message in output for message in TOPIC_NOT_DISCOVERED))
                  or timed_out)
        if not missed:
            return code, output
        if timed_out:
            stop_daemon()
        time.sleep(1.0)
    return _run_once(command, timeout_s, stop_after_s)


def _run_once(command: str, timeout_s: float, stop_after_s: float | None) -> tuple[int, str]:
    process = subprocess.Popen(in_workspace(command), cwd=colcon_workspace(), text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    timer = None
    if stop_after_s is not None:
        timer = threading.Timer(stop_after_s, lambda: _signal_group(process, signal.SIGINT))
        timer.start()
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        output, _ = process.communicate()
    finally:
        if timer is not None:
            timer.cancel()
    return process.returncode, output


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            pass


class Launch:
    """``ros2 launch ...`` from the workspace in the background, its output in a log file.

    :meth:`stop` sends SIGINT, which ``ros2 launch`` turns into a clean shutdown of its nodes, and
    returns the launch's exit status.
    """

    def __init__(self, arguments: str, log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.process = subprocess.Popen(in_workspace(f"ros2 launch {arguments}"), cwd=colcon_workspace(),
                                        stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check_running(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"ros2 launch exited with {self.process.returncode}:\n{self.log()[-3000:]}")

    def wait(self, timeout_s: float) -> int:
        try:
            return self.process.wait(timeout_s)
        finally:
            self._log.close()

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGINT (Ctrl-C) to ``ros2 launch`` alone, which stops its nodes; killed if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            _signal_group(self.process, signal.SIGKILL)
            self.process.wait()
        self._log.close()
        return self.process.returncode


def stop_daemon() -> None:
    """Stop the ros2 CLI daemon of this ROS_DOMAIN_ID (the CLI commands start one)."""
    if shutil.which("ros2"):
        subprocess.run(["ros2", "daemon", "stop"], capture_output=True, timeout=30)
