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
deserialised or decoded is skipped and counted.

A damaged bag gives up the frames before the damage (:class:`BagDamage` says what was kept):

* sqlite3: messages are read in time order until the database reports the damage;
* mcap: a file that ``rosbags`` cannot open (it reads the summary at the file's end, which a cut
  short file lacks) is read front to back instead, up to the first damaged record
  (:mod:`rtseg_ros.io.mcap_recovery`); a bad chunk met while reading an intact file ends the
  stream the same way.

The frame whose messages were being read when the damage was met is left out, since some of them
(its labels, its file name) may be missing; every earlier frame is whole, because a frame's
messages are written before the next frame's.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
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
from rtseg_ros.io.mcap_recovery import McapRecovery, McapRecoveryError
from rtseg_ros.skips import (
    SKIP_BAD_IMAGE,
    SKIP_BAD_LABELS,
    SKIP_BAG_READ_ERROR,
    SKIP_DUPLICATE_STAMP,
    SKIP_LABELS_WITHOUT_IMAGE,
    SKIP_UNDECODABLE_MESSAGE,
    SkipTally,
)

IMAGE_TOPIC = "/camera/image_raw"
CAMERA_INFO_TOPIC = "/camera/camera_info"
LABEL_TOPIC = "/ground_truth/labels"
FILE_NAME_TOPIC = "/ground_truth/file_name"
DEFAULT_FRAME_ID = "camera"
BAG_FORMAT_VERSION = 9  # rosbag2 metadata version written by Jazzy
STORAGES: dict[str, StoragePlugin] = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
CUSTOM_LABEL_SET = "rtseg_ros.label_set"
# A label set from a file is recorded whole (its JSON, LabelSet.to_json) beside its name.
CUSTOM_LABEL_SET_DEFINITION = "rtseg_ros.label_set_definition"
CUSTOM_DATASET = "rtseg_ros.dataset"
CUSTOM_SPLIT = "rtseg_ros.split"

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
STRING_TYPE = "std_msgs/msg/String"

# The Jazzy message definitions, for building and parsing messages without ROS.
TYPESTORE = get_typestore(Stores.ROS2_JAZZY)


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
        camera_info: the recorded ``sensor_msgs/CameraInfo`` with the frame's stamp (a rosbags
            message), when the reader was asked for camera info and the bag has one.
    """

    stamp_ns: int
    image: np.ndarray
    color_order: str
    labels: np.ndarray | None = None
    name: str | None = None
    frame_id: str = ""
    camera_info: Any | None = None


@dataclass
class _Pending:
    image: tuple[np.ndarray, str, str] | None = None
    labels: np.ndarray | None = None
    name: str | None = None
    camera_info: Any | None = None
    image_messages: int = 0


@dataclass(frozen=True)
class BagDamage:
    """What a damaged bag gave up: where the damage is and how many frames were kept and lost.

    Attributes:
        storage: ``mcap`` or ``sqlite3``.
        file: the damaged storage file's name (inside the bag folder), when known.
        offset: byte offset in ``file`` of the first record that could not be read (mcap read front
            to back; for a file that ends between two records, its size), else ``None``.
        file_size: the damaged file's size in bytes, when known.
        reason: what is wrong there.
        frames_recovered: frames read before the damage (those the reader yields).
        frames_lost: image messages the bag's metadata announces that were not read, ``None``
            when the metadata has no count; the frame left out at the damage is among them.
        messages_recovered: messages of the frame topics read before the damage.
    """

    storage: str
    file: str | None
    offset: int | None
    file_size: int | None
    reason: str
    frames_recovered: int
    frames_lost: int | None
    messages_recovered: int

    def as_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (the ``source.damage`` block of an evaluation report)."""
        return asdict(self)

    def describe(self) -> str:
        """One sentence for logs and summaries."""
        where = self.file or f"the {self.storage} storage"
        if self.offset is not None:
            where += f" at byte {self.offset}" + (f" of {self.file_size}" if self.file_size is not None else "")
        lost = "an unknown number of frames" if self.frames_lost is None else _frames_text(self.frames_lost)
        return (f"bag damaged in {where} ({self.reason}): {_frames_text(self.frames_recovered)} before the "
                f"damage recovered, {lost} lost")


def _frames_text(count: int) -> str:
    return f"{count} frame" if count == 1 else f"{count} frames"


class _StreamBroken(Exception):
    """A bag's message stream ended at damage (raised by the message readers, caught by the frame reader)."""

    def __init__(self, reason: str, file: str | None = None, offset: int | None = None,
                 file_size: int | None = None, after_data: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.file, self.offset, self.file_size = reason, file, offset, file_size
        # The damage lies after every message (an mcap summary): no frame is cut.
        self.after_data = after_data


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
        camera_info_topic: if set, each frame also carries the camera info of its stamp (live
            evaluation republishes it); unset, camera info is not read.
        window: how many stamps may be open at once while their messages arrive; the bag is
            ordered by time, so a small window suffices and bounds memory.

    What had to be skipped is counted in ``tally``: pass the one the results are reported from (an
    evaluation passes its ``Evaluation.skipped``); by default the reader keeps its own. A bag that
    breaks off counts one ``bag read error`` and, once the frames before the damage are out, leaves
    the details in :attr:`damage` (``None`` for a bag read to its end).
    """

    path: str | Path
    image_topic: str = IMAGE_TOPIC
    label_topic: str = LABEL_TOPIC
    name_topic: str = FILE_NAME_TOPIC
    camera_info_topic: str | None = None
    window: int = 4
    tally: SkipTally = field(default_factory=SkipTally)
    damage: BagDamage | None = field(default=None, init=False)
    _counts: dict[str, int] = field(default_factory=dict, init=False, repr=False)

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
        """The number of image messages the bag announces (for progress bars): the storage's
        count, or the metadata's when the storage is too damaged to open."""
        try:
            reader = self._open()
        except BagError:
            announced = self._announced_images()
            if announced is None:
                raise
            return announced
        try:
            return sum(c.msgcount for c in reader.connections if c.topic == self.image_topic)
        finally:
            reader.close()

    def _announced_images(self) -> int | None:
        """The image topic's message count in ``metadata.yaml``, or ``None`` if it records none."""
        try:
            topics = _bag_information(self.path).get("topics_with_message_count") or []
        except BagError:
            return None
        counts = [int(t.get("message_count", 0)) for t in topics
                  if isinstance(t, dict) and (t.get("topic_metadata") or {}).get("name") == self.image_topic]
        return sum(counts) if counts else None

    def _only_storage_file(self) -> str | None:
        """The bag's storage file when it has just one (where the damage must be), else ``None``."""
        try:
            files = _bag_information(self.path).get("relative_file_paths") or []
        except BagError:
            return None
        return str(files[0]) if len(files) == 1 else None

    def _topics(self) -> tuple[str, ...]:
        topics = (self.image_topic, self.label_topic, self.name_topic)
        return (*topics, self.camera_info_topic) if self.camera_info_topic else topics

    def __iter__(self) -> Iterator[BagFrame]:
        self.damage = None
        try:
            reader = self._open()
        except BagError as error:
            files = self._recoverable_mcap_files(error)
            yield from self._frames(self._recovered_messages(files, error), "mcap")
            return
        try:
            wanted = [c for c in reader.connections if c.topic in self._topics()]
            if not any(c.topic == self.image_topic for c in wanted):
                topics = ", ".join(sorted({c.topic for c in reader.connections})) or "none"
                raise BagError(f"bag {self.path} has no {self.image_topic} topic (topics: {topics})")
            yield from self._frames(self._stored_messages(reader, wanted), bag_storage(self.path))
        finally:
            reader.close()

    @staticmethod
    def _stored_messages(reader: Reader, wanted: list[Any]) -> Iterator[tuple[Any, int, bytes]]:
        messages = reader.messages(connections=wanted)
        while True:
            try:
                item = next(messages)
            except StopIteration:
                return
            except Exception as exc:  # corrupt storage (sqlite3 pages, an mcap chunk): keep what was read
                raise _StreamBroken(f"{type(exc).__name__}: {exc}") from exc
            yield item

    def _recoverable_mcap_files(self, error: BagError) -> list[Path]:
        """The storage files of an mcap bag that did not open, to read front to back; re-raises
        ``error`` for any other bag (sqlite3, compressed files, no metadata, missing files)."""
        try:
            info = _bag_information(self.path)
        except BagError:
            raise error from None
        if info.get("storage_identifier") != "mcap" or str(info.get("compression_mode") or "").lower() == "file":
            raise error
        files = [Path(self.path) / str(name) for name in info.get("relative_file_paths") or []]
        if not files or not files[0].is_file():
            raise error
        return files

    def _recovered_messages(self, files: list[Path], error: BagError) -> Iterator[tuple[Any, int, bytes]]:
        topics = self._topics()
        image_seen = False
        summary_damage: tuple[Path, Any] | None = None  # a file whose data is whole, but not its summary
        for path in files:
            if not path.is_file():
                raise _StreamBroken(f"{path.name} is missing", path.name)
            recovery = McapRecovery(path)
            try:
                for channel, log_time, raw in recovery.messages():
                    if channel.topic in topics:
                        image_seen = image_seen or channel.topic == self.image_topic
                        yield channel, log_time, raw
            except McapRecoveryError as exc:
                if path == files[0]:
                    raise error from None  # not an mcap bag at all
                raise _StreamBroken(str(exc), path.name, 0, path.stat().st_size) from None
            except OSError as exc:
                raise _StreamBroken(f"cannot read {path.name}: {exc}", path.name) from exc
            image_seen = image_seen or any(c.topic == self.image_topic for c in recovery.channels.values())
            damage = recovery.damage
            if damage is None:
                continue
            if damage.data_complete:
                summary_damage = summary_damage or (path, damage)
                continue
            if not image_seen:
                raise BagError(f"bag {self.path} is damaged in {path.name} at byte {damage.offset} "
                               f"({damage.reason}) before any {self.image_topic} message") from error
            raise _StreamBroken(damage.reason, path.name, damage.offset, damage.file_size)
        if not image_seen:
            raise BagError(f"bag {self.path} has no {self.image_topic} topic")
        if summary_damage is not None:
            path, damage = summary_damage
            raise _StreamBroken(damage.reason, path.name, damage.offset, damage.file_size, after_data=True)

    def _frames(self, messages: Iterator[tuple[Any, int, bytes]], storage: str) -> Iterator[BagFrame]:
        pending: dict[int, _Pending] = {}
        # Frames yielded, messages read and image messages read (whether they decoded or not).
        self._counts = counts = {"frames": 0, "messages": 0, "images": 0}
        try:
            for connection, log_time, raw in messages:
                counts["messages"] += 1
                self._add(pending, connection, log_time, raw)
                while len(pending) > self.window:
                    yield from self._emit(pending, min(pending))
        except _StreamBroken as broken:
            # The newest stamp's messages may be cut (its labels or name not written yet): leave it out.
            if pending and not broken.after_data:
                del pending[max(pending)]
            for stamp in sorted(pending):
                yield from self._emit(pending, stamp)
            announced = self._announced_images()
            lost = None if announced is None else max(announced - counts["images"], 0)
            self.damage = BagDamage(storage, broken.file or self._only_storage_file(), broken.offset,
                                    broken.file_size, broken.reason, counts["frames"], lost, counts["messages"])
            self.tally.record(SKIP_BAG_READ_ERROR, f"{self.path}: {self.damage.describe()}")
            return
        for stamp in sorted(pending):
            yield from self._emit(pending, stamp)

    def _add(self, pending: dict[int, _Pending], connection: Any, log_time: int, raw: bytes) -> None:
        try:
            msg = TYPESTORE.deserialize_cdr(raw, connection.msgtype)
        except Exception as exc:  # any corruption of the CDR bytes
            self._counts["images"] += connection.topic == self.image_topic
            self.tally.record(SKIP_UNDECODABLE_MESSAGE, f"{connection.topic} at {log_time}: {type(exc).__name__}: {exc}")
            return
        if connection.topic == self.name_topic:
            pending.setdefault(log_time, _Pending()).name = str(msg.data)
            return
        stamp = stamp_ns(msg.header)
        if connection.topic == self.camera_info_topic:
            pending.setdefault(stamp, _Pending()).camera_info = msg
            return
        try:
            if connection.topic == self.image_topic:
                entry = pending.setdefault(stamp, _Pending())
                entry.image_messages += 1
                decode = compressed_msg_to_array if connection.msgtype == COMPRESSED_TYPE else image_msg_to_array
                image, order = decode(msg)
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
        self._counts["images"] += entry.image_messages
        if entry.image is None:
            if entry.labels is not None:
                self.tally.record(SKIP_LABELS_WITHOUT_IMAGE, f"stamp {stamp}")
            return
        image, order, frame_id = entry.image
        self._counts["frames"] += 1
        yield BagFrame(stamp, image, order, entry.labels, entry.name, frame_id, entry.camera_info)


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
                 period_ns: int = 100_000_000, frame_id: str = DEFAULT_FRAME_ID,
                 custom_data: dict[str, str] | None = None) -> int:
    """Write ``(image RGB, labels or None, name or None)`` triples as a bag, one frame every ``period_ns``
    (``custom_data``: the metadata's, e.g. ``CUSTOM_LABEL_SET``).

    Frames are consumed one at a time. If writing fails part-way, the bag is still closed, so the
    frames written so far stay readable. Returns the number of frames written.
    """
    with BagWriter(path, storage, frame_id, custom_data) as writer:
        for index, (image, labels, name) in enumerate(frames):
            writer.write_frame(start_ns + index * period_ns, image, labels, name)
        return writer.frames_written
