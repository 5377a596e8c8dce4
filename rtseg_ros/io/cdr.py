"""``sensor_msgs/Image`` and ``CompressedImage`` in their wire form (CDR), without building rclpy messages.

ROS 2 sends messages as CDR (OMG XCDR1: a 4-byte encapsulation header, then the fields in order, each
aligned to its own size counted from the end of that header). For a camera frame almost every byte is
the pixel buffer, which sits at the end of the message. So a serialised frame (what a ``raw=True``
subscription hands over) is read here as a few header fields plus a *view* of the pixels, and an
output image is written as a short prefix followed by the pixels, with one copy of them in all:

- rclpy's own path costs a 6 MB rgb8 frame a deserialisation into C plus a conversion into a Python
  message (about 6 ms here) before the first pixel is read, and an output image a Python message, a
  conversion back to C and a serialisation;
- :func:`read_image` costs a few microseconds whatever the frame size, and :class:`ImageWriter` one
  ``memcpy`` of the pixels (into ``bytes`` for ``Publisher.publish``, or into a reused buffer).

The messages are the standard ones: rclpy's ``deserialize_message``, rosbags, rclcpp and
``ros2 topic echo`` read what :class:`ImageWriter` writes (padding bytes are zero).

Both byte orders are read; messages are written little-endian, as every ROS 2 middleware on
little-endian hosts does.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CdrError",
    "CdrHeader",
    "CompressedImageView",
    "ImageView",
    "ImageWriter",
    "read_compressed_image",
    "read_header",
    "read_image",
]

# The 4-byte encapsulation header: representation id CDR_BE (0x0000) or CDR_LE (0x0001), then options.
_CDR_BE = b"\x00\x00"
_CDR_LE = b"\x00\x01"
_ENCAPSULATION_LE = _CDR_LE + b"\x00\x00"
_ENCAPSULATION_SIZE = 4
# Longest string field accepted (encoding, format, frame_id): a bound for corrupt length fields.
_MAX_STRING = 1 << 16


class CdrError(ValueError):
    """Bytes that are not a serialised message of the expected type (truncated, corrupt or another type)."""


@dataclass(frozen=True)
class CdrHeader:
    """A ``std_msgs/Header`` read from CDR, with its serialised form (for copying into outputs).

    Attributes:
        sec / nanosec: the stamp.
        frame_id: the frame id.
        raw: the header's own CDR bytes (stamp and frame id, little-endian), as an output message's
            first field.
    """

    sec: int
    nanosec: int
    frame_id: str
    raw: bytes

    @property
    def stamp_ns(self) -> int:
        """The stamp in nanoseconds."""
        return self.sec * 1_000_000_000 + self.nanosec

    @staticmethod
    def make(sec: int, nanosec: int, frame_id: str) -> CdrHeader:
        """A header from its fields (e.g. from an rclpy ``Header``)."""
        text = frame_id.encode()
        raw = struct.pack(f"<iII{len(text) + 1}s", sec, nanosec, len(text) + 1, text)
        return CdrHeader(sec, nanosec, frame_id, raw)


@dataclass(frozen=True)
class ImageView:
    """A ``sensor_msgs/Image`` read from CDR; ``data`` is a view of the serialised bytes, not a copy.

    It has the fields of the message (what :func:`rtseg_ros.io.images.image_msg_to_array` reads).
    """

    header: CdrHeader
    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: memoryview


@dataclass(frozen=True)
class CompressedImageView:
    """A ``sensor_msgs/CompressedImage`` read from CDR; ``data`` is a view of the serialised bytes."""

    header: CdrHeader
    format: str
    data: memoryview


class _Reader:
    """Sequential CDR reads with alignment, bounds checks and either byte order."""

    def __init__(self, buffer: bytes | bytearray | memoryview, what: str) -> None:
        self.view = memoryview(buffer).cast("B")
        self.what = what
        if len(self.view) < _ENCAPSULATION_SIZE:
            raise CdrError(f"not a serialised {what}: {len(self.view)} bytes")
        kind = bytes(self.view[:2])
        if kind == _CDR_LE:
            self.order = "<"
        elif kind == _CDR_BE:
            self.order = ">"
        else:
            raise CdrError(f"not a serialised {what}: encapsulation {kind.hex()} is not plain CDR")
        self.offset = _ENCAPSULATION_SIZE

    def _take(self, size: int, align: int) -> int:
        start = self.offset + (-(self.offset - _ENCAPSULATION_SIZE) % align)
        end = start + size
        if end > len(self.view):
            raise CdrError(f"truncated {self.what}: {len(self.view)} bytes, a field needs {end}")
        self.offset = end
        return start

    def uint32(self) -> int:
        start = self._take(4, 4)
        return struct.unpack_from(self.order + "I", self.view, start)[0]

    def int32(self) -> int:
        start = self._take(4, 4)
        return struct.unpack_from(self.order + "i", self.view, start)[0]

    def uint8(self) -> int:
        return self.view[self._take(1, 1)]

    def string(self) -> str:
        length = self.uint32()  # counts the terminating NUL
        if length > _MAX_STRING:
            raise CdrError(f"corrupt {self.what}: a string of {length} bytes")
        start = self._take(length, 1)
        return bytes(self.view[start:start + max(length - 1, 0)]).decode(errors="replace")

    def byte_sequence(self) -> memoryview:
        length = self.uint32()
        start = self._take(length, 1)
        return self.view[start:start + length]

    def header(self) -> CdrHeader:
        begin = self.offset
        sec, nanosec = self.int32(), self.uint32()
        frame_id = self.string()
        raw = bytes(self.view[begin:self.offset])
        if self.order == ">":  # outputs are little-endian: re-encode
            return CdrHeader.make(sec, nanosec, frame_id)
        return CdrHeader(sec, nanosec, frame_id, raw)


def read_header(buffer: bytes | bytearray | memoryview) -> CdrHeader:
    """The header of any serialised message that starts with a ``std_msgs/Header`` (Image, CameraInfo ...).

    Raises:
        CdrError: not a CDR message, or too short.
    """
    return _Reader(buffer, "message").header()


def read_image(buffer: bytes | bytearray | memoryview) -> ImageView:
    """Read a serialised ``sensor_msgs/Image``; the pixels stay where they are (``data`` is a view).

    Only the CDR structure is checked here; whether ``data`` fits ``step``, ``height`` and the
    encoding is :mod:`rtseg_ros.io.images`' check.

    Raises:
        CdrError: not a CDR message, truncated, or a corrupt length field.
    """
    reader = _Reader(buffer, "sensor_msgs/Image")
    header = reader.header()
    height, width = reader.uint32(), reader.uint32()
    encoding = reader.string()
    is_bigendian = reader.uint8()
    step = reader.uint32()
    data = reader.byte_sequence()
    return ImageView(header, height, width, encoding, is_bigendian, step, data)


def read_compressed_image(buffer: bytes | bytearray | memoryview) -> CompressedImageView:
    """Read a serialised ``sensor_msgs/CompressedImage``; ``data`` is a view.

    Raises:
        CdrError: not a CDR message, truncated, or a corrupt length field.
    """
    reader = _Reader(buffer, "sensor_msgs/CompressedImage")
    header = reader.header()
    fmt = reader.string()
    return CompressedImageView(header, fmt, reader.byte_sequence())


def _pad(size: int, align: int) -> bytes:
    return b"\x00" * (-(size - _ENCAPSULATION_SIZE) % align)


class ImageWriter:
    """Writes ``sensor_msgs/Image`` messages of one encoding as CDR bytes, ready for ``Publisher.publish``.

    The fields after the header (sizes, encoding, step, data length) are packed once per frame size
    and reused; a frame costs one copy of its pixels: into a new ``bytes`` object (:meth:`write`, what
    rclpy's ``Publisher.publish`` takes) or into the writer's own buffer, kept from frame to frame
    (:meth:`write_into_buffer`, for rcl's serialised publish).

    Args:
        encoding: the ``encoding`` field (``mono8``, ``32FC1``, ``rgb8`` ...).
        channels: values per pixel.
        dtype: the pixel dtype; it is written little-endian.
    """

    def __init__(self, encoding: str, channels: int, dtype: np.dtype | type) -> None:
        self.encoding = encoding
        self.channels = channels
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self._size: tuple[int, int, int] | None = None
        self._fields = b""
        self._buffer = np.empty(0, np.uint8)  # write_into_buffer's, grown to the largest message

    def _body_fields(self, height: int, width: int, header_end: int) -> bytes:
        """The fields between the header and the pixels; depends on where the header ends (padding)."""
        step = width * self.channels * self.dtype.itemsize
        text = self.encoding.encode()
        parts = [_pad(header_end, 4), struct.pack("<III", height, width, len(text) + 1), text, b"\x00"]
        offset = header_end + sum(len(p) for p in parts)
        parts.append(b"\x00")  # is_bigendian
        offset += 1
        parts += [_pad(offset, 4), struct.pack("<II", step, height * step)]
        return b"".join(parts)

    def _checked(self, header: CdrHeader, pixels: np.ndarray) -> tuple[bytes, np.ndarray]:
        """The message's bytes before the pixels, and the pixels as a C-contiguous little-endian array."""
        if pixels.dtype.kind != self.dtype.kind or pixels.dtype.itemsize != self.dtype.itemsize:
            raise ValueError(f"{self.encoding} needs {self.dtype} pixels, got {pixels.dtype}")
        channels = 1 if pixels.ndim == 2 else pixels.shape[2]
        if pixels.ndim not in (2, 3) or channels != self.channels:
            raise ValueError(f"{self.encoding} needs HxW{'' if self.channels == 1 else 'x' + str(self.channels)} "
                             f"pixels, got shape {pixels.shape}")
        height, width = pixels.shape[:2]
        if height == 0 or width == 0:
            raise ValueError(f"cannot publish an empty image ({height}x{width})")
        if pixels.dtype.byteorder == ">" or not pixels.flags.c_contiguous:
            pixels = np.ascontiguousarray(pixels, dtype=self.dtype)
        header_end = _ENCAPSULATION_SIZE + len(header.raw)
        key = (height, width, header_end % 4)
        if key != self._size:
            self._size, self._fields = key, self._body_fields(height, width, header_end)
        return _ENCAPSULATION_LE + header.raw + self._fields, pixels

    def write(self, header: CdrHeader, pixels: np.ndarray) -> bytes:
        """The serialised message of ``pixels`` (HxW or HxWxC of the writer's dtype) with ``header``.

        Raises:
            ValueError: pixels of another dtype or channel count, or an empty image.
        """
        prefix, pixels = self._checked(header, pixels)
        return b"".join((prefix, memoryview(pixels).cast("B")))

    def write_into_buffer(self, header: CdrHeader, pixels: np.ndarray) -> memoryview:
        """Like :meth:`write`, into this writer's own buffer, kept from call to call: no allocation per frame.

        The view is valid until the next call (for a publisher that copies it before returning, such as
        :class:`rtseg_ros.ros.rcl_direct.SerializedPublisher`).

        Raises:
            ValueError: as :meth:`write`.
        """
        prefix, pixels = self._checked(header, pixels)
        size = len(prefix) + pixels.nbytes
        if self._buffer.size < size:
            self._buffer = np.empty(size, np.uint8)
        self._buffer[:len(prefix)] = np.frombuffer(prefix, np.uint8)
        self._buffer[len(prefix):size] = pixels.reshape(-1).view(np.uint8)
        return memoryview(self._buffer[:size])
