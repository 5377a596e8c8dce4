"""Segmenter settings and their validation.

Validation happens in two steps. :meth:`SegmenterConfig.validate` checks that the settings make sense
together and needs nothing but the settings; :func:`check_runtime` then checks that this machine can
run them (CUDA present, optional libraries importable). Both raise :class:`ConfigError` with a reason
a user can act on, before any weights are loaded or anything is compiled.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from rtseg_ros.datasets.labels import IGNORE_INDEX, get_label_set

BACKENDS = ("torch", "compile", "tensorrt", "onnxruntime")
PRECISIONS = ("fp32", "fp16", "int8")
OUTPUT_RESOLUTIONS = ("input", "network")
ALL_SCALES = (1, 2, 3, 4)
# Both networks downsample by 32 in the backbone; other sizes either fail (ATONet) or get
# misaligned feature maps, so the network input is kept to multiples of 32.
SIZE_MULTIPLE = 32

_DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?)$")


class ConfigError(ValueError):
    """A segmenter setting, or a combination of settings, that cannot work."""


def default_cache_dir() -> Path:
    """Where exported and compiled engines are kept: ``$RTSEG_ROS_CACHE``, else ``~/.cache/rtseg_ros``."""
    explicit = os.environ.get("RTSEG_ROS_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "rtseg_ros"


@dataclass
class SegmenterConfig:
    """Everything that decides how frames are segmented.

    Attributes:
        model: network name, one of ``mfaranet`` or ``atonet``.
        weights: checkpoint path; ``None`` runs randomly initialised weights (a warning is logged).
        label_set: label set the classes belong to (``cityscapes`` or ``camvid``).
        num_classes: number of output classes; ``None`` takes the label set's count.
        input_height: network input height in pixels (a multiple of 32).
        input_width: network input width in pixels (a multiple of 32).
        scales: MFARANet stages fused into the prediction; fewer stages skip work.
        backend: ``torch`` (eager), ``compile`` (torch.compile), ``tensorrt`` or ``onnxruntime``.
        precision: ``fp32``, ``fp16`` (CUDA only) or ``int8`` (tensorrt only, calibrated).
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        output_resolution: ``input`` gives labels at each frame's own size, ``network`` at the
            network input size.
        cache_dir: where exports and engines are cached; ``None`` uses :func:`default_cache_dir`.
        calibration_data: folder of images or a rosbag2 for int8 calibration.
        calibration_frames: how many frames of ``calibration_data`` to calibrate on.
        dla_core: Jetson DLA core for the tensorrt backend (layers it cannot run fall back to the GPU).
    """

    model: str = "mfaranet"
    weights: str | None = None
    label_set: str = "cityscapes"
    num_classes: int | None = None
    input_height: int = 512
    input_width: int = 1024
    scales: tuple[int, ...] = ALL_SCALES
    backend: str = "torch"
    precision: str = "fp32"
    device: str = "cpu"
    output_resolution: str = "input"
    cache_dir: str | None = None
    calibration_data: str | None = None
    calibration_frames: int = 64
    dla_core: int | None = None

    @property
    def network_size(self) -> tuple[int, int]:
        """(height, width) of the network input."""
        return (self.input_height, self.input_width)

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()

    def resolved_num_classes(self) -> int:
        return self.num_classes if self.num_classes is not None else get_label_set(self.label_set).num_classes

    def validate(self) -> None:
        """Check that the settings fit together; raise :class:`ConfigError` with the reason if not."""
        from rtseg_ros.nets import MODEL_NAMES

        if self.model not in MODEL_NAMES:
            raise ConfigError(f"unknown model {self.model!r}; choose one of {', '.join(MODEL_NAMES)}")
        try:
            label_set = get_label_set(self.label_set)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.num_classes is not None:
            if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 1:
                raise ConfigError(f"num_classes must be a positive integer, got {self.num_classes!r}")
            # Labels are published as uint8 and 255 is the ignore value.
            if self.num_classes >= IGNORE_INDEX:
                raise ConfigError(
                    f"num_classes must be below {IGNORE_INDEX} to fit uint8 labels, got {self.num_classes}")
            if self.num_classes != label_set.num_classes:
                raise ConfigError(
                    f"num_classes={self.num_classes} does not match label set {label_set.name!r} "
                    f"({label_set.num_classes} classes)")
        self._validate_size()
        self._validate_scales()
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if not _DEVICE_PATTERN.match(self.device):
            raise ConfigError(f"unknown device {self.device!r}; use cpu, cuda or cuda:N")
        if self.output_resolution not in OUTPUT_RESOLUTIONS:
            raise ConfigError(
                f"output_resolution must be one of {', '.join(OUTPUT_RESOLUTIONS)}, got {self.output_resolution!r}")
        self._validate_backend_combination()

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
        from rtseg_ros.nets import normalize_scales

        try:
            scales = normalize_scales(self.scales)
        except ValueError as exc:
            raise ConfigError(f"unknown scale setting: {exc}") from None
        if self.model == "atonet" and scales != ALL_SCALES:
            raise ConfigError(
                "scales select MFARANet stages; atonet has none, leave scales at the default (1, 2, 3, 4)")
        self.scales = scales

    def _validate_backend_combination(self) -> None:
        if self.precision == "int8":
            if self.backend != "tensorrt":
                raise ConfigError(
                    f"int8 needs the tensorrt backend on a CUDA device (got backend {self.backend!r} on "
                    f"{self.device}); int8 on CPU is not supported, use fp32")
            if not self.calibration_data:
                raise ConfigError("int8 needs calibration_data: a folder of images or a rosbag2 of camera frames")
            if self.calibration_frames < 1:
                raise ConfigError(f"calibration_frames must be at least 1, got {self.calibration_frames}")
        if self.precision == "fp16" and not self.is_cuda:
            raise ConfigError(
                f"fp16 is not supported on {self.device}: CPU kernels for half precision convolution are "
                "missing or slower than fp32; use fp32 on CPU or a cuda device")
        if self.backend == "tensorrt" and not self.is_cuda:
            raise ConfigError(
                f"the tensorrt backend needs CUDA and torch_tensorrt, but device is {self.device!r}; "
                "use device='cuda' on a machine with an NVIDIA GPU, or another backend")
        if self.backend == "onnxruntime" and self.precision != "fp32":
            raise ConfigError(
                f"the onnxruntime backend runs the fp32 export only (asked for {self.precision}); "
                "use the tensorrt backend for fp16/int8")
        if self.dla_core is not None:
            if self.backend != "tensorrt":
                raise ConfigError("dla_core applies to the tensorrt backend only (Jetson DLA)")
            if isinstance(self.dla_core, bool) or not isinstance(self.dla_core, int) or self.dla_core < 0:
                raise ConfigError(f"dla_core must be a non-negative integer, got {self.dla_core!r}")
            if self.precision == "fp32":
                raise ConfigError("a DLA runs fp16 or int8 only; set precision to fp16 or int8")


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
    if config.precision == "int8" and importlib.util.find_spec("modelopt") is None:
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
    if config.weights is not None and not Path(config.weights).expanduser().is_file():
        raise ConfigError(f"weights file not found: {config.weights}")
    if config.calibration_data is not None and not Path(config.calibration_data).expanduser().exists():
        raise ConfigError(f"calibration data not found: {config.calibration_data}")
