"""rcl's serialised take and publish (``rtseg_ros.ros.rcl_direct``): what the node's direct_io path rests on.

In one process, two rclpy contexts (a publisher's and a subscriber's), so the messages really cross the
middleware. The messages are checked against rclpy's own deserialisation; the node with and without
direct_io is in ``test_ros_node.py`` and ``test_ros_datapath.py``.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from ros_helpers import Image, rclpy
from rtseg_ros.io.cdr import CdrHeader, ImageWriter, read_image
from rtseg_ros.ros.rcl_direct import FrameTaker, SerializedPublisher, SerializedSubscription

TOPIC = "/rcl_direct_test/image"


class _Pair:
    """A publisher node and a subscriber node, each in its own context."""

    def __init__(self, depth: int) -> None:
        from rclpy.context import Context
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        self.contexts = [Context(), Context()]
        for context in self.contexts:
            rclpy.init(context=context)
        self.qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)
        self.pub_node = Node("rcl_direct_pub", context=self.contexts[0])
        self.sub_node = Node("rcl_direct_sub", context=self.contexts[1])
        self.publisher = SerializedPublisher(self.pub_node.create_publisher(Image, TOPIC, self.qos))
        self.subscription = SerializedSubscription(self.sub_node, Image, TOPIC, self.qos)

    def wait_matched(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.publisher.get_subscription_count() == 0 or self.sub_node.count_publishers(TOPIC) == 0:
            assert time.monotonic() < deadline, "the publisher and subscription did not match"
            time.sleep(0.05)

    def close(self) -> None:
        self.subscription.destroy()
        self.pub_node.destroy_node()
        self.sub_node.destroy_node()
        for context in self.contexts:
            rclpy.try_shutdown(context=context)


@pytest.fixture
def pair(request: pytest.FixtureRequest) -> Iterator[_Pair]:
    pair = _Pair(getattr(request, "param", 10))
    pair.wait_matched()
    yield pair
    pair.close()


def _take(subscription: SerializedSubscription, timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = subscription.take(0.1)
        if message is not None:
            return message
    raise AssertionError("no message taken")


def test_published_buffers_arrive_as_standard_images(pair: _Pair) -> None:
    from rclpy.serialization import deserialize_message

    writer = ImageWriter("mono8", 1, np.uint8)
    rng = np.random.default_rng(0)
    for index, shape in enumerate([(48, 64), (480, 640), (48, 64)]):  # a larger message makes rmw grow the buffer
        pixels = rng.integers(0, 19, shape, dtype=np.uint8)
        pair.publisher.publish(writer.write_into_buffer(CdrHeader.make(7, index, "cam"), pixels))
        message = _take(pair.subscription)
        image = deserialize_message(bytes(message.data), Image)
        assert (image.header.stamp.sec, image.header.stamp.nanosec, image.header.frame_id) == (7, index, "cam")
        assert (image.height, image.width, image.encoding) == (*shape, "mono8")
        np.testing.assert_array_equal(np.frombuffer(bytes(image.data), np.uint8).reshape(shape), pixels)
        # The node reads the same bytes in place.
        view = read_image(message.data)
        assert (view.header.sec, view.header.nanosec, view.header.frame_id) == (7, index, "cam")
        assert message.sequence == index + 1 and len(message.publisher) == 16


def test_bytes_are_published_too(pair: _Pair) -> None:
    data = ImageWriter("mono8", 1, np.uint8).write(CdrHeader.make(1, 2, "c"), np.full((2, 3), 5, np.uint8))
    pair.publisher.publish(data)  # read-only: copied first
    assert bytes(_take(pair.subscription).data) == data


def test_take_without_a_message_returns_none(pair: _Pair) -> None:
    started = time.monotonic()
    assert pair.subscription.take(0.2) is None
    assert time.monotonic() - started >= 0.15


@pytest.mark.parametrize("pair", [1], indirect=True)
def test_frame_taker_counts_the_messages_replaced_while_it_was_busy(pair: _Pair) -> None:
    """Depth 1: messages published while the handler runs replace each other; the taker counts them."""
    writer = ImageWriter("mono8", 1, np.uint8)
    handled: list[tuple[int, int]] = []
    release = threading.Event()
    first = threading.Event()

    def handle(data: memoryview, received_ns: int, missed: int) -> None:
        handled.append((read_image(data).header.nanosec, missed))
        first.set()
        release.wait(10.0)
        if len(handled) == 2:
            raise RuntimeError("a failing handler does not stop the taker")

    taker = FrameTaker(pair.subscription, handle, time.monotonic_ns)
    try:
        pair.publisher.publish(writer.write_into_buffer(CdrHeader.make(0, 0, "c"), np.zeros((2, 2), np.uint8)))
        assert first.wait(10.0)
        for index in range(1, 5):  # the handler is busy: each replaces the one before
            pair.publisher.publish(writer.write_into_buffer(CdrHeader.make(0, index, "c"), np.zeros((2, 2), np.uint8)))
        time.sleep(0.5)
        release.set()
        deadline = time.monotonic() + 10.0
        while len(handled) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        pair.publisher.publish(writer.write_into_buffer(CdrHeader.make(0, 5, "c"), np.zeros((2, 2), np.uint8)))
        while len(handled) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        release.set()
        taker.stop()
    assert handled == [(0, 0), (4, 3), (5, 0)]
    pair.subscription.destroy()  # stop() destroyed it already: a second destroy is harmless
