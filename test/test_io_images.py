"""Image message decoding and encoding (ROS-free: messages are plain namespaces)."""
from __future__ import annotations

import array
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from rtseg_ros.datasets.synthetic import make_scene
from rtseg_ros.io.images import (
    SUPPORTED_ENCODINGS,
    ImageDecodeError,
    array_to_image_fields,
    compressed_msg_to_array,
    image_msg_to_array,
)


def _msg(pixels: np.ndarray, encoding: str, *, pad: int = 0, bigendian: bool = False) -> SimpleNamespace:
    """An Image-like message holding ``pixels`` (HxW or HxWxC) with ``pad`` extra bytes per row."""
    height, width = pixels.shape[:2]
    if pixels.dtype == np.uint16:
        pixels = pixels.astype(">u2" if bigendian else "<u2")
    rows = pixels.reshape(height, -1).view(np.uint8)
    rows = np.concatenate([rows, np.full((height, pad), 7, np.uint8)], axis=1)
    return SimpleNamespace(
        encoding=encoding, height=height, width=width, step=rows.shape[1], is_bigendian=int(bigendian),
        data=array.array("B", rows.tobytes()),
    )


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    return make_scene(3, 48, 64)[0]


def _rgb_to_yuv(rgb: np.ndarray) -> np.ndarray:
    """Full-precision BT.601 YUV as OpenCV's YUV422 decoders expect (video range)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    return np.clip(np.rint(np.stack([y, u, v], -1)), 0, 255).astype(np.uint8)


def _pack_yuv422(rgb: np.ndarray, order: str) -> np.ndarray:
    yuv = _rgb_to_yuv(rgb)
    y = yuv[..., 0]
    # Chroma is shared by each horizontal pixel pair.
    u = yuv[:, 0::2, 1]
    v = yuv[:, 0::2, 2]
    packed = np.empty((rgb.shape[0], rgb.shape[1] * 2), np.uint8)
    if order == "uyvy":
        packed[:, 0::4], packed[:, 1::4], packed[:, 2::4], packed[:, 3::4] = u, y[:, 0::2], v, y[:, 1::2]
    else:
        packed[:, 0::4], packed[:, 1::4], packed[:, 2::4], packed[:, 3::4] = y[:, 0::2], u, y[:, 1::2], v
    return packed.reshape(rgb.shape[0], rgb.shape[1], 2)


def _mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """Sample an RGB image through a Bayer filter named like ROS (top-left 2x2 block)."""
    channel = {"r": 0, "g": 1, "b": 2}
    out = np.empty(rgb.shape[:2], np.uint8)
    for i, letter in enumerate(pattern):
        dy, dx = divmod(i, 2)
        out[dy::2, dx::2] = rgb[dy::2, dx::2, channel[letter]]
    return out


def test_rgb8_is_a_view_of_the_message_buffer(scene: np.ndarray) -> None:
    msg = _msg(scene, "rgb8")
    image, order = image_msg_to_array(msg)
    assert order == "rgb"
    np.testing.assert_array_equal(image, scene)
    assert np.shares_memory(image, np.frombuffer(msg.data, np.uint8))


@pytest.mark.parametrize("encoding,order", [("rgb8", "rgb"), ("bgr8", "bgr"), ("rgba8", "rgb"), ("bgra8", "bgr")])
def test_colour_encodings_with_padded_rows(scene: np.ndarray, encoding: str, order: str) -> None:
    pixels = scene if order == "rgb" else scene[..., ::-1]
    if encoding.endswith("a8"):
        pixels = np.concatenate([pixels, np.full(scene.shape[:2] + (1,), 200, np.uint8)], axis=2)
    msg = _msg(pixels, encoding, pad=5)
    image, got_order = image_msg_to_array(msg)
    assert got_order == order
    assert image.shape == scene.shape
    rgb = image if order == "rgb" else image[..., ::-1]
    np.testing.assert_array_equal(rgb, scene)
    assert np.shares_memory(image, np.frombuffer(msg.data, np.uint8))


def test_mono8_becomes_three_equal_channels(scene: np.ndarray) -> None:
    grey = scene[..., 1].copy()
    image, order = image_msg_to_array(_msg(grey, "mono8", pad=3))
    assert order == "rgb" and image.shape == scene.shape
    for c in range(3):
        np.testing.assert_array_equal(image[..., c], grey)


@pytest.mark.parametrize("bigendian", [False, True])
def test_mono16_keeps_the_high_byte(bigendian: bool) -> None:
    values = np.arange(0, 65536, 257, dtype=np.uint16)[:240].reshape(12, 20)
    image, _ = image_msg_to_array(_msg(values, "mono16", pad=2, bigendian=bigendian))
    np.testing.assert_array_equal(image[..., 0], (values >> 8).astype(np.uint8))


@pytest.mark.parametrize("bits", [10, 12, 14])
def test_mono16_of_a_narrower_camera_fills_the_8_bit_range(bits: int) -> None:
    # A 12-bit camera's frame in mono16: 0..4095, once near black (top byte at most 15).
    values = np.linspace(0, (1 << bits) - 1, 240).astype(np.uint16).reshape(12, 20)
    image, _ = image_msg_to_array(_msg(values, "mono16", pad=2))
    np.testing.assert_array_equal(image[..., 0], (values >> (bits - 8)).astype(np.uint8))
    assert image.max() == 255 and image.min() == 0


def test_mono16_below_256_stays_as_it_is() -> None:
    values = np.arange(240, dtype=np.uint16).reshape(12, 20)
    image, _ = image_msg_to_array(_msg(values, "mono16"))
    np.testing.assert_array_equal(image[..., 0], values.astype(np.uint8))


@pytest.mark.parametrize(
    "encoding,layout", [("yuv422", "uyvy"), ("uyvy", "uyvy"), ("yuv422_yuy2", "yuyv"), ("yuyv", "yuyv")])
def test_yuv422_layouts_decode_to_the_source_colours(encoding: str, layout: str) -> None:
    # Pixel pairs share chroma, so a scene of 2-pixel-wide constant blocks survives exactly up to rounding.
    rgb = np.repeat(make_scene(5, 32, 32)[0][:, ::2], 2, axis=1)
    image, order = image_msg_to_array(_msg(_pack_yuv422(rgb, layout), encoding))
    assert order == "rgb"
    assert np.abs(image.astype(int) - rgb.astype(int)).max() <= 3


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_patterns_map_to_the_right_colours(pattern: str) -> None:
    # A flat colour demosaics exactly, and a wrong pattern mapping would swap or mix channels.
    flat = np.empty((16, 24, 3), np.uint8)
    flat[:] = (200, 90, 20)
    image, order = image_msg_to_array(_msg(_mosaic(flat, pattern), f"bayer_{pattern}8"))
    assert order == "rgb"
    np.testing.assert_array_equal(image[2:-2, 2:-2], flat[2:-2, 2:-2])


def test_every_supported_encoding_is_tested() -> None:
    tested = {"rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "yuv422", "uyvy", "yuv422_yuy2", "yuyv",
              "bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8"}
    assert set(SUPPORTED_ENCODINGS) == tested


def _good() -> SimpleNamespace:
    return _msg(np.zeros((4, 6, 3), np.uint8), "rgb8")


@pytest.mark.parametrize(
    "change,message",
    [
        ({"encoding": "32FC1"}, "unsupported image encoding '32FC1'"),
        ({"encoding": "bayer_rggb16"}, "unsupported image encoding"),
        ({"height": 0, "data": array.array("B")}, "empty rgb8 image"),
        ({"width": 0}, "empty rgb8 image"),
        ({"step": 17}, "step 17 is smaller than width 6"),
        ({"data": array.array("B", bytes(71))}, "truncated rgb8 image data: 71 bytes"),
        ({"data": array.array("B", bytes(73))}, "oversized rgb8 image data: 73 bytes"),
        ({"data": array.array("B")}, "truncated"),
        ({"encoding": "yuyv", "width": 9, "step": 18, "data": bytes(72)}, "even width"),
        ({"encoding": "mono16", "width": 3, "step": 7, "data": bytes(28)}, "not a multiple of 2"),
        ({"data": ["x"] * 72}, "not a byte buffer"),
    ],
)
def test_malformed_images_raise_a_clear_error(change: dict, message: str) -> None:
    msg = _good()
    vars(msg).update(change)
    with pytest.raises(ImageDecodeError, match=message):
        image_msg_to_array(msg)


def test_decode_error_is_a_value_error() -> None:
    assert issubclass(ImageDecodeError, ValueError)


def test_png_is_lossless_and_jpeg_close(scene: np.ndarray) -> None:
    bgr = np.ascontiguousarray(scene[..., ::-1])
    ok, png = cv2.imencode(".png", bgr)
    assert ok
    image, order = compressed_msg_to_array(SimpleNamespace(format="rgb8; png compressed bgr8", data=png.tobytes()))
    assert order == "bgr"
    np.testing.assert_array_equal(image, bgr)

    ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    image, order = compressed_msg_to_array(SimpleNamespace(format="jpeg", data=array.array("B", jpeg.tobytes())))
    assert order == "bgr" and image.shape == bgr.shape
    assert np.abs(image.astype(int) - bgr.astype(int)).mean() < 4


def test_grey_png_decodes_to_three_channels() -> None:
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    _, png = cv2.imencode(".png", grey)
    image, _ = compressed_msg_to_array(SimpleNamespace(format="png", data=png.tobytes()))
    assert image.shape == (8, 8, 3)
    np.testing.assert_array_equal(image[..., 2], grey)


@pytest.mark.parametrize(
    "fmt,data,message",
    [
        ("jpeg", b"", "empty compressed image"),
        ("jpeg", b"\xff\xd8\xff\xe0 not really a jpeg", "cannot decode compressed image"),
        ("png", bytes(range(200)), "cannot decode"),
        ("16UC1; compressedDepth png", b"\x89PNG", "compressedDepth"),
    ],
)
def test_broken_compressed_images_raise(fmt: str, data: bytes, message: str) -> None:
    with pytest.raises(ImageDecodeError, match=message):
        compressed_msg_to_array(SimpleNamespace(format=fmt, data=data))


def test_truncated_jpeg_is_rejected(scene: np.ndarray) -> None:
    _, jpeg = cv2.imencode(".jpg", scene)
    with pytest.raises(ImageDecodeError, match="cannot decode"):
        compressed_msg_to_array(SimpleNamespace(format="jpeg", data=jpeg.tobytes()[: jpeg.size // 2]))


@pytest.mark.parametrize(
    "array_,encoding",
    [
        (np.arange(12, dtype=np.uint8).reshape(3, 4), "mono8"),
        (np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4), "32FC1"),
        (np.arange(36, dtype=np.uint8).reshape(3, 4, 3), "rgb8"),
        (np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000, "mono16"),
    ],
)
def test_array_to_image_fields_round_trip(array_: np.ndarray, encoding: str) -> None:
    fields = array_to_image_fields(array_, encoding)
    assert (fields["height"], fields["width"], fields["encoding"]) == (3, 4, encoding)
    assert fields["step"] * fields["height"] == len(fields["data"])
    assert isinstance(fields["data"], array.array) and fields["data"].typecode == "B"
    restored = np.frombuffer(fields["data"], array_.dtype).reshape(array_.shape)
    np.testing.assert_array_equal(restored, array_)
    if encoding in SUPPORTED_ENCODINGS:
        decoded, _ = image_msg_to_array(SimpleNamespace(**fields))
        # mono16 comes down to 8 bits by the bits its peak uses (11000: 14 bits, so >> 6).
        grey = (array_ >> 6).astype(np.uint8) if array_.dtype == np.uint16 else array_
        expected = array_ if array_.ndim == 3 else np.repeat(grey[..., None], 3, 2)
        np.testing.assert_array_equal(decoded, expected)


def test_array_to_image_fields_copies_strided_input() -> None:
    base = np.arange(60, dtype=np.uint8).reshape(5, 12)
    view = base[:, ::3]
    fields = array_to_image_fields(view, "mono8")
    np.testing.assert_array_equal(np.frombuffer(fields["data"], np.uint8).reshape(5, 4), view)


@pytest.mark.parametrize(
    "array_,encoding,message",
    [
        (np.zeros((3, 4), np.uint8), "yuyv", "cannot publish encoding 'yuyv'"),
        (np.zeros((3, 4), np.float32), "mono8", "mono8 needs an array of 1 channel"),
        (np.zeros((3, 4, 3), np.uint8), "mono8", "got shape \\(3, 4, 3\\)"),
        (np.zeros((3, 4), np.uint8), "rgb8", "rgb8 needs an array of 3 channel"),
        (np.zeros((0, 4), np.uint8), "mono8", "empty image"),
    ],
)
def test_array_to_image_fields_rejects_mismatches(array_: np.ndarray, encoding: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        array_to_image_fields(array_, encoding)
