"""CDR reading and writing of sensor_msgs/Image: standard messages for rclpy and rosbags, views on read."""
from __future__ import annotations

import array

import numpy as np
import pytest

from rtseg_ros.io.cdr import (
    CdrError,
    CdrHeader,
    ImageWriter,
    read_compressed_image,
    read_header,
    read_image,
)
from rtseg_ros.io.images import image_msg_to_array

rclpy_serialization = pytest.importorskip("rclpy.serialization", reason="round trips need rclpy")
typesys = pytest.importorskip("rosbags.typesys", reason="round trips need rosbags")
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

TYPESTORE = typesys.get_typestore(typesys.Stores.ROS2_JAZZY)
# Frame ids of every length modulo 4, so every padding case of the fields after the header is written.
FRAME_IDS = ["", "a", "ab", "abc", "camera", "front_camera_optical"]
OUTPUTS = [("mono8", 1, np.uint8), ("32FC1", 1, np.float32), ("rgb8", 3, np.uint8)]


def _pixels(encoding: str, channels: int, dtype: type, shape: tuple[int, int] = (5, 7)) -> np.ndarray:
    rng = np.random.default_rng(len(encoding))
    if dtype is np.float32:
        values = rng.random((*shape, channels), dtype=np.float32)
    else:
        values = rng.integers(0, 255, (*shape, channels), dtype=np.uint8)
    return values[..., 0] if channels == 1 else values


@pytest.mark.parametrize("frame_id", FRAME_IDS)
@pytest.mark.parametrize("encoding,channels,dtype", OUTPUTS)
def test_written_images_are_standard_messages(frame_id: str, encoding: str, channels: int, dtype: type) -> None:
    pixels = _pixels(encoding, channels, dtype)
    data = ImageWriter(encoding, channels, dtype).write(CdrHeader.make(1700000000, 123456789, frame_id), pixels)
    assert isinstance(data, bytes)  # what Publisher.publish takes

    msg = rclpy_serialization.deserialize_message(data, Image)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (1700000000, 123456789, frame_id)
    assert (msg.height, msg.width, msg.encoding, msg.is_bigendian) == (5, 7, encoding, 0)
    assert msg.step == 7 * channels * np.dtype(dtype).itemsize
    assert bytes(msg.data) == pixels.tobytes()

    bag_msg = TYPESTORE.deserialize_cdr(data, "sensor_msgs/msg/Image")
    assert bag_msg.header.frame_id == frame_id and bag_msg.header.stamp.nanosec == 123456789
    assert (bag_msg.height, bag_msg.width, bag_msg.encoding, bag_msg.step) == (5, 7, encoding, msg.step)
    np.testing.assert_array_equal(np.frombuffer(bag_msg.data, dtype).reshape(pixels.shape), pixels)
    # rosbags writes zero padding, as the writer does: the bytes are the same, byte for byte.
    assert TYPESTORE.serialize_cdr(bag_msg, "sensor_msgs/msg/Image") == data


def test_writer_reuses_its_fields_across_sizes_and_headers() -> None:
    writer = ImageWriter("mono8", 1, np.uint8)
    for frame_id, shape in [("ab", (3, 4)), ("abc", (3, 4)), ("abc", (6, 2)), ("ab", (3, 4))]:
        pixels = np.arange(shape[0] * shape[1], dtype=np.uint8).reshape(shape)
        msg = rclpy_serialization.deserialize_message(writer.write(CdrHeader.make(3, 4, frame_id), pixels), Image)
        assert (msg.header.frame_id, msg.height, msg.width) == (frame_id, *shape)
        assert bytes(msg.data) == pixels.tobytes()


def test_writer_takes_strided_and_big_endian_arrays() -> None:
    base = np.arange(60, dtype=np.float32).reshape(5, 12)
    strided = base[:, ::3]
    msg = rclpy_serialization.deserialize_message(
        ImageWriter("32FC1", 1, np.float32).write(CdrHeader.make(0, 0, "c"), strided.astype(">f4")), Image)
    np.testing.assert_array_equal(np.frombuffer(msg.data, "<f4").reshape(5, 4), strided)


def test_writer_rejects_arrays_that_do_not_fit_the_encoding() -> None:
    writer = ImageWriter("mono8", 1, np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        writer.write(CdrHeader.make(0, 0, ""), np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="shape"):
        writer.write(CdrHeader.make(0, 0, ""), np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        writer.write(CdrHeader.make(0, 0, ""), np.zeros((0, 2), np.uint8))


@pytest.mark.parametrize("frame_id", FRAME_IDS)
def test_read_image_gives_the_fields_and_a_view_of_the_pixels(frame_id: str) -> None:
    pixels = np.random.default_rng(1).integers(0, 255, (6, 10, 3), dtype=np.uint8)
    header = Header(frame_id=frame_id)
    header.stamp.sec, header.stamp.nanosec = 42, 999
    data = rclpy_serialization.serialize_message(Image(
        header=header, height=6, width=10, encoding="rgb8", is_bigendian=0, step=30,
        data=array.array("B", pixels.tobytes())))
    view = read_image(data)
    assert (view.header.sec, view.header.nanosec, view.header.frame_id) == (42, 999, frame_id)
    assert view.header.stamp_ns == 42 * 1_000_000_000 + 999
    assert (view.height, view.width, view.encoding, view.step, view.is_bigendian) == (6, 10, "rgb8", 30, 0)
    assert view.data.obj is data  # a view of the received bytes, no copy
    frame, order = image_msg_to_array(view)
    assert order == "rgb" and np.shares_memory(frame, np.frombuffer(data, np.uint8))
    np.testing.assert_array_equal(frame, pixels)
    assert read_header(data) == view.header


def test_the_input_header_goes_into_outputs_unchanged() -> None:
    header = Header(frame_id="front")
    header.stamp.sec, header.stamp.nanosec = 7, 8
    data = rclpy_serialization.serialize_message(Image(header=header, height=1, width=1, encoding="mono8", step=1,
                                                       data=[5]))
    received = read_image(data).header
    out = ImageWriter("mono8", 1, np.uint8).write(received, np.zeros((1, 1), np.uint8))
    assert rclpy_serialization.deserialize_message(out, Image).header == header


def test_big_endian_messages_are_read() -> None:
    import struct

    body = struct.pack(">iII", 5, 6, 2) + b"c\x00" + b"\x00\x00" + struct.pack(">III", 1, 2, 6) + b"mono8\x00"
    body += b"\x00" + b"\x00" * 1  # is_bigendian, then padding to 4 (offset 27 -> 28)
    body += struct.pack(">II", 2, 2) + b"\x01\x02"
    view = read_image(b"\x00\x00\x00\x00" + body)
    assert (view.header.sec, view.header.nanosec, view.header.frame_id) == (5, 6, "c")
    assert (view.height, view.width, view.encoding, view.step, bytes(view.data)) == (1, 2, "mono8", 2, b"\x01\x02")
    # Outputs are little-endian whatever the input's order.
    out = ImageWriter("mono8", 1, np.uint8).write(view.header, np.zeros((1, 2), np.uint8))
    assert rclpy_serialization.deserialize_message(out, Image).header.frame_id == "c"


def test_read_compressed_image() -> None:
    header = Header(frame_id="cam")
    header.stamp.sec = 9
    data = rclpy_serialization.serialize_message(CompressedImage(header=header, format="jpeg", data=[1, 2, 3]))
    view = read_compressed_image(data)
    assert (view.header.sec, view.header.frame_id, view.format, bytes(view.data)) == (9, "cam", "jpeg", b"\x01\x02\x03")


@pytest.mark.parametrize("cut", [0, 3, 10, 30, 60])
def test_truncated_or_foreign_bytes_are_cdr_errors(cut: int) -> None:
    data = rclpy_serialization.serialize_message(Image(height=4, width=4, encoding="mono8", step=4, data=[0] * 16))
    with pytest.raises(CdrError):
        read_image(data[:cut])
    with pytest.raises(CdrError, match="encapsulation"):
        read_image(b"\x07\x07" + data[2:])
