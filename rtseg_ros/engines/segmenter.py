"""``Segmenter``: camera frames in, class ids (and confidence) out, over any backend."""
from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from rtseg_ros.datasets.labels import LabelSet
from rtseg_ros.engines.base import EngineSpec, SegmentationHead
from rtseg_ros.engines.cache import state_dict_sha256
from rtseg_ros.engines.config import RANDOM_WEIGHTS_SEED, SegmenterConfig, resolve_backend, weights_file
from rtseg_ros.engines.preprocessing import COLOR_ORDERS, FrameError, Preprocessor, frame_to_device, to_host
from rtseg_ros.engines.registry import create_engine
from rtseg_ros.names import fixed_output_size

LOG = logging.getLogger(__name__)


def set_cpu_threads(threads: int) -> int:
    """Run the networks of this process on ``threads`` CPU threads (0: every usable core but one, at least
    one: :func:`rtseg_ros.machine.default_cpu_threads`).

    Every backend takes its thread count from torch's (ONNX Runtime's intra-op threads, OpenVINO's
    ``INFERENCE_NUM_THREADS``), so this is the one knob; call it before building a Segmenter.
    Returns the count in effect.

    Raises:
        ValueError: a negative count.
    """
    from rtseg_ros.machine import default_cpu_threads

    if threads < 0:
        raise ValueError(f"cpu threads must be 0 (default) or more, got {threads}")
    torch.set_num_threads(threads or default_cpu_threads())
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


@dataclass(frozen=True)
class BatchFrame:
    """One frame of a :meth:`Segmenter.segment_batch` call.

    Attributes:
        pixels: HxWx3 uint8 frame (numpy, or a tensor on any device).
        color_order: ``rgb`` or ``bgr``.
        output_size: (height, width) of its labels; ``None``: :meth:`Segmenter.output_size` of its size.
    """

    pixels: np.ndarray | torch.Tensor
    color_order: str = "rgb"
    output_size: tuple[int, int] | None = None


class BatchFrameError(FrameError):
    """A frame of a batch that cannot be segmented; ``index`` is its place in the list given.

    Raised before anything runs, so the caller can drop that frame and segment the others.
    """

    def __init__(self, index: int, message: str):
        super().__init__(f"frame {index} of the batch: {message}")
        self.index = index


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

        weights = weights_file(config.weights)
        if weights is None:
            LOG.warning("NO WEIGHTS GIVEN: %s runs with random initial weights and its labels are meaningless; "
                        "set weights to a checkpoint", config.model)
            # Always the same random weights: the engine cache key (their hash) then matches from run to run.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_WEIGHTS_SEED)
                model = build_model(config.model, num_classes=self.num_classes, scales=config.scales)
            weights_id = state_dict_sha256(model)
        else:
            config = dataclasses.replace(config, weights=str(weights))
            self.config = config
            model = build_model(config.model, num_classes=self.num_classes, scales=config.scales)
            load_weights(model, weights)
            weights_id = weights_hash(weights)
        model.eval()
        self.weights_id = weights_id
        # A copy the backend never exports, compiles or converts: `segment(eager=True)` serves frames
        # with it while the backend's engine is still being built (the eager backend is its own).
        # channels_last as the torch backend's: the logits come out channels-last too, which makes the
        # per-pixel argmax over classes a contiguous reduction (46 -> 6 ms for 19x480x640 on one core).
        self._eager_model = (copy.deepcopy(model).to(self.device, memory_format=torch.channels_last)
                             if config.backend != "torch" else None)
        self._prepared: frozenset[tuple[tuple[int, int], bool]] = frozenset()  # by prepare()
        self.engine = create_engine(EngineSpec(config, model, weights_id, self.num_classes))
        if self._eager_model is None:
            self._eager_model = self.engine.model  # type: ignore[attr-defined]  # TorchEngine's own
        self._preprocess = Preprocessor(config.network_size, self.device, self.engine.input_dtype,
                                        channels_last=self.engine.channels_last)
        LOG.info("segmenter ready: %s %s on %s (%s, %s), input %dx%d, scales %s", config.model, config.backend,
                 config.device, config.precision, self.engine.describe(), config.input_height, config.input_width,
                 list(config.scales))

    def output_size(self, frame_size: tuple[int, int]) -> tuple[int, int]:
        """(height, width) of the labels for a frame of ``frame_size`` (height, width): the frame's own
        (``output_resolution`` ``input``), the network input's (``network``) or the fixed ``WIDTHxHEIGHT``."""
        fixed = fixed_output_size(self.config.output_resolution)
        if fixed is not None:
            return fixed
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
                want_confidence: bool = False, output_size: tuple[int, int] | None = None,
                eager: bool = False) -> SegmentationResult:
        """Segment one HxWx3 uint8 frame (numpy, or a tensor on any device) in ``color_order``.

        Args:
            output_size: (height, width) of the labels; default :meth:`output_size` of the frame's size.
            eager: run the network in eager PyTorch (same pre- and post-processing) instead of the
                backend: nothing is built first, so a frame can be served while :meth:`is_prepared`
                is still false for its size.

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
            if eager:
                labels, confidence = self._run_eager(image, size, want_confidence)
            else:
                labels, confidence = self.engine.run(image, size, want_confidence)
            sync()
            inferred = time.perf_counter()
            labels_host = to_host(labels)
            confidence_host = to_host(confidence) if confidence is not None else None
        done = time.perf_counter()
        return SegmentationResult(labels_host, confidence_host, _timings_ms(start, preprocessed, inferred, done))


    # Batches of frames (several cameras) -------------------------------------------------------
    @property
    def max_batch(self) -> int:
        """The most frames the network runs at once (``config.max_batch``)."""
        return self.config.max_batch

    def prepare_batch(self, output_sizes: Sequence[tuple[int, int]] = (), with_confidence: bool = False) -> None:
        """Build or load what batches of 1 to :attr:`max_batch` frames need, and run it once.

        That is the batched network and, for each of ``output_sizes`` (default: the network size when
        labels come at a fixed size), the per-frame finish (final resize, argmax, confidence). A size
        not prepared is built on its first :meth:`segment_batch` (seconds, on backends that compile).
        Safe on a background thread while :meth:`segment` serves.
        """
        sizes = list(output_sizes)
        if not sizes and self.config.output_resolution != "input":
            sizes = [self.output_size(self.config.network_size)]
        self.engine.prepare_batch(sizes, with_confidence)

    @property
    def batch_prepared(self) -> bool:
        """Whether :meth:`segment_batch` runs without building its network first (:meth:`prepare_batch`)."""
        return self.engine.batch_ready

    def is_batch_prepared(self, output_sizes: Sequence[tuple[int, int]], with_confidence: bool) -> bool:
        """Whether :meth:`segment_batch` builds nothing for frames with labels at ``output_sizes``."""
        return self.engine.batch_ready and all(self.engine.finish_ready(size, with_confidence)
                                               for size in output_sizes)

    def segment_batch(self, frames: Sequence[BatchFrame], want_confidence: bool = False) -> list[SegmentationResult]:
        """Segment several frames with one network run per :attr:`max_batch` of them.

        Frames may differ in size and colour order: each is resized to the network size on its own,
        the network runs on the batch, and each frame's logits are resized to its own output size
        for its argmax. Results are in the order of ``frames``, each as :meth:`segment` would give
        it (labels equal; confidence to float rounding). Every result's ``timings_ms`` holds its
        batch's ``preprocess``, ``inference``, ``postprocess`` and ``total`` and ``batch_size``.

        Raises:
            BatchFrameError: a frame is not HxWx3 uint8 or its colour order is unknown; nothing has run.
        """
        uploaded = self._upload(frames)
        results: list[SegmentationResult] = []
        for start in range(0, len(frames), self.max_batch):
            chunk = range(start, min(start + self.max_batch, len(frames)))
            results.extend(self._start_chunk([frames[i] for i in chunk], [uploaded[i] for i in chunk],
                                             want_confidence).finish())
        return results

    def start_batch(self, frames: Sequence[BatchFrame], want_confidence: bool = False) -> "BatchInFlight":
        """The first half of :meth:`segment_batch` for at most :attr:`max_batch` frames: preprocessing and
        the network, here; the returned :class:`BatchInFlight`'s ``finish`` does the rest (each frame's
        resize, argmax and download) on any thread, and on a CPU it may run while the next batch's
        network runs on the other cores. ``start_batch(frames).finish()`` equals ``segment_batch(frames)``.

        Raises:
            BatchFrameError: a frame is not HxWx3 uint8 or its colour order is unknown; nothing has run.
            ValueError: more than :attr:`max_batch` frames, or none.
        """
        if not 1 <= len(frames) <= self.max_batch:
            raise ValueError(f"start_batch takes 1 to max_batch={self.max_batch} frames, got {len(frames)}")
        return self._start_chunk(list(frames), self._upload(frames), want_confidence)

    def _upload(self, frames: Sequence[BatchFrame]) -> list[torch.Tensor]:
        uploaded = []
        for index, frame in enumerate(frames):
            try:
                if frame.color_order not in COLOR_ORDERS:
                    raise FrameError(f"color_order must be 'rgb' or 'bgr', got {frame.color_order!r}")
                uploaded.append(frame_to_device(frame.pixels, self.device))
            except FrameError as exc:
                raise BatchFrameError(index, str(exc)) from None
        return uploaded

    def _start_chunk(self, frames: list[BatchFrame], pixels: list[torch.Tensor],
                     want_confidence: bool) -> "BatchInFlight":
        sync = torch.cuda.synchronize if self.device.type == "cuda" else _no_sync
        start = time.perf_counter()
        with torch.inference_mode():
            images = torch.cat([self._preprocess(p, f.color_order) for p, f in zip(pixels, frames)])
            if self.engine.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            sync()
            preprocessed = time.perf_counter()
            sizes = [f.output_size or self.output_size(tuple(p.shape[:2])) for p, f in zip(pixels, frames)]
            logits = self.engine.run_body(images)
            sync()
            inferred = time.perf_counter()
        network_s, preprocess_s = inferred - preprocessed, preprocessed - start
        engine = self.engine

        def finish() -> list[SegmentationResult]:
            began = time.perf_counter()
            with torch.inference_mode():
                outputs = engine.finish_batch(logits, sizes, want_confidence)
                sync()
                finished = time.perf_counter()
                hosted = [(to_host(labels), to_host(confidence) if confidence is not None else None)
                          for labels, confidence in outputs]
            done = time.perf_counter()
            # The network's and the finishes' time, not the wait between them (pipelined serving).
            timings = {**_timings_ms(0.0, preprocess_s, preprocess_s + network_s + finished - began,
                                     preprocess_s + network_s + done - began),
                       "batch_size": float(len(frames))}
            return [SegmentationResult(labels, confidence, dict(timings)) for labels, confidence in hosted]

        return BatchInFlight(finish)

    def _run_eager(self, image: torch.Tensor, output_size: tuple[int, int],
                   want_confidence: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Labels (and confidence) from the eager model, the image cast to its device and dtype."""
        model = self._eager_model
        parameter = next(model.parameters())
        head = SegmentationHead(model, (int(output_size[0]), int(output_size[1])), want_confidence)
        out = head(image.to(device=parameter.device, dtype=parameter.dtype).contiguous(
            memory_format=torch.channels_last))
        labels, confidence = (out[0], out[1]) if want_confidence else (out, None)
        return labels.to(self.device), (confidence.to(self.device) if confidence is not None else None)


@dataclass(frozen=True)
class BatchInFlight:
    """A batch whose network has run (:meth:`Segmenter.start_batch`): ``finish()`` gives its results."""

    finish: Callable[[], list[SegmentationResult]]


def _timings_ms(start: float, preprocessed: float, inferred: float, done: float) -> dict[str, float]:
    """The ``timings_ms`` of a result from its ``perf_counter`` marks."""
    return {"preprocess": (preprocessed - start) * 1e3, "inference": (inferred - preprocessed) * 1e3,
            "postprocess": (done - inferred) * 1e3, "total": (done - start) * 1e3}


def _no_sync() -> None:
    pass
