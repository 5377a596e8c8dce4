"""``Segmenter``: camera frames in, class ids (and confidence) out, over any backend."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from rtseg_ros.datasets.labels import LabelSet
from rtseg_ros.engines.base import EngineSpec
from rtseg_ros.engines.cache import state_dict_sha256
from rtseg_ros.engines.config import SegmenterConfig, resolve_backend
from rtseg_ros.engines.preprocessing import Preprocessor, frame_to_device, to_host
from rtseg_ros.engines.registry import create_engine

LOG = logging.getLogger(__name__)


def set_cpu_threads(threads: int) -> int:
    """Run the networks of this process on ``threads`` CPU threads (0: leave the default, all cores).

    Every backend takes its thread count from torch's (ONNX Runtime's intra-op threads, OpenVINO's
    ``INFERENCE_NUM_THREADS``), so this is the one knob; call it before building a Segmenter.
    Returns the count in effect.

    Raises:
        ValueError: a negative count.
    """
    if threads < 0:
        raise ValueError(f"cpu threads must be 0 (default) or more, got {threads}")
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


@dataclass
class SegmentationResult:
    """The segmentation of one frame.

    Attributes:
        labels: HxW uint8 class ids (train ids of the label set).
        confidence: HxW float32 maximum softmax probability in [0, 1], or ``None`` unless asked for.
        timings_ms: ``preprocess`` (upload, resize, normalise), ``inference`` (the network, its
            final resize to the output size, argmax and confidence: one graph, fused where the
            backend compiles it), ``postprocess`` (download to numpy) and ``total``, in milliseconds.
    """

    labels: np.ndarray
    confidence: np.ndarray | None
    timings_ms: dict[str, float] = field(default_factory=dict)


class Segmenter:
    """Segments camera frames with one network on one backend.

    Construction validates the settings (:class:`~rtseg_ros.engines.ConfigError` on a bad
    combination or a missing capability), loads the weights and builds (or loads from the cache)
    the engine. ``segment`` may then be called for every frame, from one thread at a time.

    Attributes:
        config: the validated settings.
        label_set: the label set of the output ids.
        num_classes: the number of classes the network predicts.
        engine: the backend running the network.
    """

    def __init__(self, config: SegmenterConfig):
        from rtseg_ros.nets import build_model, load_weights, weights_hash

        config = resolve_backend(config)  # backend 'auto': the first that runs here, logged
        config.check()
        self.config = config
        # The config's label set, or the one the checkpoint records; a mismatch between them stops here.
        self.label_set: LabelSet = config.resolved_label_set()
        self.num_classes = config.num_classes if config.num_classes is not None else self.label_set.num_classes
        self.device = torch.device(config.torch_device)

        model = build_model(config.model, num_classes=self.num_classes, scales=config.scales)
        if config.weights is None:
            LOG.warning("NO WEIGHTS GIVEN: %s runs with random initial weights and its labels are meaningless; "
                        "set weights to a checkpoint", config.model)
            weights_id = state_dict_sha256(model)
        else:
            load_weights(model, config.weights)
            weights_id = weights_hash(config.weights)
        model.eval()
        self.weights_id = weights_id
        self._prepared: frozenset[tuple[tuple[int, int], bool]] = frozenset()  # by prepare()
        self.engine = create_engine(EngineSpec(config, model, weights_id, self.num_classes))
        self._preprocess = Preprocessor(config.network_size, self.device, self.engine.input_dtype,
                                        channels_last=self.engine.channels_last)
        LOG.info("segmenter ready: %s %s on %s (%s, %s), input %dx%d, scales %s", config.model, config.backend,
                 config.device, config.precision, self.engine.describe(), config.input_height, config.input_width,
                 list(config.scales))

    def output_size(self, frame_size: tuple[int, int]) -> tuple[int, int]:
        """Size of the labels for a frame of ``frame_size`` (height, width)."""
        return tuple(frame_size) if self.config.output_resolution == "input" else self.config.network_size

    def warmup(self, frame_size: tuple[int, int] | None = None, want_confidence: bool = False) -> None:
        """Build or load the engine for ``frame_size`` frames (default: the network size) and run it once.

        Compiling backends build per output size and per with/without confidence; warming up with
        the camera's frame size moves that cost before the first frame.
        """
        size = frame_size or self.config.network_size
        self.prepare(self.output_size(size), want_confidence)

    def prepare(self, output_size: tuple[int, int], with_confidence: bool = False) -> None:
        """Build or load the engine variant for labels at ``output_size`` (and confidence) and run it once.

        May run in a background thread while ``segment`` serves variants already prepared
        (:meth:`is_prepared`); the node builds a new frame size or the confidence variant that way.
        """
        key = ((int(output_size[0]), int(output_size[1])), bool(with_confidence))
        self.engine.prepare(key[0], with_confidence=key[1])
        self._prepared = self._prepared | {key}  # a new set: readers on other threads see old or new

    @property
    def prepared(self) -> frozenset[tuple[tuple[int, int], bool]]:
        """The (output size, with confidence) variants that :meth:`prepare` has made ready."""
        return self._prepared

    def is_prepared(self, output_size: tuple[int, int], with_confidence: bool) -> bool:
        """Whether ``segment`` at ``output_size`` runs without building anything first."""
        if not self.engine.builds_per_variant:
            return True
        return ((int(output_size[0]), int(output_size[1])), bool(with_confidence)) in self.prepared

    def segment(self, frame: np.ndarray | torch.Tensor, color_order: str = "rgb",
                want_confidence: bool = False, output_size: tuple[int, int] | None = None) -> SegmentationResult:
        """Segment one HxWx3 uint8 frame (numpy, or a tensor on any device) in ``color_order``.

        Args:
            output_size: (height, width) of the labels; default :meth:`output_size` of the frame's size.

        Raises:
            FrameError: the frame is not HxWx3 uint8 or the colour order is unknown.
        """
        sync = torch.cuda.synchronize if self.device.type == "cuda" else _no_sync
        start = time.perf_counter()
        with torch.inference_mode():
            pixels = frame_to_device(frame, self.device)
            image = self._preprocess(pixels, color_order)
            sync()
            preprocessed = time.perf_counter()
            size = output_size or self.output_size(tuple(pixels.shape[:2]))
            labels, confidence = self.engine.run(image, size, want_confidence)
            sync()
            inferred = time.perf_counter()
            labels_host = to_host(labels)
            confidence_host = to_host(confidence) if confidence is not None else None
        done = time.perf_counter()
        timings = {
            "preprocess": (preprocessed - start) * 1e3,
            "inference": (inferred - preprocessed) * 1e3,
            "postprocess": (done - inferred) * 1e3,
            "total": (done - start) * 1e3,
        }
        return SegmentationResult(labels_host, confidence_host, timings)


def _no_sync() -> None:
    pass
