"""``rtseg demo``: the segmentation node on a camera source, with live statistics.

The node runs in its own process, as on a robot; this process plays the camera (synthetic street
scenes, a folder of images, a video or a rosbag2), listens to the outputs, prints input and output
rates, latency and drops every second, and writes the last overlay, a side-by-side picture (camera |
labels | overlay, with the classes named) and optionally a video at the end.

Given no weights, the demo runs the toy model (ATONet trained on the synthetic scenes by the
``synthetic`` recipe); when it is not cached yet, the demo trains it first (a few minutes on a CPU,
with a progress bar), keeps it for next time, and continues an interrupted training where it
stopped. ``untrained`` skips all that and runs random weights: the pipeline and its speed only.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from rtseg_ros.datasets.labels import LabelSet
from rtseg_ros.datasets.synthetic import HELD_OUT_FIRST_SEED
from rtseg_ros.engines import SegmenterConfig
from rtseg_ros.io.frames import FrameSourceError, is_bag, open_frames, synthetic_frames
from rtseg_ros.nets.weights import TOY_MODEL
from rtseg_ros.names import PARAMETERS, Topics
from rtseg_ros.user_cache import cache_dir, models_dir
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
    "TOY_MODEL",
    "TOY_WEIGHTS",
    "TOY_RUN_DIR",
    "UNTRAINED_WARNING",
    "IMAGE_TOPIC",
    "frame_source",
    "choose_weights",
    "demo_config",
    "demo_node_command",
    "side_by_side",
    "train_toy_model",
    "run_demo",
]

# Where the ``synthetic`` training recipe leaves a toy model it trains (`rtseg demo --retrain`).
TOY_WEIGHTS = models_dir() / "synthetic_toy.pth"
# The demo trains the toy model here (resume file, logs); only the finished weights go to TOY_WEIGHTS.
TOY_RUN_DIR = cache_dir() / "toy_training"
TOY_RECIPE = "synthetic"
IMAGE_TOPIC = "/rtseg_demo/camera/image_raw"
SYNTHETIC_SCENES = 8
UNTRAINED_WARNING = (
    "!" * 78 + "\n"
    "!! NO WEIGHTS: the node runs UNTRAINED random weights. The labels and the overlay are noise;\n"
    "!! they show the pipeline and its speed, not segmentation. Pass --weights FILE, or run\n"
    "!! `rtseg demo` without --untrained: it runs the toy model shipped in models/.\n" + "!" * 78
)


class DemoError(RuntimeError):
    """The demo cannot run (bad source, node failed to start); the message says why."""


@dataclass
class DemoSettings:
    """What ``rtseg demo`` runs.

    Attributes:
        source: ``synthetic``, a folder of images, a video file, or a rosbag2 folder.
        weights: checkpoint for the node; ``None`` runs the shipped toy model (:data:`TOY_MODEL`).
        config: parameter file, a name in the package's ``config`` folder or a path.
        model: overrides the config's model (and the checkpoint's, for our own checkpoints).
        input_size: (height, width) of the network input; ``None`` keeps the config's.
        frame_size: (height, width) of synthetic frames.
        rate_hz: camera rate.
        duration_s: how long the camera publishes, after the node is up.
        out_dir: where the overlay, the side-by-side picture, the video, the node log and
            ``summary.json`` go.
        video: also write ``overlay.mp4``.
        bag_topic: the image topic read from a rosbag2 source.
        startup_timeout_s: how long to wait for the node to build its engine.
        untrained: run random weights, never the toy model: the pipeline only.
        retrain: train the toy model anew with the ``synthetic`` recipe (into :data:`TOY_WEIGHTS`) and run
            it, instead of the one shipped in ``models/`` (:data:`TOY_MODEL`).
        toy_overrides: recipe overrides for training the toy model (``section.key=value``).
        started_at: ``time.monotonic()`` when the demo command started (``rtseg demo`` gives the moment the
            ``rtseg`` command's package was first imported); ``None``: when :func:`run_demo` is called.
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
    untrained: bool = False
    retrain: bool = False
    toy_overrides: tuple[str, ...] = ()
    started_at: float | None = None


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
    side_by_side_png: str = ""
    toy_training_s: float = 0.0
    # From the node's process start: label_info in and the camera connected; the first labels received.
    node_ready_s: float = math.nan
    first_labels_s: float = math.nan
    # The first labels from the demo command's start (DemoSettings.started_at): what a user waits, the
    # imports, the weights' lookup, any toy training and the node's start included.
    first_labels_since_demo_start_s: float = math.nan
    # Frames per engine that served them, from the node's segmentation/timings ("eager", the backend, "unknown").
    served_by: dict[str, int] = field(default_factory=dict)
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
        scenes = synthetic_frames(height, width, SYNTHETIC_SCENES, HELD_OUT_FIRST_SEED)
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


def choose_weights(weights: str | None) -> tuple[str, str]:
    """The weights the demo runs and a note for the user: given, else the shipped toy model.

    ``weights`` is a path, a file name in the models folders or a ``models/manifest.yaml`` entry.

    Raises:
        DemoError: no such weights (the message lists where the resolver looked).
    """
    from rtseg_ros.nets import WeightsError
    from rtseg_ros.nets.weights import resolve_weights

    try:
        path = resolve_weights(weights or TOY_MODEL)
    except WeightsError as exc:
        raise DemoError(str(exc)) from None
    if weights and Path(weights).expanduser().resolve() != TOY_WEIGHTS.resolve():
        return str(path), f"weights {path}"
    return str(path), (f"TOY model {path} (trained on synthetic scenes only: fine for the built-in scenes, "
                       "meaningless on real images)")


def demo_config(settings: DemoSettings, weights: str | None) -> tuple[SegmenterConfig, Path]:
    """The node's engine settings for ``settings`` and the parameter file they start from.

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
    return SegmenterConfig.from_parameters(engine), config_path


def demo_node_command(settings: DemoSettings, weights: str | None) -> list[str]:
    """The command line that starts the segmentation node for ``settings`` (see :func:`demo_config`)."""
    config, config_path = demo_config(settings, weights)
    return node_command(config, node_settings={"qos_reliability": "reliable"},
                        remaps={Topics.IMAGE.name: IMAGE_TOPIC}, params_file=config_path)


def train_toy_model(echo: Callable[[str], None] = print, overrides: tuple[str, ...] = ()) -> Path:
    """Train the toy model into :data:`TOY_WEIGHTS` (the ``synthetic`` recipe), continuing an interrupted run.

    The training runs in :data:`TOY_RUN_DIR` with a progress bar (iterations, rate, time left).
    Only the finished weights are copied, atomically, to ``TOY_WEIGHTS``: a Ctrl-C leaves no
    half-written model, and the run's resume file lets the next call continue where it stopped.

    Raises:
        DemoError: the training was interrupted or failed; the message says what is kept.
    """
    from rtseg_ros.training.checkpoints import RESUME_FILE
    from rtseg_ros.training.recipe import load_recipe
    from rtseg_ros.training.trainer import run_training

    run_dir = TOY_RUN_DIR
    recipe = load_recipe(TOY_RECIPE, (f"output.dir={run_dir}", f"output.weights={TOY_WEIGHTS}",
                                      "output.tensorboard=false", *overrides))
    resume = run_dir / RESUME_FILE
    iterations = recipe["train"]["iterations"]
    if resume.is_file():
        echo(f"continuing the toy model's training from {resume} (stopped before; {iterations} iterations in all)")
    else:
        echo(f"no toy model yet: training it once ({iterations} iterations of ATONet on synthetic street scenes, "
             f"a few minutes on a CPU; Ctrl-C stops it, the next `rtseg demo` continues). Cached as {TOY_WEIGHTS}; "
             "--untrained skips this and runs random weights.")
    _quiet_training_logs()
    try:
        result = run_training(recipe, resume=resume if resume.is_file() else None)
    except KeyboardInterrupt:
        kept = f"the next `rtseg demo` continues from {resume}" if resume.is_file() else "nothing was kept"
        raise DemoError(f"toy model training interrupted: no toy model cached; {kept} "
                        "(or run `rtseg demo --untrained`)") from None
    except (ValueError, FileNotFoundError) as exc:
        raise DemoError(f"cannot train the toy model: {type(exc).__name__}: {exc}") from None
    if result.final_weights is None or not TOY_WEIGHTS.is_file():
        raise DemoError(f"the toy model training stopped at iteration {result.iteration} without weights")
    echo(f"toy model ready: {TOY_WEIGHTS} (validation mIoU {result.last_miou:.3f}, {result.seconds:.0f} s)")
    shutil.rmtree(run_dir, ignore_errors=True)  # the weights are kept in TOY_WEIGHTS; the run is done
    return TOY_WEIGHTS


def _quiet_training_logs() -> None:
    """Show the trainer's one-line summaries (not the debug chatter) above its progress bar."""
    import logging

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("rtseg_ros.training").setLevel(logging.INFO)


# Panels of the side-by-side picture: a title bar above each, a legend of the classes seen below.
_TITLE_H = 22
_LEGEND_ROW_H = 22
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def side_by_side(camera_rgb: np.ndarray, labels: np.ndarray, overlay_rgb: np.ndarray, label_set: LabelSet,
                 ) -> np.ndarray:
    """camera | labels (in the label set's colours) | overlay, titled, over a legend naming the classes seen.

    The legend lists the classes present in ``labels``, most pixels first, with their share of the frame.
    All inputs are brought to the labels' size; the result is RGB.
    """
    height, width = labels.shape
    panels = [cv2.resize(camera_rgb, (width, height), interpolation=cv2.INTER_AREA),
              label_set.colorize(labels),
              cv2.resize(overlay_rgb, (width, height), interpolation=cv2.INTER_NEAREST)]
    titled = []
    for title, panel in zip(("camera", "labels", "overlay"), panels):
        bar = np.full((_TITLE_H, width, 3), 255, np.uint8)
        cv2.putText(bar, title, (6, _TITLE_H - 7), _FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        titled.append(np.vstack([bar, panel]))
    top = np.hstack(titled)
    ids, counts = np.unique(labels, return_counts=True)
    seen = [(int(i), int(c)) for i, c in sorted(zip(ids, counts), key=lambda item: -item[1])
            if int(i) < label_set.num_classes]
    entries = [(label_set.colors[i], f"{label_set.class_names[i]} {100.0 * c / labels.size:.0f}%") for i, c in seen]
    return np.vstack([top, _legend(entries, top.shape[1])])


def _legend(entries: list[tuple[tuple[int, int, int], str]], width: int) -> np.ndarray:
    """Rows of colour swatches and names, as many per row as fit ``width``."""
    rows: list[list[tuple[tuple[int, int, int], str, int]]] = [[]]
    x = 6
    for color, text in entries:
        (text_w, _), _ = cv2.getTextSize(text, _FONT, 0.45, 1)
        item_w = 18 + text_w + 16
        if x + item_w > width and rows[-1]:
            rows.append([])
            x = 6
        rows[-1].append((color, text, x))
        x += item_w
    legend = np.full((_LEGEND_ROW_H * len(rows) + 4, width, 3), 255, np.uint8)
    for row_index, row in enumerate(rows):
        y = row_index * _LEGEND_ROW_H + 4
        for color, text, x in row:
            cv2.rectangle(legend, (x, y + 2), (x + 14, y + 16), tuple(int(v) for v in color), -1)
            cv2.rectangle(legend, (x, y + 2), (x + 14, y + 16), (0, 0, 0), 1)
            cv2.putText(legend, text, (x + 18, y + 14), _FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return legend


def _checkpoint_settings(weights: str) -> dict[str, object]:
    """Model, label set and scales recorded in one of our checkpoints (nothing for other files).

    A label set recorded whole (from a file) is not named: the node's empty ``label_set`` takes it
    from the checkpoint.
    """
    from rtseg_ros.names import LABEL_SET_NAMES
    from rtseg_ros.nets.checkpoint import LABEL_SET_DEFINITION, read_checkpoint_info

    info = read_checkpoint_info(weights)
    settings: dict[str, object] = {}
    if isinstance(info.get("model"), str):
        settings["model"] = info["model"]
    if info.get("label_set") in LABEL_SET_NAMES:
        settings["label_set"] = info["label_set"]
    elif LABEL_SET_DEFINITION in info:
        settings["label_set"] = ""
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
    if settings.untrained and (settings.weights or settings.retrain):
        raise DemoError("untrained runs random weights; it goes with neither weights nor retrain")
    if settings.retrain and settings.weights:
        raise DemoError("retrain trains the toy model and runs it; it does not go with weights")
    demo_started = time.monotonic() if settings.started_at is None else settings.started_at
    frames = frame_source(settings)
    toy_training_s = 0.0
    if settings.untrained:
        weights, note = None, "UNTRAINED random weights"
    else:
        given = settings.weights
        if settings.retrain:
            started = time.monotonic()
            given = str(train_toy_model(echo, settings.toy_overrides))
            toy_training_s = time.monotonic() - started
        weights, note = choose_weights(given)
    echo(UNTRAINED_WARNING if weights is None else note)
    os.environ.update(loopback_dds_environment(os.environ))
    out_dir = settings.out_dir.expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    config, _ = demo_config(settings, weights)
    try:
        label_set = config.resolved_label_set()  # the node's classes: the side-by-side legend names them
    except ValueError as exc:
        raise DemoError(str(exc)) from None
    command = demo_node_command(settings, weights)
    summary = DemoSummary(weights=weights or "", weights_note=note, node_command=command,
                          node_log=str(out_dir / "node.log"), toy_training_s=toy_training_s)

    # Imported here so that `rtseg demo --help` and the settings checks above need no ROS.
    from rtseg_ros.ros.demo_client import DemoClient

    echo(f"starting the node (log: {summary.node_log})")
    try:
        node_started = time.monotonic()
        with NodeProcess(command, summary.node_log) as node:
            video = out_dir / "overlay.mp4" if settings.video else None
            with DemoClient(IMAGE_TOPIC, frames, settings.rate_hz, video=video) as client:
                node.wait_ready(lambda: client.ready, settings.startup_timeout_s, client.spin_once)
                summary.node_ready_s = time.monotonic() - node_started
                echo(f"node ready {summary.node_ready_s:.1f} s after its start: {client.label_info_text}")
                try:
                    client.run(settings.duration_s, echo, check=node.check_running)
                except KeyboardInterrupt:
                    echo("interrupted: stopping the camera and the node")
                for name, value in client.figures().items():
                    setattr(summary, name, value)
                if client.first_labels_s is not None:
                    summary.first_labels_s = client.first_labels_s - node_started
                    summary.first_labels_since_demo_start_s = client.first_labels_s - demo_started
                    echo(f"first labels {summary.first_labels_since_demo_start_s:.1f} s after the demo started "
                         f"({summary.first_labels_s:.1f} s after the node started); frames served by: "
                         + (", ".join(f"{name} {count}" for name, count in sorted(summary.served_by.items()))
                            or "unknown"))
                overlay = client.last_overlay
                if overlay is not None:
                    summary.overlay_png = str(out_dir / "overlay.png")
                    cv2.imwrite(summary.overlay_png, cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
                if client.last_matched is not None:
                    summary.side_by_side_png = str(out_dir / "side_by_side.png")
                    picture = side_by_side(*client.last_matched, label_set)
                    cv2.imwrite(summary.side_by_side_png, cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
                if client.video_frames:
                    summary.overlay_video = str(out_dir / "overlay.mp4")
    except NodeExitedError as exc:
        raise DemoError(str(exc)) from None
    (out_dir / "summary.json").write_text(json.dumps(asdict(summary), indent=2, default=str) + "\n")
    return summary
