"""Frame preprocessing and labels/confidence from logits, done on the inference device.

Preprocessing matches the authors' evaluation: RGB, scaled to [0, 1] and normalised with the
ImageNet mean and std, resized with bilinear interpolation on pixel centres and no antialiasing
(OpenCV's ``INTER_LINEAR``, which their scripts use). Resizing before normalising is the same
computation up to float rounding, because both are affine per channel and bilinear weights sum to
one; resizing first touches fewer pixels when the frame is larger than the network input.

The uint8 frame is uploaded once; labels and, when asked for, confidence are downloaded once each.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
COLOR_ORDERS = ("rgb", "bgr")


class FrameError(ValueError):
    """A frame that cannot be segmented (wrong shape, dtype or colour order)."""


def frame_to_device(frame: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Check a HxWx3 uint8 frame and return it as a tensor on ``device`` (one upload at most).

    numpy frames are wrapped without a copy (read-only arrays too: they are never written to).
    Tensors already on ``device`` are used as they are.
    """
    if isinstance(frame, np.ndarray):
        if frame.dtype != np.uint8:
            raise FrameError(f"frame must be uint8, got {frame.dtype}")
        _check_shape(tuple(frame.shape))
        if any(stride < 0 for stride in frame.strides):
            frame = np.ascontiguousarray(frame)  # torch cannot wrap negative strides (e.g. x[..., ::-1])
        with warnings.catch_warnings():
            # Frames decoded from messages are often read-only buffers; nothing here writes to them.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            tensor = torch.from_numpy(frame)
    elif isinstance(frame, torch.Tensor):
        if frame.dtype != torch.uint8:
            raise FrameError(f"frame must be uint8, got {frame.dtype}")
        _check_shape(tuple(frame.shape))
        tensor = frame
    else:
        raise FrameError(f"frame must be a numpy array or a torch tensor, got {type(frame).__name__}")
    if tensor.device != device:
        tensor = tensor.to(device, non_blocking=True)
    return tensor


def _check_shape(shape: tuple[int, ...]) -> None:
    if len(shape) != 3 or shape[2] != 3:
        raise FrameError(f"frame must be HxWx3 (RGB or BGR), got shape {shape}")
    if shape[0] < 1 or shape[1] < 1:
        raise FrameError(f"frame is empty: shape {shape}")


class Preprocessor:
    """uint8 HxWx3 frame -> normalised 1x3xhxw tensor at the network size, on the frame's device."""

    def __init__(self, network_size: tuple[int, int], device: torch.device, dtype: torch.dtype = torch.float32,
                 channels_last: bool = True):
        self.network_size = tuple(network_size)
        self.dtype = dtype
        self.channels_last = channels_last
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=device)
        std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=device)
        # x_norm = (x / 255 - mean) / std = x * scale + shift, one fused multiply-add per pixel.
        self._scale = (1.0 / (255.0 * std)).view(1, 3, 1, 1)
        self._shift = (-mean / std).view(1, 3, 1, 1)

    def __call__(self, frame: torch.Tensor, color_order: str = "rgb") -> torch.Tensor:
        if color_order not in COLOR_ORDERS:
            raise FrameError(f"color_order must be 'rgb' or 'bgr', got {color_order!r}")
        # A contiguous HxWx3 frame seen as 1x3xHxW is already channels_last: no copy yet.
        image = frame.permute(2, 0, 1).unsqueeze(0)
        if color_order == "bgr":
            image = image.flip(1)
        image = image.to(dtype=torch.float32, memory_format=torch.channels_last)
        if tuple(image.shape[-2:]) != self.network_size:
            image = F.interpolate(image, size=self.network_size, mode="bilinear", align_corners=False,
                                  antialias=False)
        image = torch.addcmul(self._shift, image, self._scale)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        return image.to(dtype=self.dtype, memory_format=memory_format)


def reference_preprocess(frame_rgb: np.ndarray, network_size: tuple[int, int]) -> np.ndarray:
    """The authors' host-side preprocessing, in numpy and OpenCV (for parity checks and the baseline).

    Normalise the float image with ImageNet statistics on the 0-255 scale, then resize with
    ``cv2.INTER_LINEAR``; returns a contiguous 1x3xhxw float32 array.
    """
    import cv2

    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32) * 255.0
    std = np.asarray(IMAGENET_STD, dtype=np.float32) * 255.0
    image = (frame_rgb.astype(np.float32) - mean) / std
    height, width = network_size
    if image.shape[:2] != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None])


def labels_and_confidence(logits: torch.Tensor, want_confidence: bool, label_dtype: torch.dtype = torch.uint8,
                          labels_by_reductions: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-pixel class ids and, if asked, the max softmax probability (float32), on device.

    ``logits`` is 1xCxHxW. The max softmax probability is ``1 / sum_c exp(l_c - max_c l)``: the
    per-pixel maximum (``amax``), no full softmax tensor. Labels and maximum are two separate
    single-output reductions (``argmax``, ``amax``) rather than one two-output ``max(dim)``, which
    Torch-TensorRT does not convert when both of its outputs are used.

    Args:
        label_dtype: dtype of the class ids. uint8 for every backend's output; the TensorRT backend
            asks for int32 (the cast TensorRT converts) and casts to uint8 outside its engine.
        labels_by_reductions: compute the argmax as the smallest class index whose score equals the
            per-pixel maximum (``amax``, ``==``, ``amin``): the same labels (the first maximum, as
            ``argmax``), in reductions that OpenVINO's CPU plugin runs on its channels-last layout,
            where its ``TopK`` needs the whole tensor reordered to planar first (MFARANet, 1024x2048
            labels: the final resize and argmax went from 112 to 65 ms in fp32, 137 to 75 ms in int8).
    """
    # Reduce over the class axis of the 1xCxHxW tensor and drop the batch axis from the small results:
    # selecting ``logits[0]`` first is a Gather of the full-size logits (a reference kernel in OpenVINO).
    size = logits.shape[-2:]
    scores = logits.float() if want_confidence else logits
    best = scores.amax(dim=1, keepdim=True) if want_confidence or labels_by_reductions else None
    if labels_by_reductions:
        classes = torch.arange(logits.shape[1], dtype=torch.int32, device=logits.device).reshape(1, -1, 1, 1)
        labels = torch.where(scores == best, classes, logits.shape[1]).amin(dim=1)
    else:
        labels = logits.argmax(dim=1)
    labels = labels.reshape(size).to(label_dtype)
    if not want_confidence:
        return labels, None
    total = torch.exp(scores - best).sum(dim=1).reshape(size)
    return labels, torch.reciprocal(total)


def to_host(tensor: torch.Tensor) -> np.ndarray:
    """One download (``cpu()`` returns the tensor itself on CPU, so no copy there)."""
    return tensor.cpu().numpy()
