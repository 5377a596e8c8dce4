"""rosbag2 bags of camera frames with ground truth, written and read with ``rosbags`` (no ROS).

Bag convention (what ``rtseg make-bag`` writes and ``rtseg eval`` reads), one frame = one stamp:

============================  =========================  =============================================
topic                         type                       content
============================  =========================  =============================================
``/camera/image_raw``         sensor_msgs/Image          rgb8 camera frame (CompressedImage also read)
``/camera/camera_info``       sensor_msgs/CameraInfo     image size; pinhole K/P of a rectified image
                                                         when known (Cityscapes), else zero (uncalibrated)
``/ground_truth/labels``      sensor_msgs/Image          mono8 train ids, 255 = ignore
``/ground_truth/file_name``   std_msgs/String            the frame's image path relative to the data
                                                         set root, e.g. ``leftImg8bit/val/...png``
============================  =========================  =============================================

Every message of a frame carries the frame's stamp: the header stamp of the image, camera info
and labels, and the bag (log) time of all four, since ``std_msgs/String`` has no header. Frames
are grouped by that stamp when read, so labels and names stay attached to their image whatever
the storage order.

Bags are rosbag2 metadata version 9 (Jazzy), in mcap (default) or sqlite3 storage. The metadata's
``custom_data`` records where the frames came from (``rtseg_ros.dataset``, ``rtseg_ros.split``) and the
label set of the ground truth (``rtseg_ros.label_set``), so an evaluation needs no flag for it. Reading
streams: a handful of frames are held at a time, never the whole bag. A message that cannot be
deserialised or decoded is skipped and counted; a bag that breaks off mid-way ends the stream
with the error recorded, and everything read until then stays valid.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import yaml
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from rtseg_ros.io.images import (
    ImageDecodeError,
    array_to_image_fields,
    compressed_msg_to_array,
    image_msg_to_array,
    label_msg_to_array,
)

LOG = logging.getLogger(__name__)

IMAGE_TOPIC = "/camera/image_raw"
CAMERA_INFO_TOPIC = "/camera/camera_info"
LABEL_TOPIC = "/ground_truth/labels"
FILE_NAME_TOPIC = "/ground_truth/file_name"
DEFAULT_FRAME_ID = "camera"
BAG_FORMAT_VERSION = 9  # rosbag2 metadata version written by Jazzy
STORAGES: dict[str, StoragePlugin] = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
CUSTOM_LABEL_SET = "rtseg_ros.label_set"
CUSTOM_DATASET = "rtseg_ros.dataset"
CUSTOM_SPLIT = "rtseg_ros.split"

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
STRING_TYPE = "std_msgs/msg/String"

# Skip reasons, also the keys of evaluation reports' ``skipped`` counts.
SKIP_UNDECODABLE_MESSAGE = "undecodable message"
SKIP_BAD_IMAGE = "bad image"
SKIP_BAD_LABELS = "bad ground-truth image"
SKIP_LABELS_WITHOUT_IMAGE = "ground truth without image"
SKIP_DUPLICATE_STAMP = "duplicate stamp"
SKIP_BAG_READ_ERROR = "bag read error"

# The Jazzy message definitions, for building and parsing messages without ROS.
TYPESTORE = get_typestore(Stores.ROS2_JAZZY)


class SkipTally:
    """Things skipped (or flagged) while reading or scoring, counted by reason.

    The first ``keep_per_reason`` messages of each reason are kept for reports and logged; later
    ones are only counted, so a bag full of bad frames neither floods the log nor grows memory.
    """

    def __init__(self, keep_per_reason: int = 5) -> None:
        self.counts: Counter = Counter()
        self.messages: list[str] = []
        self.keep_per_reason = keep_per_reason

    def record(self, reason: str, detail: str) -> None:
        """Count one occurrence of ``reason``; ``detail`` says which item and why."""
        self.counts[reason] += 1
        if self.counts[reason] <= self.keep_per_reason:
            self.messages.append(f"{reason}: {detail}")
            LOG.warning("%s: %s", reason, detail)

    @staticmethod
    def merged(*tallies: "SkipTally") -> "SkipTally":
        """A new tally with the counts added up and the messages concatenated."""
        total = SkipTally()
        for tally in tallies:
            total.counts.update(tally.counts)
            total.messages.extend(tally.messages)
        return total


class BagError(ValueError):
    """A bag cannot be opened or written (missing, not a rosbag2, wrong topics, exists already)."""


@dataclass
class BagFrame:
    """One camera frame read from a bag, with whatever ground truth shares its stamp.

    Attributes:
        stamp_ns: the image header stamp in nanoseconds.
        image: HxWx3 uint8, in ``color_order``; may be a read-only view of the message buffer.
        color_order: ``"rgb"`` or ``"bgr"``.
        labels: HxW uint8 train ids, or ``None`` when the bag holds none for this stamp.
        name: the recorded file name, or ``None``.
        frame_id: the image header's frame id.
    """

    stamp_ns: int
    image: np.ndarray
    color_order: str
    labels: np.ndarray | None = None
    name: str | None = None
    frame_id: str = ""


@dataclass
class _Pending:
    image: tuple[np.ndarray, str, str] | None = None
    labels: np.ndarray | None = None
    name: str | None = None


def stamp_ns(header: Any) -> int:
    """A message header's stamp in integer nanoseconds (the key frames are matched by)."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _header(stamp_ns: int, frame_id: str) -> Any:
    time_type = TYPESTORE.types["builtin_interfaces/msg/Time"]
    header_type = TYPESTORE.types["std_msgs/msg/Header"]
    return header_type(stamp=time_type(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000),
                       frame_id=frame_id)


class BagWriter:
    """Writes frames in the bag convention above; use as a context manager.

    Args:
        path: the bag folder to create (must not exist).
        storage: ``mcap`` or ``sqlite3``.
        frame_id: header frame id of images, camera info and labels.
        custom_data: string pairs for the metadata's ``custom_data`` (see ``CUSTOM_*``).
    """

    def __init__(self, path: str | Path, storage: str = "mcap", frame_id: str = DEFAULT_FRAME_ID,
                 custom_data: dict[str, str] | None = None) -> None:
        if storage not in STORAGES:
            raise BagError(f"unknown bag storage {storage!r}; choose {' or '.join(STORAGES)}")
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"{self.path} exists already; remove it or choose another output path")
        self.frame_id = frame_id
        self.frames_written = 0
        self._writer = Writer(self.path, version=BAG_FORMAT_VERSION, storage_plugin=STORAGES[storage])
        for key, value in (custom_data or {}).items():
            self._writer.set_custom_data(key, value)
        self._writer.open()
        add = self._writer.add_connection
        self._image = add(IMAGE_TOPIC, IMAGE_TYPE, typestore=TYPESTORE)
        self._info = add(CAMERA_INFO_TOPIC, CAMERA_INFO_TYPE, typestore=TYPESTORE)
        self._labels = add(LABEL_TOPIC, IMAGE_TYPE, typestore=TYPESTORE)
        self._name = add(FILE_NAME_TOPIC, STRING_TYPE, typestore=TYPESTORE)

    def __enter__(self) -> "BagWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Finish the bag (writes metadata.yaml); safe to call twice."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _image_msg(self, array: np.ndarray, encoding: str, stamp_ns: int) -> Any:
        fields = array_to_image_fields(array, encoding)
        fields["data"] = np.frombuffer(fields["data"], dtype=np.uint8)
        return TYPESTORE.types[IMAGE_TYPE](header=_header(stamp_ns, self.frame_id), **fields)

    def _camera_info_msg(self, height: int, width: int, stamp_ns: int,
                         intrinsics: tuple[float, float, float, float] | None) -> Any:
        roi = TYPESTORE.types["sensor_msgs/msg/RegionOfInterest"](
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        if intrinsics is None:
            # All zero: ROS's convention for an uncalibrated camera.
            model, d, k, r, p = "", np.zeros(0), np.zeros(9), np.zeros(9), np.zeros(12)
        else:
            fx, fy, cx, cy = intrinsics
            # The frames are already rectified: no distortion, identity rectification, P = [K | 0].
            model, d, r = "plumb_bob", np.zeros(5), np.eye(3).reshape(-1)
            k = np.array([fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0])
            p = np.array([fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0])
        return TYPESTORE.types[CAMERA_INFO_TYPE](
            header=_header(stamp_ns, self.frame_id), height=height, width=width, distortion_model=model,
            d=d, k=k, r=r, p=p, binning_x=0, binning_y=0, roi=roi)

    def _write(self, connection: Any, msg: Any, stamp_ns: int) -> None:
        if self._writer is None:
            raise BagError(f"bag {self.path} is closed")
        self._writer.write(connection, stamp_ns, TYPESTORE.serialize_cdr(msg, connection.msgtype))

    def write_frame(self, stamp_ns: int, image: np.ndarray, labels: np.ndarray | None = None,
                    name: str | None = None, intrinsics: tuple[float, float, float, float] | None = None) -> None:
        """Write one frame: the image (HxWx3 uint8 RGB), its camera info (pinhole ``(fx, fy, cx, cy)``
        if given), and if given its labels (HxW uint8 train ids, same size) and file name, all stamped
        ``stamp_ns``."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"images must be HxWx3 uint8 RGB, got shape {image.shape} of {image.dtype}")
        if labels is not None and labels.shape != image.shape[:2]:
            raise ValueError(f"labels {labels.shape} and image {image.shape[:2]} differ in size")
        height, width = image.shape[:2]
        self._write(self._image, self._image_msg(image, "rgb8", stamp_ns), stamp_ns)
        self._write(self._info, self._camera_info_msg(height, width, stamp_ns, intrinsics), stamp_ns)
        if labels is not None:
            self._write(self._labels, self._image_msg(labels.astype(np.uint8, copy=False), "mono8", stamp_ns),
                        stamp_ns)
        if name is not None:
            self._write(self._name, TYPESTORE.types[STRING_TYPE](data=name), stamp_ns)
        self.frames_written += 1


@dataclass
class BagFrameReader:
    """Streams :class:`BagFrame` objects from a bag; counts what it had to skip.

    Args:
        path: the bag folder (with ``metadata.yaml``).
        image_topic, label_topic, name_topic: where to find frames, labels and file names.
        window: how many stamps may be open at once while their messages arrive; the bag is
            ordered by time, so a small window suffices and bounds memory.

    What had to be skipped is counted in ``tally`` (pass one to share it with a caller).
    """

    path: str | Path
    image_topic: str = IMAGE_TOPIC
    label_topic: str = LABEL_TOPIC
    name_topic: str = FILE_NAME_TOPIC
    window: int = 4
    tally: SkipTally = field(default_factory=SkipTally)

    def _open(self) -> Reader:
        path = Path(self.path)
        if not path.exists():
            raise BagError(f"bag not found: {path}")
        try:
            reader = Reader(path)
            reader.open()
        except Exception as exc:  # rosbags raises several kinds for broken metadata or storage
            raise BagError(f"cannot open bag {path} (truncated, corrupt or not a rosbag2?): {exc}") from exc
        return reader

    def frame_count(self) -> int:
        """The number of image messages the bag's metadata announces (for progress bars)."""
        reader = self._open()
        try:
            return sum(c.msgcount for c in reader.connections if c.topic == self.image_topic)
        finally:
            reader.close()

    def __iter__(self) -> Iterator[BagFrame]:
        reader = self._open()
        try:
            wanted = [c for c in reader.connections if c.topic in (self.image_topic, self.label_topic, self.name_topic)]
            if not any(c.topic == self.image_topic for c in wanted):
                topics = ", ".join(sorted({c.topic for c in reader.connections})) or "none"
                raise BagError(f"bag {self.path} has no {self.image_topic} topic (topics: {topics})")
            pending: dict[int, _Pending] = {}
            messages = reader.messages(connections=wanted)
            while True:
                try:
                    item = next(messages)
                except StopIteration:
                    break
                except Exception as exc:  # truncated or corrupt storage: keep what was read
                    self.tally.record(SKIP_BAG_READ_ERROR, f"{type(exc).__name__}: {exc}")
                    break
                self._add(pending, *item)
                while len(pending) > self.window:
                    yield from self._emit(pending, min(pending))
            for stamp in sorted(pending):
                yield from self._emit(pending, stamp)
        finally:
            reader.close()

    def _add(self, pending: dict[int, _Pending], connection: Any, log_time: int, raw: bytes) -> None:
        try:
            msg = TYPESTORE.deserialize_cdr(raw, connection.msgtype)
        except Exception as exc:  # any corruption of the CDR bytes
            self.tally.record(SKIP_UNDECODABLE_MESSAGE, f"{connection.topic} at {log_time}: {type(exc).__name__}: {exc}")
            return
        if connection.topic == self.name_topic:
            pending.setdefault(log_time, _Pending()).name = str(msg.data)
            return
        stamp = stamp_ns(msg.header)
        try:
            if connection.topic == self.image_topic:
                decode = compressed_msg_to_array if connection.msgtype == COMPRESSED_TYPE else image_msg_to_array
                image, order = decode(msg)
                entry = pending.setdefault(stamp, _Pending())
                if entry.image is not None:
                    self.tally.record(SKIP_DUPLICATE_STAMP, f"second image at stamp {stamp}")
                    return
                entry.image = (image, order, str(msg.header.frame_id))
            else:
                pending.setdefault(stamp, _Pending()).labels = label_msg_to_array(msg)
        except (ImageDecodeError, AttributeError) as exc:
            reason = SKIP_BAD_IMAGE if connection.topic == self.image_topic else SKIP_BAD_LABELS
            self.tally.record(reason, f"stamp {stamp}: {exc}")

    def _emit(self, pending: dict[int, _Pending], stamp: int) -> Iterator[BagFrame]:
        entry = pending.pop(stamp)
        if entry.image is None:
            if entry.labels is not None:
                self.tally.record(SKIP_LABELS_WITHOUT_IMAGE, f"stamp {stamp}")
            return
        image, order, frame_id = entry.image
        yield BagFrame(stamp, image, order, entry.labels, entry.name, frame_id)


def _bag_information(path: str | Path) -> dict[str, Any]:
    metadata = Path(path) / "metadata.yaml"
    try:
        info = yaml.safe_load(metadata.read_text())["rosbag2_bagfile_information"]
        if not isinstance(info, dict):
            raise TypeError("rosbag2_bagfile_information is not a mapping")
        return info
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise BagError(f"cannot read bag metadata {metadata}: {exc}") from exc


def bag_storage(path: str | Path) -> str:
    """The storage plugin (``mcap`` or ``sqlite3``) named in a bag's metadata."""
    return str(_bag_information(path).get("storage_identifier", ""))


def bag_custom_data(path: str | Path) -> dict[str, str]:
    """The ``custom_data`` of a bag's metadata (empty when it has none)."""
    return {str(k): str(v) for k, v in (_bag_information(path).get("custom_data") or {}).items()}


def write_frames(path: str | Path, frames: Iterable[tuple[np.ndarray, np.ndarray | None, str | None]],
                 storage: str = "mcap", start_ns: int = 1_700_000_000 * 1_000_000_000,
                 period_ns: int = 100_000_000, frame_id: str = DEFAULT_FRAME_ID) -> int:
    """Write ``(image RGB, labels or None, name or None)`` triples as a bag, one frame every ``period_ns``.

    Frames are consumed one at a time. If writing fails part-way, the bag is still closed, so the
    frames written so far stay readable. Returns the number of frames written.
    """
    with BagWriter(path, storage, frame_id) as writer:
        for index, (image, labels, name) in enumerate(frames):
            writer.write_frame(start_ns + index * period_ns, image, labels, name)
        return writer.frames_written
