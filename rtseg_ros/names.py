"""The package's names, in one place: models, scales, backends, precisions, topics, QoS, node parameters.

Everything else reads these: the CLI's choices, recipe validation, ``engines.config``, ``nets``, the
ROS layer and the launch file. This module imports neither torch nor rclpy, so a launch file, the
``rtseg --help`` screen or a client process can use it at no cost.

Adding a node parameter is one entry in :data:`PARAMETERS` (with ``config_field`` when it is a
:class:`~rtseg_ros.engines.SegmenterConfig` field) and the code that uses the value.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# --------------------------------------------------------------------------------- networks
MODEL_NAMES: tuple[str, ...] = ("mfaranet", "atonet")
# MFARANet's prediction scales: stage 1 (stride 4) ... stage 4 (stride 32). ATONet has none and
# always runs with all of them as its (only) setting.
ALL_SCALES: tuple[int, ...] = (1, 2, 3, 4)
# Both networks downsample by 32 in the backbone; the network input is kept to multiples of it.
SIZE_MULTIPLE = 32


def normalize_scales(scales: Sequence[int]) -> tuple[int, ...]:
    """Validates ``scales`` (a non-empty subset of :data:`ALL_SCALES`, no repeats) and returns it sorted.

    Raises:
        ValueError: empty, repeated or out-of-range scales.
    """
    try:
        values = [int(s) for s in scales]
    except (TypeError, ValueError):
        raise ValueError(f"scales must be integers from {ALL_SCALES}, got {scales!r}") from None
    if not values:
        raise ValueError(f"scales must be a non-empty subset of {ALL_SCALES}")
    if len(set(values)) != len(values):
        raise ValueError(f"scales must not repeat, got {tuple(values)}")
    bad = [s for s in values if s not in ALL_SCALES]
    if bad:
        raise ValueError(f"scales must be taken from {ALL_SCALES}, got {tuple(values)}")
    return tuple(sorted(values))


# --------------------------------------------------------------------------------- engines
BACKENDS: tuple[str, ...] = ("torch", "compile", "tensorrt", "onnxruntime", "openvino")
# The backend setting "auto" takes the first backend of this list (by device kind) that the settings
# allow and this machine runs, fastest first as measured by `rtseg bench`; the Segmenter logs the choice
# and, when it falls back, why the faster ones were skipped.
AUTO_BACKEND = "auto"
BACKEND_PREFERENCE: dict[str, tuple[str, ...]] = {
    "cpu": ("openvino", "onnxruntime", "compile", "torch"),
    "cuda": ("tensorrt", "compile", "torch"),
}
# The device setting "auto" takes CUDA when torch sees a CUDA GPU and the other settings run there, else
# the CPU; the Segmenter logs the choice (and, when it passes over a GPU, why).
AUTO_DEVICE = "auto"
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
OUTPUT_RESOLUTIONS: tuple[str, ...] = ("input", "network")
# Besides those, output_resolution takes a fixed label size, written width first as cameras state theirs
# (640x480): the size of a consumer such as a depth camera whose pixels the labels must line up with.
OUTPUT_SIZE_FORM = "WIDTHxHEIGHT"
OUTPUT_SIZE_RANGE: tuple[int, int] = (1, 16384)
_OUTPUT_SIZE_PATTERN = re.compile(r"^([0-9]+)[xX]([0-9]+)$")


def fixed_output_size(output_resolution: object) -> tuple[int, int] | None:
    """The (height, width) of the labels that an ``output_resolution`` setting fixes, or ``None`` for
    ``input`` and ``network`` (a size that follows each frame, or the network input).

    The one parser of the setting: parameter validation, the launch file, the CLI and the
    ``Segmenter`` all read it through this function.

    Raises:
        ValueError: neither ``input``, ``network`` nor ``WIDTHxHEIGHT`` with both sides in
            :data:`OUTPUT_SIZE_RANGE`; the message says what was wrong and what is taken.
    """
    if output_resolution in OUTPUT_RESOLUTIONS:
        return None
    forms = f"{', '.join(OUTPUT_RESOLUTIONS)} or {OUTPUT_SIZE_FORM} such as 640x480"
    match = _OUTPUT_SIZE_PATTERN.match(output_resolution) if isinstance(output_resolution, str) else None
    if match is None:
        raise ValueError(f"output_resolution {output_resolution!r} is not {forms}")
    width, height = int(match.group(1)), int(match.group(2))
    low, high = OUTPUT_SIZE_RANGE
    if not (low <= width <= high and low <= height <= high):
        raise ValueError(f"output_resolution {output_resolution!r}: width and height must be in {low}..{high}")
    return height, width


# --------------------------------------------------------------------------------- label sets
# Built-in label sets (files shipped in rtseg_ros/datasets/label_sets/); anywhere one is named, the path of
# a label set YAML file works too. The label_set parameter's default, empty, takes the set a checkpoint of
# `rtseg train` records, else DEFAULT_LABEL_SET.
LABEL_SET_NAMES: tuple[str, ...] = ("cityscapes", "camvid")
DEFAULT_LABEL_SET = "cityscapes"
IGNORE_INDEX = 255

# --------------------------------------------------------------------------------- node outputs
CONFIDENCE_ENCODINGS: tuple[str, ...] = ("32FC1", "mono8")
INPUT_TRANSPORTS: tuple[str, ...] = ("raw", "compressed")
RELIABILITIES: tuple[str, ...] = ("best_effort", "reliable")

# The JSON document on the label_info_meta topic (class colours and the engine, beside the
# vision_msgs/LabelInfo on label_info) names its layout.
LABEL_INFO_FORMAT = "rtseg_ros/label_info/1"

PACKAGE = "rtseg_ros"
NODE_NAME = "segmentation_node"
NODE_EXECUTABLE = "segmentation_node"
# The executable's flag (before --ros-args) that runs the managed (lifecycle) node.
LIFECYCLE_FLAG = "--lifecycle"


@dataclass(frozen=True)
class QosSpec:
    """A QoS profile as plain data (``rtseg_ros.ros.interfaces`` turns it into an rclpy QoSProfile).

    Attributes:
        depth: keep-last history depth.
        reliability: ``reliable`` or ``best_effort``.
        durability: ``volatile`` or ``transient_local`` (latched: late subscribers get the last message).
    """

    depth: int
    reliability: str = "reliable"
    durability: str = "volatile"


@dataclass(frozen=True)
class TopicSpec:
    """One topic of the node: its name relative to the node's namespace, type and QoS.

    Attributes:
        name: relative name (a namespace or remap moves it), or absolute for ``/diagnostics``.
        msg_type: ``package/msg/Type``.
        qos: the node's QoS; for inputs, what the node subscribes with by default (the
            ``qos_reliability``/``qos_depth`` parameters override the camera's).
    """

    name: str
    msg_type: str
    qos: QosSpec


# Reliable outputs match reliable and best-effort subscribers alike (RViz, message_filters); with
# keep-last history a slow subscriber never blocks the node. label_info is latched, so subscribers
# that join late (RViz, the demo, the evaluator) still get it.
_OUTPUT_QOS = QosSpec(depth=1, reliability="reliable")
_LATCHED_QOS = QosSpec(depth=1, reliability="reliable", durability="transient_local")


class Topics:
    """Every topic the node reads or writes."""

    IMAGE = TopicSpec("image", "sensor_msgs/msg/Image", QosSpec(depth=1, reliability="best_effort"))
    COMPRESSED_IMAGE = TopicSpec("image", "sensor_msgs/msg/CompressedImage",
                                 QosSpec(depth=1, reliability="best_effort"))
    CAMERA_INFO = TopicSpec("camera_info", "sensor_msgs/msg/CameraInfo", QosSpec(depth=5, reliability="best_effort"))
    LABELS = TopicSpec("segmentation/labels", "sensor_msgs/msg/Image", _OUTPUT_QOS)
    CONFIDENCE = TopicSpec("segmentation/confidence", "sensor_msgs/msg/Image", _OUTPUT_QOS)
    OVERLAY = TopicSpec("segmentation/overlay", "sensor_msgs/msg/Image", _OUTPUT_QOS)
    OUTPUT_CAMERA_INFO = TopicSpec("segmentation/camera_info", "sensor_msgs/msg/CameraInfo", _OUTPUT_QOS)
    LABEL_INFO = TopicSpec("segmentation/label_info", "vision_msgs/msg/LabelInfo", _LATCHED_QOS)
    # What LabelInfo has no field for (class colours, model, weights, input size, backend): the JSON
    # document of LABEL_INFO_FORMAT, latched and re-published with label_info.
    LABEL_INFO_META = TopicSpec("segmentation/label_info_meta", "std_msgs/msg/String", _LATCHED_QOS)
    DIAGNOSTICS = TopicSpec("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray", QosSpec(depth=10))
    # Per frame, only while subscribed: a JSON object of the frame's stamp and where its time went in the
    # node (receipt, Segmenter, publishing), on the node's clock. `rtseg bench node` reads it.
    TIMINGS = TopicSpec("segmentation/timings", "std_msgs/msg/String", QosSpec(depth=10))


# A camera name is one ROS name token: its topics are <name>/image, <name>/segmentation/labels, ...
_CAMERA_NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def check_camera_names(cameras: Sequence[str]) -> tuple[str, ...]:
    """Validates the ``cameras`` setting (distinct ROS name tokens) and returns it as a tuple.

    Raises:
        ValueError: a name that is not a letter followed by letters, digits or underscores, or a repeat.
    """
    names = tuple(cameras)
    bad = [name for name in names if not isinstance(name, str) or not _CAMERA_NAME_PATTERN.match(name)]
    if bad:
        raise ValueError(f"camera names must start with a letter and hold only letters, digits and '_' "
                         f"(they become topic namespaces); got {bad}")
    if len(set(names)) != len(names):
        raise ValueError(f"camera names must not repeat, got {list(names)}")
    return names


def camera_topic(camera: str, topic: TopicSpec) -> str:
    """The name of ``topic`` for ``camera``: under the camera's name (``front/segmentation/labels``), or the
    topic's own name for the single-camera node (camera ``""``). Absolute topics (``/diagnostics``) stay."""
    if not camera or topic.name.startswith("/"):
        return topic.name
    return f"{camera}/{topic.name}"


# --------------------------------------------------------------------------------- node parameters
@dataclass(frozen=True)
class ParameterSpec:
    """One node parameter (also a launch argument of the same name).

    Attributes:
        default: the value when neither a params file nor ``-p`` sets it; its type is the
            parameter's type.
        description: shown by ``ros2 param describe`` and the launch file's ``--show-args``.
        choices: the allowed values of a string parameter, if limited.
        integer_range: inclusive bounds of an integer (or each element of an integer array).
        integer_step: if not 0, valid integers are the lower bound plus a multiple of it.
        float_range: inclusive bounds of a floating-point parameter.
        config_field: the :class:`~rtseg_ros.engines.SegmenterConfig` field it sets; changing such
            a parameter at run time builds a new engine in the background. Empty: a node-only setting.
        read_only: fixed at start-up (it shapes subscriptions or publishers).
        check: a further check of a value that has the right type, for forms that choices and ranges
            cannot state; it raises ``ValueError`` with the reason.
        item_type: the element type of a list parameter (``int`` or ``str``); an empty default cannot say.
    """

    default: Any
    description: str
    choices: tuple[str, ...] = ()
    integer_range: tuple[int, int] | None = None
    integer_step: int = 0
    float_range: tuple[float, float] | None = None
    config_field: str = ""
    read_only: bool = False
    check: Callable[[Any], object] | None = None
    item_type: type = int

    @property
    def rebuilds_engine(self) -> bool:
        return bool(self.config_field)

    def parse(self, text: str) -> Any:
        """A value typed as text (a launch argument, ``NAME=VALUE``) in this parameter's type.

        Text parameters keep the text as typed (paths and names such as ``2024.pth`` or ``cuda:0``);
        the others are read as YAML, as a params file is (``512``, ``[2]``, ``true``, ``0.5``).
        """
        if isinstance(self.default, str):
            return text
        import yaml  # only callers that parse text pay for it

        return yaml.safe_load(text)


PARAMETERS: dict[str, ParameterSpec] = {
    "model": ParameterSpec(
        "mfaranet", "Network architecture.", choices=MODEL_NAMES, config_field="model"),
    "weights": ParameterSpec(
        "", "Checkpoint: a path, a file name in the models folders, or a models/manifest.yaml entry "
        "(ours or the authors' files). Empty: untrained random weights, for testing only.",
        config_field="weights"),
    "label_set": ParameterSpec(
        "", f"Classes the weights predict (class names, overlay colours): {', '.join(LABEL_SET_NAMES)} or the path "
        f"of a label set YAML file. Empty: the set the checkpoint records (rtseg train writes it), else "
        f"{DEFAULT_LABEL_SET}.", config_field="label_set"),
    "input_width": ParameterSpec(
        1024, f"Network input width in pixels, a multiple of {SIZE_MULTIPLE}; frames are resized to it.",
        integer_range=(SIZE_MULTIPLE, 8192), integer_step=SIZE_MULTIPLE, config_field="input_width"),
    "input_height": ParameterSpec(
        512, f"Network input height in pixels, a multiple of {SIZE_MULTIPLE}; frames are resized to it.",
        integer_range=(SIZE_MULTIPLE, 8192), integer_step=SIZE_MULTIPLE, config_field="input_height"),
    "scales": ParameterSpec(
        list(ALL_SCALES), "MFARANet prediction scales kept at inference (pruning); ATONet needs the default.",
        integer_range=(min(ALL_SCALES), max(ALL_SCALES)), config_field="scales"),
    "backend": ParameterSpec(
        AUTO_BACKEND, f"Inference engine; '{AUTO_BACKEND}': the fastest one installed "
        f"(CPU: {' > '.join(BACKEND_PREFERENCE['cpu'])}; CUDA: {' > '.join(BACKEND_PREFERENCE['cuda'])}).",
        choices=(*BACKENDS, AUTO_BACKEND), config_field="backend"),
    "precision": ParameterSpec(
        "fp32", "Numeric precision of the engine.", choices=PRECISIONS, config_field="precision"),
    "device": ParameterSpec(
        AUTO_DEVICE, f"Compute device: cpu, cuda or cuda:N; gpu, gpu.N or npu for an Intel GPU/NPU (openvino "
        f"backend); '{AUTO_DEVICE}': cuda when torch sees a CUDA GPU and the other settings run there, else cpu "
        "(the node logs the choice).",
        config_field="device"),
    "output_resolution": ParameterSpec(
        "input", f"Size of the published labels and confidence (segmentation/camera_info is scaled to it): 'input' "
        f"(each camera frame's), 'network' (the input_* size) or {OUTPUT_SIZE_FORM}, e.g. 640x480 for a depth "
        "camera's organized point cloud, whatever the frame size.",
        config_field="output_resolution", check=fixed_output_size),
    "engine_cache_dir": ParameterSpec(
        "", "Folder for exported/compiled engines. Empty: $RTSEG_ROS_CACHE, else ~/.cache/rtseg_ros.",
        config_field="cache_dir"),
    "calibration_data": ParameterSpec(
        "", "int8 only: camera frames to calibrate on, a folder of images, a video or a rosbag2 (the calibrated "
        "engine is cached).", config_field="calibration_data"),
    "calibration_frames": ParameterSpec(
        64, "int8 only: how many frames of calibration_data to calibrate on.", integer_range=(1, 100000),
        config_field="calibration_frames"),
    "confidence_encoding": ParameterSpec(
        "32FC1", "Encoding of the confidence image: 32FC1 (probability) or mono8 (probability x 255).",
        choices=CONFIDENCE_ENCODINGS),
    "publish_overlay": ParameterSpec(
        True, "Publish the colour overlay (computed only while someone subscribes)."),
    "overlay_alpha": ParameterSpec(
        0.5, "Weight of the class colours in the overlay, 0 (camera only) to 1 (colours only).",
        float_range=(0.0, 1.0)),
    "input_transport": ParameterSpec(
        "raw", "Camera topic type: 'raw' (sensor_msgs/Image) or 'compressed' (sensor_msgs/CompressedImage; "
        "remap 'image' to the camera's .../compressed topic).",
        choices=INPUT_TRANSPORTS, read_only=True),
    "qos_reliability": ParameterSpec(
        "best_effort", "Reliability of the camera subscription; best_effort takes both kinds of camera publisher. "
        "The outputs are always reliable, which every subscriber accepts.",
        choices=RELIABILITIES, read_only=True),
    "qos_depth": ParameterSpec(
        1, "History depth of the camera subscription and the output topics, and how many frames may wait for "
        "the network: 1 serves only the newest frame (no backlog, the least latency); more absorb a slow frame "
        "now and then without a drop, at that many frames of extra latency.", integer_range=(1, 100),
        read_only=True),
    "camera_width": ParameterSpec(
        0, "Width of the camera's frames (every camera's, with several cameras), if known: the engines for that "
        "size (labels, and labels with confidence) are built at start-up instead of in the background after the "
        "first frame (which eager PyTorch or a ready engine serves meanwhile). 0: not known; a camera_info message "
        "also tells it.",
        integer_range=(0, 16384), read_only=True),
    "camera_height": ParameterSpec(
        0, "Height of the camera's frames, if known (see camera_width). 0: not known.",
        integer_range=(0, 16384), read_only=True),
    "cpu_threads": ParameterSpec(
        0, "CPU threads the network runs on (torch, ONNX Runtime and OpenVINO alike); 0: every usable core but one "
        "(at least one), which is left to the middleware, the frame thread and the camera driver: a network on "
        "every core is preempted by them mid-layer and serves a lower camera rate. Lower it further when other "
        "busy nodes share the machine.",
        integer_range=(0, 1024), read_only=True),
    "direct_io": ParameterSpec(
        True, "Take camera frames and publish output images through rcl's serialised-message calls, each frame "
        "handled on the thread that took it: one copy fewer each way than rclpy and no hand-off between threads. "
        "false: rclpy's executor and Publisher.publish (also used, with a warning, where rcl cannot be reached).",
        read_only=True),
    "cameras": ParameterSpec(
        [], "Cameras this one node serves with one engine, their frames batched (e.g. [front, rear]): each camera's "
        "topics are under its name (front/image, front/camera_info in; front/segmentation/labels ... out). "
        "Empty: one camera, on image and camera_info.", read_only=True, item_type=str, check=check_camera_names),
    "compressed_cameras": ParameterSpec(
        [], "With several cameras: those whose 'image' topic is sensor_msgs/CompressedImage (remap it to the "
        "camera's .../compressed topic); the others take input_transport.", read_only=True, item_type=str,
        check=check_camera_names),
    "batch_wait_ms": ParameterSpec(
        0.0, "With several cameras: how long a batch that is not full waits for the other cameras' frames. 0: a "
        "batch takes the frames waiting (the least latency); more: larger batches, at that much latency.",
        float_range=(0.0, 1000.0)),
    "image_timeout": ParameterSpec(
        2.0, "Seconds without a camera frame, after the first one, before /diagnostics turns WARN "
        "(the camera stopped).", float_range=(0.1, 3600.0)),
}

ENGINE_PARAMETERS: frozenset[str] = frozenset(name for name, spec in PARAMETERS.items() if spec.rebuilds_engine)
