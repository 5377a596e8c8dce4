"""Starting the segmentation node as a child process: its command line, the process, its readiness.

The demo, live evaluation and the tests start the node the way a robot does, in a process of its own;
this module is the one place that knows how. It imports neither rclpy nor torch: waiting for the node
takes a ``ready`` test and a ``spin`` function from the caller (``rtseg_ros.ros.clients`` has both).

>>> command = node_command(SegmenterConfig(model="atonet"), namespace="/front", remaps={"image": "/cam/image"})
>>> with NodeProcess(command, "node.log") as node:
...     node.wait_ready(lambda: listener.ready, timeout_s=120, spin=session.spin_once)
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import yaml

from rtseg_ros.names import LIFECYCLE_FLAG, NODE_NAME, PACKAGE, PARAMETERS

if TYPE_CHECKING:
    from rtseg_ros.engines import SegmenterConfig

__all__ = [
    "NODE_MODULE",
    "NodeExitedError",
    "NodeProcess",
    "NodeStartupTimeout",
    "loopback_dds_environment",
    "node_command",
    "package_file",
    "read_params_file",
    "wait_until",
]

# Runs without colcon (pip or editable install) as well as from an installed workspace.
NODE_MODULE = "rtseg_ros.ros.segmentation_node"
LOG_TAIL_LINES = 15
STOP_TIMEOUT_S = 10.0


class NodeExitedError(RuntimeError):
    """The node process ended while it was needed; the message ends with the tail of its log."""


class NodeStartupTimeout(NodeExitedError, TimeoutError):
    """The node did not become ready in time; the message ends with the tail of its log."""


def _parameter_value(name: str, value: Any) -> str:
    # JSON is valid YAML, which is how rcl reads -p values: strings stay strings, lists stay lists.
    if isinstance(value, tuple):
        value = list(value)
    return f"{name}:={json.dumps(value)}"


def node_command(config: SegmenterConfig | None, *, node_settings: Mapping[str, Any] | None = None,
                 name: str = NODE_NAME, namespace: str = "", remaps: Mapping[str, str] | None = None,
                 params_file: str | Path | None = None, log_level: str | None = None,
                 lifecycle: bool = False) -> list[str]:
    """The command line that starts ``segmentation_node`` serving ``config``.

    Every engine parameter is given with ``-p`` (from ``config.to_parameters()``), so the node runs
    ``config`` whatever a params file says about the engine.

    Args:
        config: the deployment; ``None`` leaves the engine to ``params_file`` and ``node_settings``
            (to start the node as a params file describes it).
        node_settings: node-only parameters (``publish_overlay``, ``qos_reliability`` ...), by name;
            they come after the engine's, so they may also override an engine parameter.
        name: the node's name.
        namespace: the node's namespace; its relative topics move with it.
        remaps: topic remappings, ``{"image": "/camera/image_raw"}``.
        params_file: a ROS params file read before the ``-p`` values (which win).
        log_level: the node's log level (``debug``, ``info``, ``warn`` ...).
        lifecycle: start the managed (lifecycle) node, which waits unconfigured for its transitions.

    Raises:
        ValueError: a name in ``node_settings`` that is not a node parameter.
    """
    parameters = dict(config.to_parameters()) if config is not None else {}
    unknown = sorted(set(node_settings or {}) - set(PARAMETERS))
    if unknown:
        raise ValueError(f"not parameters of {NODE_NAME}: {', '.join(unknown)}; known: {', '.join(PARAMETERS)}")
    parameters.update(node_settings or {})
    command = [sys.executable, "-m", NODE_MODULE, *([LIFECYCLE_FLAG] if lifecycle else []), "--ros-args"]
    if name != NODE_NAME:
        command += ["-r", f"__node:={name}"]
    if namespace:
        command += ["-r", f"__ns:={'/' + namespace.strip('/')}"]
    for source, target in (remaps or {}).items():
        command += ["-r", f"{source}:={target}"]
    if params_file is not None:
        command += ["--params-file", str(params_file)]
    for parameter, value in parameters.items():
        command += ["-p", _parameter_value(parameter, value)]
    if log_level:
        command += ["--log-level", log_level]
    return command


def read_params_file(path: str | Path, name: str = NODE_NAME) -> dict[str, Any]:
    """The parameters a ROS params file gives a node called ``name`` (``/**`` and its own sections).

    Raises:
        ValueError: the file is not a ROS params file.
    """
    try:
        document = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read params file {path}: {exc}") from None
    if not isinstance(document, dict):
        raise ValueError(f"{path} is not a ROS params file (no node sections)")
    values: dict[str, Any] = {}
    # Wildcards first, so that the node's own section wins, as rcl does it.
    for section in ("/**", name, f"/{name}", f"/**/{name}"):
        block = document.get(section)
        if isinstance(block, dict) and isinstance(block.get("ros__parameters"), dict):
            values.update(block["ros__parameters"])
    return values


def package_file(relative: str) -> Path:
    """A file of the package's share folder (``config/...``), installed or in the source tree."""
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory(PACKAGE)) / relative
        if installed.exists():
            return installed
    except (ImportError, OSError, LookupError):  # no ament, no AMENT_PREFIX_PATH, or not installed there
        pass
    # pip and editable installs do not install data files where ament looks; use the checkout.
    return Path(__file__).resolve().parents[2] / relative


def loopback_dds_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The DDS settings that keep the node and its clients on this host, for each one ``environ`` lacks."""
    wanted = {
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "FASTRTPS_DEFAULT_PROFILES_FILE": str(package_file("config/fastdds_localhost.xml")),
        # The pip ROS wheels ship no default middleware.
        "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
    }
    return {key: value for key, value in wanted.items() if not environ.get(key)}


def wait_until(ready: Callable[[], bool], timeout_s: float, spin: Callable[[float], None], what: str,
               process: NodeProcess | None = None) -> None:
    """Call ``spin`` until ``ready()`` holds.

    Raises:
        NodeExitedError: ``process`` ended first.
        TimeoutError: not ready within ``timeout_s`` (a :class:`NodeStartupTimeout` with the log's
            tail when ``process`` is given).
    """
    deadline = time.monotonic() + timeout_s
    while not ready():
        if process is not None:
            process.check_running()
        if time.monotonic() > deadline:
            message = f"timed out after {timeout_s:.0f} s waiting for {what}"
            if process is not None:
                raise NodeStartupTimeout(f"{message}; the end of {process.log_path}:\n{process.log_tail()}")
            raise TimeoutError(message)
        spin(0.05)


class NodeProcess:
    """The segmentation node in a child process, its output (stdout and stderr) in a log file.

    Started on construction; a context manager that stops it on exit.

    Args:
        command: e.g. from :func:`node_command`.
        log_path: where the node's output goes (overwritten).
        env: the node's environment; ``None``: this process's. Python output is unbuffered either way,
            so the log is current when its tail is shown.
        own_session: start the node in a session of its own, so that Ctrl-C reaches only this process,
            which then stops the node in order.
    """

    def __init__(self, command: Sequence[str], log_path: str | Path, *, env: Mapping[str, str] | None = None,
                 own_session: bool = True) -> None:
        self.command = list(command)
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "w")
        environment = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
        try:
            self.process = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT,
                                            env=environment, start_new_session=own_session)
        except OSError:
            self._log.close()
            raise

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def log(self) -> str:
        """Everything the node has written so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        tail = self.log().strip().splitlines()[-lines:]
        return "\n".join(tail) if tail else "(the log is empty)"

    def check_running(self) -> None:
        """Raise :class:`NodeExitedError` (with the log's tail) if the node has ended."""
        if self.process.poll() is not None:
            raise NodeExitedError(f"segmentation_node exited with code {self.process.returncode}; "
                                  f"the end of {self.log_path}:\n{self.log_tail()}")

    def wait_ready(self, ready: Callable[[], bool], timeout_s: float, spin: Callable[[float], None],
                   what: str = "segmentation_node to come up") -> None:
        """Spin until ``ready()`` holds (e.g. ``OutputListener.ready``).

        Raises:
            NodeExitedError: the node ended first.
            NodeStartupTimeout: not ready within ``timeout_s``.
        """
        wait_until(ready, timeout_s, spin, what, self)

    def request_stop(self) -> None:
        """Send SIGINT without waiting (to stop several nodes at once, then :meth:`stop` each)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Stop the node the way Ctrl-C would, so it finishes its frame and shuts ROS down cleanly; kill
        it if it has not exited within ``timeout_s``. Returns its exit code."""
        self.request_stop()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()
        return self.process.returncode
