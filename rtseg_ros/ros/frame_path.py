"""The node's per-frame data path: serialised camera frames in, serialised output images out.

The node takes its camera frames serialised (through rcl, :mod:`rtseg_ros.ros.rcl_direct`, or rclpy's
``raw=True``) and publishes its image outputs as serialised ``sensor_msgs/Image`` (:mod:`rtseg_ros.io.cdr`):
no rclpy message is built for a frame or an output image, the camera's pixels are read where they were
taken, and each output's pixels are copied once, into what is handed to the middleware.

Also here: the camera_info of a frame, found by its stamp and rescaled to the label image.

This module imports rclpy message packages, never torch.
"""
from __future__ import annotations

import bisect
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from builtin_interfaces.msg import Time as TimeMsg
from sensor_msgs.msg import CameraInfo, RegionOfInterest
from std_msgs.msg import Header

from rtseg_ros.io.cdr import CdrError, CdrHeader, ImageWriter, read_compressed_image, read_image
from rtseg_ros.io.images import ImageDecodeError, compressed_msg_to_array, image_msg_to_array

__all__ = [
    "CAMERA_INFO_HISTORY",
    "CameraInfoHistory",
    "DecodedFrame",
    "FrameDecoder",
    "OutputEncoder",
    "ScaledCameraInfos",
    "header_message",
    "scale_camera_info",
]

# camera_info messages kept for matching by stamp: about a second of a 30 Hz camera.
CAMERA_INFO_HISTORY = 32


@dataclass(frozen=True)
class DecodedFrame:
    """A camera frame ready for the Segmenter, and the header its outputs carry."""

    pixels: np.ndarray  # HxWx3 uint8; a view of the received bytes for rgb8/bgr8
    color_order: str
    header: CdrHeader


class FrameDecoder:
    """Serialised ``sensor_msgs/Image`` (``raw``) or ``CompressedImage`` (``compressed``) -> :class:`DecodedFrame`.

    Raises (on call):
        ImageDecodeError: bytes that are not a message of the transport's type, or an image that
            cannot be decoded (unsupported encoding, truncated data, sizes that do not fit).
    """

    def __init__(self, transport: str) -> None:
        if transport == "compressed":
            self._read: Callable[[Any], Any] = read_compressed_image
            self._decode: Callable[[Any], tuple[np.ndarray, str]] = compressed_msg_to_array
        else:
            self._read, self._decode = read_image, image_msg_to_array

    def __call__(self, data: bytes) -> DecodedFrame:
        try:
            view = self._read(data)
        except CdrError as exc:
            raise ImageDecodeError(str(exc)) from None
        pixels, color_order = self._decode(view)
        return DecodedFrame(pixels, color_order, view.header)


class OutputEncoder:
    """The node's output images as serialised ``sensor_msgs/Image``, for a publisher's ``publish``.

    Args:
        reuse_buffers: each kind of output is written into a buffer of its own, kept from frame to frame,
            and returned as a view valid until the next output of that kind (for
            :class:`~rtseg_ros.ros.rcl_direct.SerializedPublisher`); otherwise as a new ``bytes`` object
            (what rclpy's ``Publisher.publish`` takes).
    """

    def __init__(self, reuse_buffers: bool = False) -> None:
        self._labels = ImageWriter("mono8", 1, np.uint8)
        self._confidence_8 = ImageWriter("mono8", 1, np.uint8)
        self._confidence_32 = ImageWriter("32FC1", 1, np.float32)
        self._overlay = ImageWriter("rgb8", 3, np.uint8)
        self._reuse_buffers = reuse_buffers
        self._scratch = threading.local()  # the 8-bit confidence, reused frame after frame

    def _write(self, writer: ImageWriter, header: CdrHeader, pixels: np.ndarray) -> bytes | memoryview:
        return writer.write_into_buffer(header, pixels) if self._reuse_buffers else writer.write(header, pixels)

    def labels(self, header: CdrHeader, labels: np.ndarray) -> bytes | memoryview:
        """mono8 class ids."""
        return self._write(self._labels, header, labels)

    def confidence(self, header: CdrHeader, confidence: np.ndarray, encoding: str) -> bytes | memoryview:
        """The probability as ``32FC1``, or ``mono8`` (probability x 255, rounded).

        Raises:
            ValueError: another encoding.
        """
        if encoding == "32FC1":
            return self._write(self._confidence_32, header, confidence.astype(np.float32, copy=False))
        if encoding != "mono8":
            raise ValueError(f"confidence encoding must be 32FC1 or mono8, got {encoding!r}")
        scratch = getattr(self._scratch, "mono8", None)
        if scratch is None or scratch.shape != confidence.shape:
            scratch = self._scratch.mono8 = np.empty(confidence.shape, np.uint8)
        # One pass, rounded and saturated, into the reused buffer (numpy takes three and two temporaries).
        cv2.convertScaleAbs(confidence, dst=scratch, alpha=255.0)
        return self._write(self._confidence_8, header, scratch)

    def overlay(self, header: CdrHeader, rgb: np.ndarray) -> bytes | memoryview:
        """An rgb8 image."""
        return self._write(self._overlay, header, rgb)


def header_message(header: CdrHeader) -> Header:
    """The rclpy ``Header`` of a header read from CDR (for the outputs that are rclpy messages)."""
    return Header(stamp=TimeMsg(sec=header.sec, nanosec=header.nanosec), frame_id=header.frame_id)


def _stamp_ns(msg: Any) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


class CameraInfoHistory:
    """The recent camera_info messages, to give each frame the one stamped with it.

    A camera publishes a frame and its camera_info with the same stamp on two topics, in either
    order; taking the latest camera_info would give a frame its neighbour's (wrong after a change of
    resolution, binning or ROI). :meth:`match` returns the camera_info with the frame's stamp; if
    there is none (a camera_info publisher with its own stamps, e.g. a latched one), the newest one
    stamped no later than the frame, i.e. the calibration in force when the frame was taken.
    Thread-safe: the executor adds, the inference worker matches.
    """

    def __init__(self, depth: int = CAMERA_INFO_HISTORY) -> None:
        self._depth = depth
        self._stamps: list[int] = []  # sorted
        self._infos: dict[int, CameraInfo] = {}
        self._lock = threading.Lock()

    def add(self, msg: CameraInfo) -> None:
        stamp = _stamp_ns(msg)
        with self._lock:
            if stamp not in self._infos:
                bisect.insort(self._stamps, stamp)
            self._infos[stamp] = msg
            while len(self._stamps) > self._depth:
                del self._infos[self._stamps.pop(0)]

    def match(self, stamp_ns: int) -> CameraInfo | None:
        """The camera_info for a frame stamped ``stamp_ns``, or ``None`` if every one kept is newer."""
        with self._lock:
            exact = self._infos.get(stamp_ns)
            if exact is not None:
                return exact
            index = bisect.bisect_right(self._stamps, stamp_ns)
            return self._infos[self._stamps[index - 1]] if index else None


def scale_camera_info(info: CameraInfo, width: int, height: int, header: Header) -> CameraInfo:
    """The CameraInfo of an image of ``width`` x ``height`` covering ``info``'s frame, with ``header``.

    ``info`` follows REP 104: its intrinsics and ``width``/``height`` are the full-resolution sensor's,
    and the frame the camera sent is its ROI (the whole sensor when the ROI is empty), read out with
    ``binning_x``/``binning_y``. The label image covers that same region at ``width`` x ``height``, so
    the result maps sensor pixel ``u`` to ``(u - roi.x_offset) * width / roi_width``: intrinsics and
    projection are shifted by the ROI offset and scaled by the label size over the ROI's full-resolution
    size (binning needs no factor of its own: it is between the sensor and the frame, both of which the
    label image replaces). The result describes the label image as a whole image: no binning, empty ROI.
    ``info`` itself is left untouched (it is reused for later frames).
    """
    roi = info.roi
    region_width = roi.width if roi.width else info.width
    region_height = roi.height if roi.height else info.height
    x0, y0 = (roi.x_offset, roi.y_offset) if roi.width and roi.height else (0, 0)
    sx = width / region_width if region_width else 1.0
    sy = height / region_height if region_height else 1.0
    k = list(info.k)
    k[0], k[1], k[2] = k[0] * sx, k[1] * sx, (k[2] - x0) * sx
    k[4], k[5] = k[4] * sy, (k[5] - y0) * sy
    p = list(info.p)
    p[0], p[1], p[2], p[3] = p[0] * sx, p[1] * sx, (p[2] - x0) * sx, p[3] * sx
    p[5], p[6], p[7] = p[5] * sy, (p[6] - y0) * sy, p[7] * sy
    return CameraInfo(
        header=header, height=height, width=width, distortion_model=info.distortion_model, d=info.d, k=k, r=info.r,
        p=p, binning_x=0, binning_y=0, roi=RegionOfInterest())


class ScaledCameraInfos:
    """:func:`scale_camera_info` once per camera_info and output size; later frames only change the header."""

    def __init__(self) -> None:
        self._source: tuple[CameraInfo, int, int] | None = None
        self._scaled: CameraInfo | None = None

    def get(self, info: CameraInfo, width: int, height: int, header: Header) -> CameraInfo:
        source = self._source
        if source is None or source[0] is not info or source[1:] != (width, height) or self._scaled is None:
            self._scaled, self._source = scale_camera_info(info, width, height, header), (info, width, height)
        self._scaled.header = header
        return self._scaled
