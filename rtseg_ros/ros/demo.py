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
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from rtseg_ros.engines import SegmenterConfig
from rtseg_ros.io.frames import FrameSourceError, is_bag, open_frames, synthetic_frames
from rtseg_ros.names import PARAMETERS, Topics
from rtseg_ros.ros.node_process import (
    NodeExitedError,
    NodeProcess,
    loopback_dds_environment,
    node_command,
    package_file,
    read_params_file,
)

__all__ = [
    "DemoError",
    "DemoSettings",
    "DemoSummary",
    "TOY_WEIGHTS",
    "UNTRAINED_WARNING",
    "IMAGE_TOPIC",
    "frame_source",
    "choose_weights",
    "demo_node_command",
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


def frame_source(settings: DemoSettings) -> Iterator[tuple[np.ndarray, str]]:
    """Endless ``(image, color_order)`` frames from the configured source (file sources loop).

    Raises:
        DemoError: the source does not exist or holds no frames.
    """
    if settings.source == "synthetic":
        height, width = settings.frame_size
        scenes = synthetic_frames(height, width, SYNTHETIC_SCENES, SYNTHETIC_FIRST_SEED)
        return itertools.cycle((scene, "rgb") for scene in scenes)
    path = Path(settings.source).expanduser()
    if not path.exists():
        raise DemoError(f"source {settings.source!r} is neither 'synthetic' nor an existing file or folder")
    if is_bag(path):
        name = f"rosbag2 {path} on {settings.bag_topic}"
    else:
        name = f"{'folder' if path.is_dir() else 'video'} {path}"
    return _looping(lambda: open_frames(path, image_topic=settings.bag_topic), name)


def _looping(make: Callable[[], Iterator[tuple[np.ndarray, str]]], name: str) -> Iterator[tuple[np.ndarray, str]]:
    try:
        first = make()
        frame = next(first)
    except StopIteration:
        raise DemoError(f"{name} holds no readable frames") from None
    except FrameSourceError as exc:
        raise DemoError(str(exc)) from None

    def frames() -> Iterator[tuple[np.ndarray, str]]:
        yield frame
        yield from first
        while True:
            yield from make()

    return frames()


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


def demo_node_command(settings: DemoSettings, weights: str | None) -> list[str]:
    """The command line that starts the segmentation node for ``settings``.

    The engine is the config file's, with the chosen weights, what our checkpoint records and the
    demo's overrides on top; the file's other settings (confidence encoding, overlay ...) stay.
    """
    config_path = Path(settings.config).expanduser()
    if not config_path.is_file():
        config_path = package_file(f"config/{settings.config}")
    if not config_path.is_file():
        raise DemoError(f"config {settings.config!r} is neither a file nor in {package_file('config')}")
    try:
        values = read_params_file(config_path)
    except ValueError as exc:
        raise DemoError(str(exc)) from None
    # As the node does, a params file's unknown names are ignored.
    engine: dict[str, object] = {name: value for name, value in values.items() if name in PARAMETERS}
    engine["weights"] = weights or ""
    if weights:
        engine.update(_checkpoint_settings(weights))
    if settings.model:
        engine["model"] = settings.model
    if settings.input_size:
        engine["input_height"], engine["input_width"] = settings.input_size
    return node_command(SegmenterConfig.from_parameters(engine), node_settings={"qos_reliability": "reliable"},
                        remaps={Topics.IMAGE.name: IMAGE_TOPIC}, params_file=config_path)


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
    command = demo_node_command(settings, weights)
    summary = DemoSummary(weights=weights or "", weights_note=note, node_command=command,
                          node_log=str(out_dir / "node.log"))

    # Imported here so that `rtseg demo --help` and the settings checks above need no ROS.
    from rtseg_ros.ros.demo_client import DemoClient

    echo(f"starting the node (log: {summary.node_log})")
    try:
        with NodeProcess(command, summary.node_log) as node:
            video = out_dir / "overlay.mp4" if settings.video else None
            with DemoClient(IMAGE_TOPIC, frames, settings.rate_hz, video=video) as client:
                node.wait_ready(lambda: client.ready, settings.startup_timeout_s, client.spin_once)
                echo(f"node ready: {client.label_info_text}")
                try:
                    client.run(settings.duration_s, echo, check=node.check_running)
                except KeyboardInterrupt:
                    echo("interrupted: stopping the camera and the node")
                for name, value in client.figures().items():
                    setattr(summary, name, value)
                overlay = client.last_overlay
                if overlay is not None:
                    summary.overlay_png = str(out_dir / "overlay.png")
                    cv2.imwrite(summary.overlay_png, cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
                if client.video_frames:
                    summary.overlay_video = str(out_dir / "overlay.mp4")
    except NodeExitedError as exc:
        raise DemoError(str(exc)) from None
    (out_dir / "summary.json").write_text(json.dumps(asdict(summary), indent=2, default=str) + "\n")
    return summary
