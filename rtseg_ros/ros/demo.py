"""``rtseg demo``: the segmentation node on a camera source, with live statistics.

The node runs in its own process, as on a robot; this process plays the camera (synthetic street
scenes, a folder of images, a video or a rosbag2), listens to the outputs, prints input and output
rates, latency and drops every second, and writes the last overlay (and optionally a video) at the
end.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from rtseg_ros.datasets.base import IMAGE_SUFFIXES, list_images
from rtseg_ros.datasets.synthetic import make_scene
from rtseg_ros.ros.node_process import stop_node_process

__all__ = [
    "DemoError",
    "DemoSettings",
    "DemoSummary",
    "TOY_WEIGHTS",
    "UNTRAINED_WARNING",
    "IMAGE_TOPIC",
    "package_file",
    "loopback_dds_environment",
    "frame_source",
    "choose_weights",
    "node_command",
    "run_demo",
]

# Where the ``synthetic`` training recipe leaves its toy model; the demo uses it when present.
TOY_WEIGHTS = Path("~/.cache/rtseg_ros/models/synthetic_toy.pth").expanduser()
IMAGE_TOPIC = "/rtseg_demo/camera/image_raw"
SYNTHETIC_SCENES = 8
# Far from the seeds the synthetic training recipe draws from: the toy model meets new scenes.
SYNTHETIC_FIRST_SEED = 100_000
UNTRAINED_WARNING = (
    "!" * 78 + "\n"
    "!! NO WEIGHTS: the node runs UNTRAINED random weights. The labels and the overlay are noise;\n"
    "!! they show the pipeline and its speed, not segmentation. Pass --weights FILE, or train the\n"
    "!! toy model with `rtseg train synthetic`.\n" + "!" * 78
)


class DemoError(RuntimeError):
    """The demo cannot run (bad source, node failed to start); the message says why."""


@dataclass
class DemoSettings:
    """What ``rtseg demo`` runs.

    Attributes:
        source: ``synthetic``, a folder of images, a video file, or a rosbag2 folder.
        weights: checkpoint for the node; ``None`` uses the toy model if present, else random weights.
        config: parameter file, a name in the package's ``config`` folder or a path.
        model: overrides the config's model (and the checkpoint's, for our own checkpoints).
        input_size: (height, width) of the network input; ``None`` keeps the config's.
        frame_size: (height, width) of synthetic frames.
        rate_hz: camera rate.
        duration_s: how long the camera publishes, after the node is up.
        out_dir: where the overlay, the video, the node log and ``summary.json`` go.
        video: also write ``overlay.mp4``.
        bag_topic: the image topic read from a rosbag2 source.
        startup_timeout_s: how long to wait for the node to build its engine.
    """

    source: str = "synthetic"
    weights: str | None = None
    config: str = "cpu.yaml"
    model: str | None = None
    input_size: tuple[int, int] | None = None
    frame_size: tuple[int, int] = (256, 512)
    rate_hz: float = 10.0
    duration_s: float = 10.0
    out_dir: Path = Path("rtseg_demo")
    video: bool = False
    bag_topic: str = "/camera/image_raw"
    startup_timeout_s: float = 180.0


@dataclass
class DemoSummary:
    """Figures of a whole run (also written to ``summary.json``)."""

    frames_published: int = 0
    frames_segmented: int = 0
    frames_dropped_by_node: int = 0
    frames_bad: int = 0
    input_fps: float = 0.0
    output_fps: float = 0.0
    latency_p50_ms: float = math.nan
    latency_p95_ms: float = math.nan
    weights: str = ""
    weights_note: str = ""
    overlay_png: str = ""
    overlay_video: str = ""
    node_log: str = ""
    node_command: list[str] = field(default_factory=list)


def package_file(relative: str) -> Path:
    """A file of the package's share folder (``config/...``), installed or in the source tree."""
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory("rtseg_ros")) / relative
        if installed.exists():
            return installed
    except (ImportError, OSError, LookupError):  # no ament, no AMENT_PREFIX_PATH, or not installed there
        pass
    # pip and editable installs do not install data files where ament looks; use the checkout.
    return Path(__file__).resolve().parents[2] / relative


def loopback_dds_environment(environ: dict[str, str] | os._Environ) -> dict[str, str]:
    """The DDS settings that keep the demo on this host, for each one ``environ`` does not set yet."""
    wanted = {
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "FASTRTPS_DEFAULT_PROFILES_FILE": str(package_file("config/fastdds_localhost.xml")),
        # The pip ROS wheels ship no default middleware.
        "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
    }
    return {key: value for key, value in wanted.items() if not environ.get(key)}


def frame_source(settings: DemoSettings) -> Iterator[tuple[np.ndarray, str]]:
    """Endless ``(image, color_order)`` frames from the configured source (file sources loop).

    Raises:
        DemoError: the source does not exist or holds no frames.
    """
    if settings.source == "synthetic":
        height, width = settings.frame_size
        seeds = range(SYNTHETIC_FIRST_SEED, SYNTHETIC_FIRST_SEED + SYNTHETIC_SCENES)
        scenes = [make_scene(seed, height, width)[0] for seed in seeds]
        return itertools.cycle((scene, "rgb") for scene in scenes)
    path = Path(settings.source).expanduser()
    if not path.exists():
        raise DemoError(f"source {settings.source!r} is neither 'synthetic' nor an existing file or folder")
    if path.is_dir() and (path / "metadata.yaml").is_file():
        return _looping(lambda: _bag_frames(path, settings.bag_topic), f"rosbag2 {path} on {settings.bag_topic}")
    if path.is_dir():
        images = list_images(path)
        if not images:
            raise DemoError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
        return _looping(lambda: _image_files(images), f"folder {path}")
    return _looping(lambda: _video_frames(path), f"video {path}")


def _looping(make: Callable[[], Iterator[tuple[np.ndarray, str]]], name: str) -> Iterator[tuple[np.ndarray, str]]:
    first = make()
    try:
        frame = next(first)
    except StopIteration:
        raise DemoError(f"{name} holds no readable frames") from None

    def frames() -> Iterator[tuple[np.ndarray, str]]:
        yield frame
        yield from first
        while True:
            yield from make()

    return frames()


def _image_files(paths: list[Path]) -> Iterator[tuple[np.ndarray, str]]:
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is not None:
            yield image, "bgr"


def _video_frames(path: Path) -> Iterator[tuple[np.ndarray, str]]:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise DemoError(f"cannot open {path} as a video")
    try:
        while True:
            ok, image = capture.read()
            if not ok:
                return
            yield image, "bgr"
    finally:
        capture.release()


def _bag_frames(path: Path, topic: str) -> Iterator[tuple[np.ndarray, str]]:
    from rtseg_ros.io.bags import BagError, BagFrameReader

    try:
        for frame in BagFrameReader(path, image_topic=topic):
            yield frame.image, frame.color_order
    except BagError as exc:
        raise DemoError(str(exc)) from None


def choose_weights(weights: str | None) -> tuple[str | None, str]:
    """The weights the demo runs and a note for the user: given, the toy model, or none (random).

    ``weights`` is a path, a file name in the models folders or a ``models/manifest.yaml`` entry.
    """
    if weights:
        from rtseg_ros.nets import WeightsError
        from rtseg_ros.nets.weights import resolve_weights

        try:
            path = resolve_weights(weights)
        except WeightsError as exc:
            raise DemoError(str(exc)) from None
        return str(path), f"weights {path}"
    if TOY_WEIGHTS.is_file():
        return str(TOY_WEIGHTS), (
            f"TOY model {TOY_WEIGHTS} (trained on synthetic scenes only: fine for the built-in scenes, "
            "meaningless on real images)")
    return None, "UNTRAINED random weights"


def node_command(settings: DemoSettings, weights: str | None) -> list[str]:
    """The command line that starts the segmentation node for ``settings``."""
    config = Path(settings.config).expanduser()
    if not config.is_file():
        config = package_file(f"config/{settings.config}")
    if not config.is_file():
        raise DemoError(f"config {settings.config!r} is neither a file nor in {package_file('config')}")
    overrides: dict[str, object] = {"weights": weights or "", "qos_reliability": "reliable"}
    if weights:
        overrides.update(_checkpoint_settings(weights))
    if settings.model:
        overrides["model"] = settings.model
    if settings.input_size:
        overrides["input_height"], overrides["input_width"] = settings.input_size
    command = [sys.executable, "-m", "rtseg_ros.ros.segmentation_node", "--ros-args",
               "--params-file", str(config), "-r", f"image:={IMAGE_TOPIC}"]
    for name, value in overrides.items():
        command += ["-p", f"{name}:={json.dumps(value)}"]
    return command


def _checkpoint_settings(weights: str) -> dict[str, object]:
    """Model, label set and scales recorded in one of our checkpoints (nothing for other files)."""
    from rtseg_ros.nets.checkpoint import read_checkpoint_info

    info = read_checkpoint_info(weights)
    settings: dict[str, object] = {}
    for key in ("model", "label_set"):
        if isinstance(info.get(key), str):
            settings[key] = info[key]
    if info.get("model") == "mfaranet" and info.get("scales"):
        settings["scales"] = [int(s) for s in info["scales"]]
    return settings


def run_demo(settings: DemoSettings, echo: Callable[[str], None] = print) -> DemoSummary:
    """Start the node and the camera, print statistics every second, write the results.

    Raises:
        DemoError: bad settings, or the node exited or did not come up in time.
    """
    if settings.rate_hz <= 0 or settings.duration_s <= 0:
        raise DemoError("rate and duration must be positive")
    frames = frame_source(settings)
    weights, note = choose_weights(settings.weights)
    echo(UNTRAINED_WARNING if weights is None else note)
    os.environ.update(loopback_dds_environment(os.environ))
    out_dir = settings.out_dir.expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    command = node_command(settings, weights)
    summary = DemoSummary(weights=weights or "", weights_note=note, node_command=command,
                          node_log=str(out_dir / "node.log"))

    # Imported here so that `rtseg demo --help` and the settings checks above need no ROS.
    from rtseg_ros.ros.demo_client import DemoClient

    with open(summary.node_log, "w") as log:
        echo(f"starting the node (log: {summary.node_log})")
        # A session of its own: Ctrl-C reaches only the demo, which then stops the node in order.
        node = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(),
                                start_new_session=True)
        try:
            video = out_dir / "overlay.mp4" if settings.video else None
            with DemoClient(IMAGE_TOPIC, frames, settings.rate_hz, video=video) as client:
                _wait_for_node(client, node, settings.startup_timeout_s, summary.node_log)
                echo(f"node ready: {client.label_info_text}")
                try:
                    client.run(settings.duration_s, echo, check=lambda: _check_running(node, summary.node_log))
                except KeyboardInterrupt:
                    echo("interrupted: stopping the camera and the node")
                client.fill(summary)
                overlay = client.last_overlay
                if overlay is not None:
                    summary.overlay_png = str(out_dir / "overlay.png")
                    cv2.imwrite(summary.overlay_png, cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
                if client.video_frames:
                    summary.overlay_video = str(out_dir / "overlay.mp4")
        finally:
            stop_node_process(node)
    (out_dir / "summary.json").write_text(json.dumps(asdict(summary), indent=2, default=str) + "\n")
    return summary


def _check_running(node: subprocess.Popen, log_path: str) -> None:
    """Raise DemoError with the end of the node's log if the node process has ended."""
    if node.poll() is not None:
        tail = Path(log_path).read_text().strip().splitlines()[-15:]
        raise DemoError(f"the node exited with code {node.returncode}:\n" + "\n".join(tail))


def _wait_for_node(client: "DemoClient", node: subprocess.Popen, timeout_s: float, log_path: str) -> None:  # noqa: F821
    deadline = time.monotonic() + timeout_s
    while not client.node_ready:
        _check_running(node, log_path)
        if time.monotonic() > deadline:
            raise DemoError(f"the node did not come up within {timeout_s:.0f} s; see {log_path}")
        client.spin_once(0.1)

