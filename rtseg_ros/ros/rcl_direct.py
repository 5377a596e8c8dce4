"""Serialised messages taken from and handed to rcl itself, one copy fewer each way than rclpy.

rclpy's ``raw=True`` subscription takes a message into a freshly allocated buffer and copies it once
more into a ``bytes`` object; its ``Publisher.publish(bytes)`` copies the bytes into a string before
rcl sees them. For a 6 MB camera frame and a 2 MB label image on this machine that is about 0.6 ms in
and 0.5 ms out, plus the executor's hand-off to the inference thread. Here, through ``ctypes`` and the
rcl library rclpy has already loaded:

- :class:`SerializedSubscription` is an rcl subscription of the node that no rclpy executor sees. Its
  owner waits on it and takes each message (``rcl_take_serialized_message``) into one buffer kept
  from message to message; the caller reads a view of it, valid until the next take.
- :class:`SerializedPublisher` publishes a buffer of the caller's (``rcl_publish_serialized_message``)
  without copying it first: the middleware copies it once, into its own history, before the call returns.
- :class:`FrameTaker` is the thread that takes frames and handles each one where it was taken.

Only rcl's C API is used (stable since Dashing: the same calls and structs in Humble and Jazzy), with
rclpy's own handles (``.pointer``) and wait set. When any of it is missing :class:`DirectIoUnavailable`
says what, and the node falls back to rclpy's executor and ``Publisher.publish``.

This module imports rclpy, never torch.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DirectIoUnavailable",
    "FrameTaker",
    "SerializedPublisher",
    "SerializedSubscription",
    "TakenMessage",
    "check_available",
]

_log = logging.getLogger(__name__)

_RCL_RET_OK = 0
_RCL_RET_SUBSCRIPTION_TAKE_FAILED = 401
# rmw_message_info_t: two int64 stamps, the publication and reception sequence numbers (uint64), then
# the publisher's gid (a pointer, then 16 bytes in Jazzy and 24 in Humble, of which 16 are read).
_INFO_SIZE = 128
_SEQUENCE_OFFSET = 16
_GID_OFFSET = 40
_GID_BYTES = 16
_SEQUENCE_UNSUPPORTED = 2**64 - 1


class DirectIoUnavailable(RuntimeError):
    """rcl cannot be reached directly here (library, symbol or rclpy handle missing); use rclpy's path."""


class _Allocator(ctypes.Structure):
    """``rcutils_allocator_t``."""

    _fields_ = [("allocate", ctypes.c_void_p), ("deallocate", ctypes.c_void_p), ("reallocate", ctypes.c_void_p),
                ("zero_allocate", ctypes.c_void_p), ("state", ctypes.c_void_p)]


class _SerializedMessage(ctypes.Structure):
    """``rcl_serialized_message_t`` (``rcutils_uint8_array_t``)."""

    _fields_ = [("buffer", ctypes.c_void_p), ("buffer_length", ctypes.c_size_t),
                ("buffer_capacity", ctypes.c_size_t), ("allocator", _Allocator)]


@dataclass(frozen=True)
class _Rcl:
    take: Any
    publish: Any
    array_init: Any
    array_fini: Any
    default_allocator: Any


@functools.lru_cache(maxsize=1)
def _rcl() -> _Rcl:
    """The rcl and rcutils functions, from the libraries rclpy loaded (found by their sonames)."""
    import rclpy  # noqa: F401 - loads librcl and librcutils into the process first

    try:
        rcl = ctypes.CDLL("librcl.so")
        rcutils = ctypes.CDLL("librcutils.so")
        take = rcl.rcl_take_serialized_message
        publish = rcl.rcl_publish_serialized_message
        array_init = rcutils.rcutils_uint8_array_init
        array_fini = rcutils.rcutils_uint8_array_fini
        default_allocator = rcutils.rcutils_get_default_allocator
    except (OSError, AttributeError) as exc:
        raise DirectIoUnavailable(f"rcl is not reachable through ctypes: {exc}") from None
    message = ctypes.POINTER(_SerializedMessage)
    # ctypes releases the GIL for each call: the copies below run while Python threads go on.
    take.argtypes, take.restype = [ctypes.c_void_p, message, ctypes.c_void_p, ctypes.c_void_p], ctypes.c_int
    publish.argtypes, publish.restype = [ctypes.c_void_p, message, ctypes.c_void_p], ctypes.c_int
    array_init.argtypes, array_init.restype = [message, ctypes.c_size_t, ctypes.POINTER(_Allocator)], ctypes.c_int
    array_fini.argtypes, array_fini.restype = [message], ctypes.c_int
    default_allocator.argtypes, default_allocator.restype = [], _Allocator
    return _Rcl(take, publish, array_init, array_fini, default_allocator)


def check_available() -> None:
    """Load what this module needs from rcl, and check that rclpy's handles give their rcl pointers, so that
    a caller can still choose rclpy's path before it makes any of this module's objects.

    Raises:
        DirectIoUnavailable: what is missing.
    """
    from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy

    _rcl()
    for kind in ("Subscription", "Publisher", "WaitSet"):
        if not hasattr(getattr(_rclpy, kind, None), "pointer"):
            raise DirectIoUnavailable(f"this rclpy's {kind} handle has no 'pointer'")


def _pointer(handle: Any, what: str) -> int:
    pointer = getattr(handle, "pointer", None)
    if not isinstance(pointer, int):
        raise DirectIoUnavailable(f"this rclpy's {what} handle has no 'pointer'")
    return pointer


@dataclass(frozen=True)
class TakenMessage:
    """One message taken: its CDR bytes (a view, valid until the next take) and where it came from.

    Attributes:
        data: the serialised message.
        publisher: the sending publisher's gid (its first 16 bytes).
        sequence: the publisher's sequence number of the message, or ``None`` if the middleware has none.
    """

    data: memoryview
    publisher: bytes
    sequence: int | None


class SerializedSubscription:
    """A subscription of ``node`` whose messages its owner takes (:meth:`take`); rclpy's executors never see it.

    It is rcl's subscription of the node like any other (``ros2 node info`` lists it; remapping and the
    namespace apply), created with rclpy's own binding. Not thread-safe: one thread takes.

    Raises:
        DirectIoUnavailable: rcl or the handles this needs are not there.
    """

    def __init__(self, node: Any, msg_type: type, topic: str, qos: Any) -> None:
        from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
        from rclpy.type_support import check_is_valid_msg_type

        self._rcl = _rcl()
        check_is_valid_msg_type(msg_type)  # also loads its type support, as create_subscription does
        with node.handle:
            self._handle = _rclpy.Subscription(node.handle, msg_type, topic, qos.get_c_qos_profile())
        try:
            self._pointer = _pointer(self._handle, "subscription")
            self._wait_set = _rclpy.WaitSet(1, 0, 0, 0, 0, 0, node.context.handle)
            self._message = _SerializedMessage()
            allocator = self._rcl.default_allocator()
            if self._rcl.array_init(ctypes.byref(self._message), 0, ctypes.byref(allocator)) != _RCL_RET_OK:
                raise DirectIoUnavailable("rcutils_uint8_array_init failed")
        except Exception:
            self._handle.destroy_when_not_in_use()
            raise
        self._info = ctypes.create_string_buffer(_INFO_SIZE)
        self._destroyed = False

    def take(self, timeout_s: float) -> TakenMessage | None:
        """The next message, waiting up to ``timeout_s`` for one; ``None`` if none came.

        Raises:
            RuntimeError: rcl failed to take (the subscription or its context is gone).
        """
        with self._handle:
            self._wait_set.clear_entities()
            self._wait_set.add_subscription(self._handle)
            self._wait_set.wait(int(timeout_s * 1e9))
            if self._pointer not in self._wait_set.get_ready_entities("subscription"):
                return None
            ret = self._rcl.take(self._pointer, ctypes.byref(self._message), self._info, None)
        if ret == _RCL_RET_SUBSCRIPTION_TAKE_FAILED:
            return None
        if ret != _RCL_RET_OK:
            raise RuntimeError(f"rcl_take_serialized_message failed with code {ret}")
        length = self._message.buffer_length
        # rmw may have moved the buffer to grow it, so the view is made per take (a few microseconds).
        data = memoryview((ctypes.c_uint8 * length).from_address(self._message.buffer)).cast("B")
        sequence = struct.unpack_from("<Q", self._info, _SEQUENCE_OFFSET)[0]
        return TakenMessage(data, self._info.raw[_GID_OFFSET:_GID_OFFSET + _GID_BYTES],
                            None if sequence in (0, _SEQUENCE_UNSUPPORTED) else sequence)

    def destroy(self) -> None:
        """Destroy the subscription and free the buffer (after the last take; views of it become invalid)."""
        if self._destroyed:
            return
        self._destroyed = True
        self._handle.destroy_when_not_in_use()
        self._rcl.array_fini(ctypes.byref(self._message))


class SerializedPublisher:
    """Publishes serialised messages held in the caller's buffers through ``publisher`` (an rclpy Publisher).

    Raises:
        DirectIoUnavailable: rcl or the publisher's handle pointer is not there.
    """

    def __init__(self, publisher: Any) -> None:
        self._rcl = _rcl()
        self.publisher = publisher
        self._pointer = _pointer(publisher.handle, "publisher")
        self._message = _SerializedMessage()
        # Never used (rcl does not resize a message it publishes), but rcl checks that it is valid.
        self._message.allocator = self._rcl.default_allocator()
        self._lock = threading.Lock()

    def get_subscription_count(self) -> int:
        return self.publisher.get_subscription_count()

    def publish(self, data: memoryview) -> None:
        """Publish the serialised message ``data`` (a C-contiguous byte buffer); it is copied before this returns.

        Raises:
            RuntimeError: rcl refused it (the publisher or its context is gone).
        """
        view = memoryview(data).cast("B")
        if view.readonly:  # bytes: ctypes takes the address of writable buffers only
            view = memoryview(bytearray(view))
        length = view.nbytes
        with self._lock, self.publisher.handle:
            address = ctypes.addressof(ctypes.c_uint8.from_buffer(view))
            self._message.buffer, self._message.buffer_length, self._message.buffer_capacity = address, length, length
            ret = self._rcl.publish(self._pointer, ctypes.byref(self._message), None)
            self._message.buffer = None
        if ret != _RCL_RET_OK:
            raise RuntimeError(f"rcl_publish_serialized_message failed with code {ret}")


class FrameTaker:
    """Takes messages from a :class:`SerializedSubscription` on its own thread and handles each one there.

    No queue and no hand-off: while ``handle`` runs, new messages wait in the subscription's own
    history (its QoS depth; the oldest are replaced), and the next take gets the oldest kept. The
    messages replaced meanwhile are counted from the publisher's sequence numbers and passed to
    ``handle`` with the next one, for the caller's drop count.

    Args:
        subscription: where the messages come from; destroyed by :meth:`stop`.
        handle: ``handle(data, received_ns, missed)``; ``data`` is valid only during the call.
        clock_ns: the receive time source (the node's clock).
    """

    def __init__(self, subscription: SerializedSubscription, handle: Callable[[memoryview, int, int], None],
                 clock_ns: Callable[[], int], name: str = "frame-taker") -> None:
        self._subscription = subscription
        self._handle = handle
        self._clock_ns = clock_ns
        self._stopping = threading.Event()
        self._last: tuple[bytes, int] | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _missed(self, message: TakenMessage) -> int:
        """How many of this publisher's messages were sent since the previous one taken and never taken."""
        last, self._last = self._last, (None if message.sequence is None else (message.publisher, message.sequence))
        if last is None or message.sequence is None or last[0] != message.publisher or message.sequence <= last[1]:
            return 0
        return message.sequence - last[1] - 1

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                message = self._subscription.take(0.1)
            except Exception as exc:  # noqa: BLE001 - the context was shut down: nothing more to take
                if not self._stopping.is_set():
                    _log.warning("no more frames are taken: %s", exc)
                return
            if message is None:
                continue
            try:
                self._handle(message.data, self._clock_ns(), self._missed(message))
            except Exception:  # noqa: BLE001 - the handler reports its own errors; this keeps the thread alive
                _log.exception("frame handler failed")

    def stop(self, timeout: float | None = 5.0) -> None:
        """Finish the message in hand, stop taking and destroy the subscription."""
        self._stopping.set()
        self._thread.join(timeout)
        if not self._thread.is_alive():  # else a handler still runs: the subscription goes with the process
            self._subscription.destroy()
