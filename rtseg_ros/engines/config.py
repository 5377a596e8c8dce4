"""Segmenter settings: the one description of a deployment, its checks and the forms it takes.

A :class:`SegmenterConfig` is what the node's engine parameters, an evaluation report's ``model``
block, a bench row, the node's ``label_info`` and its ``/diagnostics`` engine fields describe. Each of
those forms is rendered (and, where it is read back, parsed) here, so none of them is hand-copied
elsewhere; the node parameters follow :data:`rtseg_ros.names.PARAMETERS` through each spec's
``config_field``.

:meth:`SegmenterConfig.check` is the one check before anything is built. It runs
:meth:`SegmenterConfig.validate` (the settings fit together; needs nothing but the settings) and then
:func:`check_runtime` (this machine can run them: CUDA present, optional libraries importable). Both
raise :class:`ConfigError` with a reason a user can act on, before any weights are loaded or anything
is compiled.

This module imports no torch (``check_runtime`` does, when called), so clients that only build node
command lines from a config stay light.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rtseg_ros.names import (
    ALL_SCALES,
    AUTO_BACKEND,
    AUTO_DEVICE,
    BACKEND_PREFERENCE,
    BACKENDS,
    DEFAULT_LABEL_SET,
    IGNORE_INDEX,
    LABEL_INFO_FORMAT,
    MODEL_NAMES,
    OUTPUT_RESOLUTIONS,
    PARAMETERS,
    PRECISIONS,
    SIZE_MULTIPLE,
    ParameterSpec,
    fixed_output_size,
    normalize_scales,
)
from rtseg_ros.user_cache import cache_dir as default_cache_dir  # engines live in the user cache

if TYPE_CHECKING:
    from rtseg_ros.datasets.labels import LabelSet

__all__ = [
    "ALL_SCALES",
    "BACKENDS",
    "OUTPUT_RESOLUTIONS",
    "PRECISIONS",
    "SIZE_MULTIPLE",
    "ConfigError",
    "SegmenterConfig",
    "check_runtime",
    "default_cache_dir",
]

LOG = logging.getLogger(__name__)

# The seed of the random initial weights run when no weights are set: one fixed set of weights, so an
# engine built for them is found in the cache by the next start instead of being exported again.
RANDOM_WEIGHTS_SEED = 0

_DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?)$")
# Intel GPUs and NPUs as OpenVINO names them, in any case: gpu, gpu.1, npu. Only the openvino backend
# runs there; frames are prepared in host memory for them.
_OPENVINO_DEVICE_PATTERN = re.compile(r"^(gpu(\.\d+)?|npu)$", re.IGNORECASE)


def openvino_device_name(device: str) -> str:
    """OpenVINO's name for a ``device`` setting: ``cpu`` -> ``CPU``, ``gpu.1`` -> ``GPU.1``, ``npu`` -> ``NPU``."""
    return device.upper()


class ConfigError(ValueError):
    """A segmenter setting, or a combination of settings, that cannot work."""


@dataclass
class SegmenterConfig:
    """Everything that decides how frames are segmented.

    Attributes:
        model: network name, one of ``mfaranet`` or ``atonet``.
        weights: checkpoint: a path, a file name in the models folders or a manifest entry (:func:`weights_file`);
            ``None`` runs the fixed random initial weights of :data:`RANDOM_WEIGHTS_SEED` (a warning is logged).
        label_set: label set the classes belong to: ``cityscapes``, ``camvid`` or the path of a label set
            YAML file; empty: the one the weights record (our checkpoints), else ``cityscapes``
            (:meth:`resolved_label_set`).
        num_classes: number of output classes; ``None`` takes the label set's count.
        input_height: network input height in pixels (a multiple of 32).
        input_width: network input width in pixels (a multiple of 32).
        scales: MFARANet stages fused into the prediction; fewer stages skip work.
        backend: ``torch`` (eager, the default here), ``compile`` (torch.compile), ``tensorrt``,
            ``onnxruntime``, ``openvino``, or ``auto`` (resolved by :func:`resolve_backend`; the node's
            default, so :meth:`from_parameters` without a backend gives ``auto``).
        precision: ``fp32``, ``fp16`` (CUDA, or an OpenVINO GPU/NPU) or ``int8`` (tensorrt or
            openvino, calibrated).
        device: ``cpu``, ``cuda`` or ``cuda:N``, an Intel ``gpu``/``gpu.N``/``npu`` (openvino), or ``auto``
            (resolved by :func:`resolve_device`; the node's default).
        output_resolution: ``input`` gives labels at each frame's own size, ``network`` at the
            network input size, ``WIDTHxHEIGHT`` (``640x480``) at that size whatever the frame's
            (:func:`~rtseg_ros.names.fixed_output_size` reads it).
        cache_dir: where exports and engines are cached; ``None`` uses :func:`default_cache_dir`.
        calibration_data: folder of images or a rosbag2 for int8 calibration.
        calibration_frames: how many frames of ``calibration_data`` to calibrate on.
        max_batch: the most frames :meth:`Segmenter.segment_batch` runs through the network at once
            (the batched engines are built for batches of 1 to ``max_batch``). Not a node parameter:
            a multi-camera node sets it to its camera count.
    """

    # The defaults of the fields that are node parameters are the parameters' own (names.PARAMETERS),
    # except the backend's and the device's.
    model: str = PARAMETERS["model"].default
    weights: str | None = None
    label_set: str = PARAMETERS["label_set"].default
    num_classes: int | None = None
    input_height: int = PARAMETERS["input_height"].default
    input_width: int = PARAMETERS["input_width"].default
    scales: tuple[int, ...] = ALL_SCALES
    # Not the node's default (auto): a script, a test or `rtseg eval` gets labels from the first call,
    # exact to the weights and with nothing exported; a node runs long enough to repay an export.
    backend: str = "torch"
    precision: str = PARAMETERS["precision"].default
    # Not the node's default (auto) either: a script's or `rtseg eval`'s results do not change with the
    # machine it runs on unless it asks for a device.
    device: str = "cpu"
    output_resolution: str = PARAMETERS["output_resolution"].default
    cache_dir: str | None = None
    calibration_data: str | None = None
    calibration_frames: int = 64
    max_batch: int = 1

    @property
    def network_size(self) -> tuple[int, int]:
        """(height, width) of the network input."""
        return (self.input_height, self.input_width)

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def torch_device(self) -> str:
        """The torch device frames are prepared on: ``device``, or ``cpu`` for an OpenVINO GPU/NPU."""
        return "cpu" if _OPENVINO_DEVICE_PATTERN.match(self.device) else self.device

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()

    def resolved_num_classes(self) -> int:
        return self.num_classes if self.num_classes is not None else self.resolved_label_set().num_classes

    def resolved_label_set(self) -> LabelSet:
        """The label set served: ``label_set``, or when it is empty the one the weights record, else
        ``names.DEFAULT_LABEL_SET``. Reads the checkpoint's metadata (imports torch) when there are weights.

        Raises:
            LabelSetError: the label set cannot be read, or its classes differ from those the
                checkpoint records (names, order or count); the message names both.
        """
        return _resolve_label_set(self.label_set, self.weights)

    def check(self) -> None:
        """The one check before building: :meth:`validate`, then :func:`check_runtime` on this machine.

        Raises:
            ConfigError: the first problem found, with what to change.
        """
        self.validate()
        chosen = self
        if self.device == AUTO_DEVICE:
            # validate() accepted auto because some device takes the settings; this machine's must.
            chosen, reason, _ = _choose_device(self)
            try:
                chosen.validate()
            except ConfigError as exc:
                raise ConfigError(f"{exc} (device {AUTO_DEVICE} takes {chosen.device} here: {reason})") from None
        check_runtime(chosen)

    # Node parameters ---------------------------------------------------------------------------

    def to_parameters(self) -> dict[str, Any]:
        """The node's engine parameters that describe this config, one per ``names.ENGINE_PARAMETERS`` name.

        Values are typed as the parameters are (``None`` paths as ``""``, scales as a list), in the
        order of ``names.PARAMETERS``.
        """
        return {name: _parameter_value(spec, getattr(self, spec.config_field))
                for name, spec in PARAMETERS.items() if spec.config_field}

    @classmethod
    def from_parameters(cls, values: Mapping[str, Any]) -> SegmenterConfig:
        """The config that node parameter ``values`` describe; nothing is validated or resolved.

        Node-only parameters in ``values`` are ignored and engine parameters it lacks take their
        defaults, so a whole node parameter set and a params file's few lines both work. The
        ``weights`` value is kept as given (the node resolves manifest names to files).

        Raises:
            ConfigError: ``values`` holds a name that is not a node parameter.
        """
        unknown = sorted(set(values) - set(PARAMETERS))
        if unknown:
            raise ConfigError(f"unknown node parameter(s) {', '.join(unknown)}; known: {', '.join(PARAMETERS)}")
        return cls(**{spec.config_field: _field_value(spec, values.get(name, spec.default))
                      for name, spec in PARAMETERS.items() if spec.config_field})

    # Reports -----------------------------------------------------------------------------------

    def to_settings(self, weights_sha256: str | None = None) -> dict[str, Any]:
        """The ``model`` block of an evaluation report (the label set is a field of the report itself).

        Args:
            weights_sha256: the weights file's hash, if known; recorded as given.
        """
        return {
            "name": self.model,
            "weights": self.weights,
            "weights_sha256": weights_sha256,
            "scales": list(self.scales),
            "backend": self.backend,
            "precision": self.precision,
            "device": self.device,
            "output_resolution": self.output_resolution,
            "input_size": [self.input_height, self.input_width],
        }

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], *, label_set: str, **fields: Any) -> SegmenterConfig:
        """The config of an evaluation report's ``model`` block (see :meth:`to_settings`).

        Args:
            settings: the block; ``weights_sha256`` is not part of a config and is ignored.
            label_set: the report's label set.
            fields: other :class:`SegmenterConfig` fields (``cache_dir`` ...).
        """
        height, width = settings["input_size"]
        return cls(model=settings["name"], weights=settings.get("weights") or None, label_set=label_set,
                   input_height=int(height), input_width=int(width), scales=tuple(settings["scales"]),
                   backend=settings["backend"], precision=settings["precision"], device=settings["device"],
                   output_resolution=settings["output_resolution"], **fields)

    def to_bench_fields(self) -> dict[str, Any]:
        """The fields of a ``rtseg bench`` row that say what was measured."""
        return {
            "model": self.model,
            "height": self.input_height,
            "width": self.input_width,
            "backend": self.backend,
            "precision": self.precision,
            "device": self.device,
            "scales": list(self.scales),
            "output_resolution": self.output_resolution,
        }

    # Node status -------------------------------------------------------------------------------

    def label_info_fields(self, weights_sha256: str, label_set: LabelSet | None = None) -> dict[str, Any]:
        """The JSON document of the node's latched ``segmentation/label_info_meta`` topic (``std_msgs/String``).

        Args:
            weights_sha256: what identifies the weights in service: the file's sha256, or that of
                the random initial weights when there is none.
            label_set: the set served (``Segmenter.label_set``); ``None`` resolves it again
                (:meth:`resolved_label_set`).
        """
        label_set = label_set or self.resolved_label_set()
        return {
            "format": LABEL_INFO_FORMAT,
            "label_set": label_set.name,
            "num_classes": self.num_classes if self.num_classes is not None else label_set.num_classes,
            "ignore_index": label_set.ignore_index,
            "classes": [{"id": i, "name": name, "color": list(color)}
                        for i, (name, color) in enumerate(zip(label_set.class_names, label_set.colors))],
            "model": self.model,
            "scales": list(self.scales),
            "weights": self.weights or "",
            "weights_sha256": weights_sha256,
            "input_size": [self.input_height, self.input_width],
            "output_resolution": self.output_resolution,
            "backend": self.backend,
            "precision": self.precision,
            "device": self.device,
        }

    def diagnostic_fields(self) -> dict[str, str]:
        """The engine's key/values on the node's ``/diagnostics`` status (strings, as diagnostic_msgs wants)."""
        return {
            "model": self.model,
            "backend": self.backend,
            "precision": self.precision,
            "device": self.device,
            "input_size": f"{self.input_height}x{self.input_width}",  # HxW like everywhere else
            "scales": ",".join(map(str, self.scales)),
            "weights": self.weights or "untrained (random)",
        }

    def validate(self) -> None:
        """Check that the settings fit together; raise :class:`ConfigError` with the reason if not.

        Needs nothing but the settings; :meth:`check` also checks this machine.
        """
        if self.model not in MODEL_NAMES:
            raise ConfigError(f"unknown model {self.model!r}; choose one of {', '.join(MODEL_NAMES)}")
        # An empty label_set takes the checkpoint's, which check_runtime's caller (the Segmenter) reads.
        label_set = None
        if self.label_set or self.weights is None:
            try:
                label_set = _label_set(self.label_set or DEFAULT_LABEL_SET)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if self.num_classes is not None:
            if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 1:
                raise ConfigError(f"num_classes must be a positive integer, got {self.num_classes!r}")
            # Labels are published as uint8 and 255 is the ignore value.
            if self.num_classes >= IGNORE_INDEX:
                raise ConfigError(
                    f"num_classes must be below {IGNORE_INDEX} to fit uint8 labels, got {self.num_classes}")
            if label_set is not None and self.num_classes != label_set.num_classes:
                raise ConfigError(
                    f"num_classes={self.num_classes} does not match label set {label_set.name!r} "
                    f"({label_set.num_classes} classes)")
        self._validate_size()
        self._validate_scales()
        if isinstance(self.max_batch, bool) or not isinstance(self.max_batch, int) or self.max_batch < 1:
            raise ConfigError(f"max_batch must be an integer of at least 1, got {self.max_batch!r}")
        if self.backend not in BACKENDS and self.backend != AUTO_BACKEND:
            raise ConfigError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)} or "
                              f"{AUTO_BACKEND}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.device == AUTO_DEVICE:
            pass  # checked below, against the devices it may resolve to
        elif _OPENVINO_DEVICE_PATTERN.match(self.device):
            if self.backend not in ("openvino", AUTO_BACKEND):
                raise ConfigError(
                    f"unknown device {self.device!r} for the {self.backend} backend: gpu, gpu.N and npu name "
                    "Intel devices, which only the openvino backend runs; NVIDIA GPUs are cuda or cuda:N")
        elif not _DEVICE_PATTERN.match(self.device):
            raise ConfigError(f"unknown device {self.device!r}; use cpu, cuda, cuda:N or {AUTO_DEVICE} "
                              "(gpu, gpu.N or npu: an Intel GPU/NPU with the openvino backend)")
        try:
            fixed_output_size(self.output_resolution)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.device == AUTO_DEVICE:
            self._validate_auto_device()
        else:
            self._validate_on_device()

    def _validate_on_device(self) -> None:
        """Backend, precision and (a concrete) device fit together."""
        if self.backend == AUTO_BACKEND:
            self._validate_auto_backend()
        else:
            self._validate_backend_combination()

    def _validate_auto_device(self) -> None:
        """``auto`` is valid if the settings fit one of the devices it resolves to (which one is the
        machine's business: :func:`resolve_device`)."""
        reasons: list[str] = []
        for device in ("cuda", "cpu"):
            try:
                dataclasses.replace(self, device=device)._validate_on_device()
            except ConfigError as exc:
                reasons.append(f"{device}: {exc}")
            else:
                return
        raise ConfigError(f"device {AUTO_DEVICE}: neither device takes these settings ({'; '.join(reasons)})")

    def _validate_auto_backend(self) -> None:
        """``auto`` is valid if one backend of its preference list takes the other settings."""
        reasons: dict[str, list[str]] = {}  # reason -> backends, so a shared reason is said once
        for backend in backend_preference(self):
            try:
                dataclasses.replace(self, backend=backend)._validate_backend_combination()
            except ConfigError as exc:
                reasons.setdefault(str(exc), []).append(backend)
            else:
                return
        details = "; ".join(f"{', '.join(backends)}: {reason}" for reason, backends in reasons.items())
        raise ConfigError(f"backend {AUTO_BACKEND}: no backend takes these settings ({details})")

    def _validate_size(self) -> None:
        for name in ("input_height", "input_width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
            if value % SIZE_MULTIPLE:
                lower = max(SIZE_MULTIPLE, value - value % SIZE_MULTIPLE)
                raise ConfigError(
                    f"{name}={value} is not divisible by {SIZE_MULTIPLE} (the networks' output stride); "
                    f"use {lower} or {lower + SIZE_MULTIPLE}")

    def _validate_scales(self) -> None:
        try:
            scales = normalize_scales(self.scales)
        except ValueError as exc:
            raise ConfigError(f"unknown scale setting: {exc}") from None
        if self.model == "atonet" and scales != ALL_SCALES:
            raise ConfigError(
                f"scales select MFARANet stages; atonet has none, leave scales at the default {ALL_SCALES}")
        self.scales = scales

    def _validate_backend_combination(self) -> None:
        openvino_accelerator = bool(_OPENVINO_DEVICE_PATTERN.match(self.device))
        if self.precision == "int8":
            if self.backend not in ("tensorrt", "openvino"):
                raise ConfigError(
                    f"int8 needs the tensorrt backend on a CUDA device or the openvino backend on a CPU or Intel "
                    f"GPU/NPU (got backend {self.backend!r} on {self.device}); use one of them, or fp32")
            if not self.calibration_data:
                raise ConfigError("int8 needs calibration_data: a folder of images or a rosbag2 of camera frames")
            if self.calibration_frames < 1:
                raise ConfigError(f"calibration_frames must be at least 1, got {self.calibration_frames}")
        if self.precision == "fp16" and not self.is_cuda and not (self.backend == "openvino" and openvino_accelerator):
            raise ConfigError(
                f"fp16 is not supported on {self.device}: CPU kernels for half precision convolution are "
                "missing or slower than fp32; use fp32 (or int8 with the openvino backend) on CPU, or a cuda device")
        if self.backend == "openvino" and self.is_cuda:
            raise ConfigError(
                f"the openvino backend runs on cpu or an Intel gpu/npu, not on {self.device}; "
                "use the tensorrt or onnxruntime backend on an NVIDIA GPU")
        if self.backend == "tensorrt" and not self.is_cuda:
            raise ConfigError(
                f"the tensorrt backend needs CUDA and torch_tensorrt, but device is {self.device!r}; "
                "use device='cuda' on a machine with an NVIDIA GPU, or another backend")
        if self.backend == "onnxruntime" and self.precision != "fp32":
            raise ConfigError(
                f"the onnxruntime backend runs the fp32 export only (asked for {self.precision}); "
                "use the tensorrt backend for fp16/int8")


def _label_set(name: str) -> LabelSet:
    # Imported on use: the label sets bring numpy and OpenCV, which describing a config does not need.
    from rtseg_ros.datasets.labels import get_label_set

    return get_label_set(name)


def _resolve_label_set(reference: str, weights: str | None) -> LabelSet:
    """``reference`` (or, empty, the checkpoint's set, else the default), checked against the checkpoint."""
    from rtseg_ros.datasets.labels import LabelSetError, require_same_classes

    recorded, recorded_classes = None, None
    path = weights_file(weights)
    if path is not None:
        from rtseg_ros.nets.checkpoint import checkpoint_label_set

        recorded, recorded_classes = checkpoint_label_set(path)
    if not reference:
        if recorded is not None:
            return recorded
        default = _label_set(DEFAULT_LABEL_SET)
        if recorded_classes not in (None, default.num_classes):
            raise LabelSetError(
                f"the checkpoint {weights} has {recorded_classes} classes and records no label set; set label_set "
                f"to a label set YAML file with its {recorded_classes} classes")
        return default
    given = _label_set(reference)
    if recorded is not None:
        require_same_classes(recorded, given, expected_from=f"the checkpoint {weights}",
                             given_from=f"label_set {reference!r}")
    elif recorded_classes is not None and recorded_classes != given.num_classes:
        raise LabelSetError(f"the checkpoint {weights} has {recorded_classes} classes, but label_set {reference!r} "
                            f"is {given.summary()}")
    return given


def weights_file(weights: str | None) -> Path | None:
    """The file a ``weights`` setting names (:func:`rtseg_ros.nets.weights.resolve_weights`: a path, a file
    name in the models folders or the user cache, a manifest entry); ``None`` for no weights.

    Raises:
        ConfigError: no such file; the message lists where it looked.
    """
    if not weights:
        return None
    from rtseg_ros.nets.checkpoint import WeightsError
    from rtseg_ros.nets.weights import resolve_weights

    try:
        return resolve_weights(weights)
    except WeightsError as exc:
        raise ConfigError(str(exc)) from None


# Optional fields (None by default) are empty strings as node parameters.
_OPTIONAL_FIELDS = frozenset(field.name for field in dataclasses.fields(SegmenterConfig) if field.default is None)


def _parameter_value(spec: ParameterSpec, value: Any) -> Any:
    """A config field's value typed as its node parameter."""
    if isinstance(spec.default, list):
        return list(value)
    if value is None and isinstance(spec.default, str):
        return ""
    return value


def _field_value(spec: ParameterSpec, value: Any) -> Any:
    """A node parameter's value typed as its config field (validation comes later and names bad values)."""
    if isinstance(spec.default, list):
        # rclpy hands integer arrays over as array.array; a single value stands for a one-element list.
        return (value,) if isinstance(value, (bool, int, float, str)) else tuple(value)
    if value == "" and spec.config_field in _OPTIONAL_FIELDS:
        return None
    return value

def check_runtime(config: SegmenterConfig) -> None:
    """Check that this machine can run ``config``; raise :class:`ConfigError` if it cannot."""
    import torch

    if config.is_cuda:
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {config.device!r} asked for, but CUDA is not available "
                f"(torch {torch.__version__}); use device='cpu'")
        index = int(config.device.split(":")[1]) if ":" in config.device else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {config.device!r} does not exist; {torch.cuda.device_count()} CUDA device(s) found")
    if config.backend == "tensorrt" and importlib.util.find_spec("torch_tensorrt") is None:
        raise ConfigError(
            "the tensorrt backend needs CUDA and torch_tensorrt, which is not installed; "
            "pip install 'rtseg_ros[tensorrt]' (torch-tensorrt matching your torch)")
    if config.precision == "int8" and config.backend == "tensorrt" and importlib.util.find_spec("modelopt") is None:
        raise ConfigError("int8 calibration needs NVIDIA ModelOpt: pip install nvidia-modelopt")
    if config.backend == "compile" and not config.is_cuda and not any(
            shutil.which(cxx) for cxx in (os.environ.get("CXX", "c++"), "g++", "clang++")):
        raise ConfigError("the compile backend on CPU needs a C++ compiler (inductor builds C++ kernels); "
                          "install g++ or use the torch backend")
    if config.backend == "onnxruntime":
        for module in ("onnxruntime", "onnx", "onnxscript"):
            if importlib.util.find_spec(module) is None:
                raise ConfigError(
                    f"the onnxruntime backend needs {module}, which is not installed; pip install 'rtseg_ros[onnx]'")
        if config.is_cuda:
            import onnxruntime

            providers = onnxruntime.get_available_providers()
            if not {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(providers):
                raise ConfigError(
                    f"onnxruntime on {config.device} needs the CUDA or TensorRT execution provider, but this "
                    f"onnxruntime has only {sorted(providers)}; install onnxruntime-gpu or use device='cpu'")
    if config.backend == "openvino":
        _check_openvino(config)
    weights_file(config.weights)  # a weights name that finds no file stops here, with where it looked
    if config.calibration_data is not None and not Path(config.calibration_data).expanduser().exists():
        raise ConfigError(f"calibration data not found: {config.calibration_data}")


def _check_openvino(config: SegmenterConfig) -> None:
    """OpenVINO (and NNCF for int8) importable, and the asked-for Intel GPU/NPU present."""
    needed = ("openvino", "nncf") if config.precision == "int8" else ("openvino",)
    for module in needed:
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"the openvino backend needs {module}, which is not installed; "
                              "pip install 'rtseg_ros[openvino]'")
    if not _OPENVINO_DEVICE_PATTERN.match(config.device):
        return
    import openvino

    wanted = openvino_device_name(config.device)
    available = list(openvino.Core().available_devices)
    if openvino_device_present(wanted, available):
        return
    kind = wanted.partition(".")[0]
    remedy = ("install Intel's GPU compute runtime (intel-opencl-icd, level-zero)" if kind == "GPU"
              else "install the Intel NPU driver")
    raise ConfigError(f"OpenVINO device {wanted} is not present (OpenVINO sees {', '.join(available) or 'none'}); "
                      f"{remedy}, or use device cpu")


def openvino_device_present(wanted: str, available: list[str]) -> bool:
    """Whether OpenVINO device ``wanted`` (``GPU``, ``GPU.1``, ``NPU``) is among ``Core().available_devices``.

    One GPU is listed as ``GPU`` and answers to ``GPU.0`` too; several are listed as ``GPU.0``, ``GPU.1``, ...
    """
    kind, _, index = wanted.partition(".")
    return (wanted in available or (kind in available and index in ("", "0"))
            or (not index and any(d.startswith(f"{kind}.") for d in available)))


def backend_preference(config: SegmenterConfig) -> tuple[str, ...]:
    """The backends ``auto`` tries for ``config``'s device, fastest first (``names.BACKEND_PREFERENCE``)."""
    if _OPENVINO_DEVICE_PATTERN.match(config.device):
        return ("openvino",)
    return BACKEND_PREFERENCE["cuda" if config.is_cuda else "cpu"]


def _choose_device(config: SegmenterConfig) -> tuple[SegmenterConfig, str, bool]:
    """For device ``auto``: (a copy on ``cuda`` or ``cpu``, why, whether a CUDA GPU was passed over)."""
    import torch

    if not torch.cuda.is_available():
        return dataclasses.replace(config, device="cpu"), "torch sees no CUDA GPU", False
    on_gpu = dataclasses.replace(config, device="cuda")
    try:
        on_gpu.check()
    except ConfigError as exc:  # e.g. the openvino backend, or onnxruntime without its CUDA provider
        return dataclasses.replace(config, device="cpu"), f"cuda cannot run these settings: {exc}", True
    return on_gpu, torch.cuda.get_device_name(0), False


def resolve_device(config: SegmenterConfig) -> SegmenterConfig:
    """``config`` itself, or for device ``auto`` a copy on ``cuda`` when torch sees a CUDA GPU and the
    other settings run there (:meth:`SegmenterConfig.check`), else on ``cpu``.

    Logs one line with the choice: INFO, or WARNING when a CUDA GPU is present but not used, with why.
    """
    if config.device != AUTO_DEVICE:
        return config
    chosen, reason, passed_over = _choose_device(config)
    if passed_over:
        LOG.warning("device %s: using cpu although a CUDA GPU is present; %s (set device to cpu to say so)",
                    AUTO_DEVICE, reason)
    else:
        LOG.info("device %s: using %s (%s)", AUTO_DEVICE, chosen.device, reason)
    return chosen


def resolve_backend(config: SegmenterConfig) -> SegmenterConfig:
    """``config`` itself, or a copy with device ``auto`` (:func:`resolve_device`) and backend ``auto``
    resolved: the first backend of :func:`backend_preference` this machine can run.

    Tries :func:`backend_preference` in order with :meth:`SegmenterConfig.check`. Logs one line:
    the choice, and when a faster backend was passed over, which ones and why (a missing install,
    a precision it cannot run).

    Raises:
        ConfigError: no backend of the list can run these settings here; each one's reason is given.
    """
    config = resolve_device(config)
    if config.backend != AUTO_BACKEND:
        return config
    skipped: list[str] = []
    for backend in backend_preference(config):
        candidate = dataclasses.replace(config, backend=backend)
        try:
            candidate.check()
        except ConfigError as exc:
            skipped.append(f"{backend} ({exc})")
            continue
        if skipped:
            LOG.warning("backend %s: falling back to %s; skipped %s", AUTO_BACKEND, backend, "; ".join(skipped))
        else:
            LOG.info("backend %s: using %s, the first of %s", AUTO_BACKEND, backend,
                     " > ".join(backend_preference(config)))
        return candidate
    raise ConfigError(f"backend {AUTO_BACKEND}: no backend can run these settings here: {'; '.join(skipped)}")
