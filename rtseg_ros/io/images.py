"""sensor_msgs image messages to and from numpy, without ROS.

Everything here is duck-typed: a message is any object with the fields of ``sensor_msgs/Image``
(``encoding``, ``height``, ``width``, ``step``, ``is_bigendian``, ``data``) or of
``sensor_msgs/CompressedImage`` (``format``, ``data``). That covers rclpy messages, rosbags
messages and plain test doubles alike.

Decoding returns the image together with its colour order instead of converting to one fixed
order: for ``rgb8``/``bgr8`` (and their alpha variants) the result is a view of the message
buffer, and the consumer (the Segmenter's preprocessing) swaps channels as part of a copy it
makes anyway.
"""
from __future__ import annotations

import array
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

__all__ = [
    "ImageDecodeError",
    "SUPPORTED_ENCODINGS",
    "image_msg_to_array",
    "compressed_msg_to_array",
    "array_to_image_fields",
    "mono16_to_mono8",
]


class ImageDecodeError(ValueError):
    """A message that cannot be turned into an image (bad encoding, sizes or data)."""


@dataclass(frozen=True)
class _Encoding:
    channels: int
    bytes_per_channel: int
    # OpenCV conversion to 3 channels, or None when the pixels are used as they are.
    conversion: int | None
    color_order: str

    @property
    def bytes_per_pixel(self) -> int:
        return self.channels * self.bytes_per_channel


# OpenCV names Bayer patterns after the second row, one column in; ROS after the top-left 2x2
# block, so ROS ``rggb`` is OpenCV ``BayerBG`` and so on.
_DECODABLE: dict[str, _Encoding] = {
    "rgb8": _Encoding(3, 1, None, "rgb"),
    "bgr8": _Encoding(3, 1, None, "bgr"),
    "rgba8": _Encoding(4, 1, None, "rgb"),
    "bgra8": _Encoding(4, 1, None, "bgr"),
    "mono8": _Encoding(1, 1, cv2.COLOR_GRAY2RGB, "rgb"),
    "mono16": _Encoding(1, 2, cv2.COLOR_GRAY2RGB, "rgb"),
    "yuv422": _Encoding(2, 1, cv2.COLOR_YUV2RGB_UYVY, "rgb"),
    "uyvy": _Encoding(2, 1, cv2.COLOR_YUV2RGB_UYVY, "rgb"),
    "yuv422_yuy2": _Encoding(2, 1, cv2.COLOR_YUV2RGB_YUY2, "rgb"),
    "yuyv": _Encoding(2, 1, cv2.COLOR_YUV2RGB_YUY2, "rgb"),
    "bayer_rggb8": _Encoding(1, 1, cv2.COLOR_BayerBG2RGB, "rgb"),
    "bayer_bggr8": _Encoding(1, 1, cv2.COLOR_BayerRG2RGB, "rgb"),
    "bayer_gbrg8": _Encoding(1, 1, cv2.COLOR_BayerGR2RGB, "rgb"),
    "bayer_grbg8": _Encoding(1, 1, cv2.COLOR_BayerGB2RGB, "rgb"),
}

SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_DECODABLE)
# Single-channel 8-bit encodings that hold class ids as they are.
LABEL_ENCODINGS: tuple[str, ...] = ("mono8", "8UC1")

# Encodings array_to_image_fields can publish: (channels, numpy dtype).
_PUBLISHABLE: dict[str, tuple[int, np.dtype]] = {
    "mono8": (1, np.dtype(np.uint8)),
    "mono16": (1, np.dtype(np.uint16)),
    "rgb8": (3, np.dtype(np.uint8)),
    "bgr8": (3, np.dtype(np.uint8)),
    "rgba8": (4, np.dtype(np.uint8)),
    "bgra8": (4, np.dtype(np.uint8)),
    "8UC1": (1, np.dtype(np.uint8)),
    "16UC1": (1, np.dtype(np.uint16)),
    "32FC1": (1, np.dtype(np.float32)),
}


def _as_bytes_array(data: Any) -> np.ndarray:
    """A flat uint8 view of a message's ``data`` (array.array, bytes, memoryview or ndarray)."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError):
        # A plain list of ints, e.g. a message built by hand.
        try:
            return np.asarray(data, dtype=np.uint8).reshape(-1)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ImageDecodeError(f"image data is not a byte buffer: {exc}") from None


def _pixel_rows(msg: Any, encoding: str, bytes_per_pixel: int, bytes_per_channel: int = 1) -> np.ndarray:
    """Check an image message's geometry against its data and return the pixel bytes as a
    height x (width * bytes_per_pixel) uint8 view, row padding cut off.

    Raises:
        ImageDecodeError: zero size, a ``step`` too small for the width or not a whole number of
            channels, or a data length that is not ``step * height``.
    """
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f"empty {encoding} image: {height}x{width}")
    row_bytes = width * bytes_per_pixel
    if step < row_bytes:
        raise ImageDecodeError(
            f"{encoding} image step {step} is smaller than width {width} x {bytes_per_pixel} bytes per pixel"
        )
    if bytes_per_channel > 1 and step % bytes_per_channel:
        raise ImageDecodeError(f"{encoding} image step {step} is not a multiple of {bytes_per_channel}")
    flat = _as_bytes_array(msg.data)
    if flat.size != step * height:
        kind = "truncated" if flat.size < step * height else "oversized"
        raise ImageDecodeError(
            f"{kind} {encoding} image data: {flat.size} bytes, expected step {step} x height {height} = {step * height}"
        )
    return flat.reshape(height, step)[:, :row_bytes]


def label_msg_to_array(msg: Any) -> np.ndarray:
    """Decode a mono8/8UC1 ``sensor_msgs/Image`` of class ids (ground truth, or the node's labels)
    into an HxW uint8 view of ``msg.data``.

    Raises:
        ImageDecodeError: another encoding, zero size, or data that does not match the sizes.
    """
    encoding = str(msg.encoding)
    if encoding not in LABEL_ENCODINGS:
        raise ImageDecodeError(f"label images must be {' or '.join(LABEL_ENCODINGS)}, got {encoding!r}")
    return _pixel_rows(msg, encoding, 1)


def image_msg_to_array(msg: Any) -> tuple[np.ndarray, str]:
    """Decode a ``sensor_msgs/Image`` into an HxWx3 uint8 array and its colour order.

    Args:
        msg: any object with the fields of ``sensor_msgs/Image``.

    Returns:
        ``(image, color_order)`` with ``color_order`` ``"rgb"`` or ``"bgr"``. For rgb8, bgr8, rgba8
        and bgra8 the image is a (possibly strided) view of ``msg.data``, not a copy; other
        encodings are converted with OpenCV. ``mono16`` is brought to 8 bits by its range
        (:func:`mono16_to_mono8`), so a 10- or 12-bit camera fills the 8-bit range too.

    Raises:
        ImageDecodeError: unknown encoding, zero size, a ``step`` too small for the width, or a
            data length that is not ``step * height``.
    """
    encoding = str(msg.encoding)
    spec = _DECODABLE.get(encoding)
    if spec is None:
        raise ImageDecodeError(
            f"unsupported image encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}"
        )
    height, width = int(msg.height), int(msg.width)
    if spec.conversion in (cv2.COLOR_YUV2RGB_UYVY, cv2.COLOR_YUV2RGB_YUY2) and width % 2:
        raise ImageDecodeError(f"{encoding} images need an even width, got {width}")
    rows = _pixel_rows(msg, encoding, spec.bytes_per_pixel, spec.bytes_per_channel)
    if spec.bytes_per_channel == 2:
        byte_order = ">" if msg.is_bigendian else "<"
        # A strided row slice cannot be reinterpreted as uint16 in place; these frames are small.
        pixels = np.ascontiguousarray(rows).view(np.dtype(f"{byte_order}u2")).reshape(height, width)
        pixels = mono16_to_mono8(pixels)
    else:
        pixels = rows.reshape(height, width, spec.channels)

    if spec.conversion is None:
        return pixels[:, :, :3], spec.color_order
    if spec.channels == 1:
        pixels = pixels.reshape(height, width)
    # OpenCV needs a contiguous source for these conversions; padded rows are the rare case.
    return cv2.cvtColor(np.ascontiguousarray(pixels), spec.conversion), spec.color_order


def mono16_to_mono8(pixels: np.ndarray) -> np.ndarray:
    """16-bit grey values brought to 8 bits by the bit depth they use.

    Cameras deliver 10, 12 or 14 significant bits in a mono16 image; keeping the top 8 of 16 bits
    would leave a 12-bit camera's frame near black (at most 15 of 255). The frame is shifted right by
    the bits its brightest pixel uses beyond 8, so a 12-bit frame maps 0..4095 to 0..255, a full
    16-bit one keeps its top byte and values below 256 stay as they are. A power-of-two scale keeps
    the mapping of a camera's frames constant (no per-frame contrast stretch) unless their peak
    crosses a bit boundary.
    """
    peak = int(pixels.max()) if pixels.size else 0
    shift = max(peak.bit_length() - 8, 0)
    if shift == 0:
        return pixels.astype(np.uint8)
    return (pixels >> shift).astype(np.uint8)


def compressed_msg_to_array(msg: Any) -> tuple[np.ndarray, str]:
    """Decode a JPEG or PNG ``sensor_msgs/CompressedImage`` into an HxWx3 uint8 array.

    Grey and 16-bit PNGs are brought to 8-bit colour. The codec is taken from the data itself;
    ``msg.format`` is only checked for the ``compressedDepth`` variant, whose extra header this
    function does not read.

    Returns:
        ``(image, "bgr")``.

    Raises:
        ImageDecodeError: empty or undecodable data, or a compressedDepth message.
    """
    fmt = str(getattr(msg, "format", ""))
    if "compresseddepth" in fmt.lower():
        raise ImageDecodeError(f"compressedDepth images are not camera frames (format {fmt!r})")
    buffer = _as_bytes_array(msg.data)
    if buffer.size == 0:
        raise ImageDecodeError("empty compressed image")
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise ImageDecodeError(f"cannot decode compressed image ({buffer.size} bytes, format {fmt!r})")
    return image, "bgr"


def array_to_image_fields(image: np.ndarray, encoding: str) -> dict[str, Any]:
    """The ``sensor_msgs/Image`` fields for publishing ``image`` (everything but the header).

    Args:
        image: HxW (one channel) or HxWxC array whose dtype and channel count match ``encoding``.
        encoding: one of mono8, mono16, rgb8, bgr8, rgba8, bgra8, 8UC1, 16UC1, 32FC1.

    Returns:
        A dict with ``height``, ``width``, ``encoding``, ``is_bigendian``, ``step`` and ``data``
        (an ``array.array('B')``, which rclpy takes without a per-element check), ready for
        ``Image(header=header, **fields)``.

    Raises:
        ValueError: an unknown encoding or an array that does not match it.
    """
    spec = _PUBLISHABLE.get(encoding)
    if spec is None:
        raise ValueError(f"cannot publish encoding {encoding!r}; supported: {', '.join(_PUBLISHABLE)}")
    channels, dtype = spec
    shape_ok = image.ndim == 2 and channels == 1 or image.ndim == 3 and image.shape[2] == channels
    if not shape_ok or image.dtype != dtype:
        raise ValueError(
            f"{encoding} needs an array of {channels} channel(s) of {dtype}, got shape {image.shape} of {image.dtype}"
        )
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"cannot publish an empty image ({height}x{width})")
    contiguous = np.ascontiguousarray(image)
    if contiguous.dtype.byteorder == ">":
        contiguous = contiguous.astype(contiguous.dtype.newbyteorder("<"))
    data = array.array("B")
    data.frombytes(contiguous.data.cast("B"))
    return {
        "height": height,
        "width": width,
        "encoding": encoding,
        "is_bigendian": 0,
        "step": width * channels * dtype.itemsize,
        "data": data,
    }
