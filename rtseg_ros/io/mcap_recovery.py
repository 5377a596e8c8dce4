"""The messages of an mcap file read front to back, up to the first damaged record.

``rosbags`` opens an mcap file from its footer and summary, so a file that breaks off (a copy
cut short, a full disk, a recorder that was killed) does not open at all. The records before the
damage are still valid: an mcap file is a magic number, then records of one opcode byte, a
little-endian ``uint64`` length and that many bytes. :class:`McapRecovery` walks them in file
order (the `MCAP specification <https://mcap.dev/spec>`_) and yields the messages it meets:

* schema and channel records, in or outside chunks, name each message's topic and type;
* chunk records are decompressed (``""``, ``lz4`` or ``zstd``: every compression the
  specification defines; ``rosbags`` writes none or zstd, ``ros2 bag record`` zstd or lz4) and
  checked against their CRC when the writer recorded one;
* a chunk cut by the end of the file gives up the messages whose records are complete in the
  part that is there (its CRC, which covers the whole chunk, cannot be checked);
* the walk stops at the data section's end, or at the first record that is cut short, cannot be
  decompressed, fails its CRC or is malformed: that record's offset and the reason are kept in
  :attr:`McapRecovery.damage`.

Messages of a chunk come sorted by log time, as ``rosbags`` gives them. Memory is one chunk at a
time, whatever the file size.
"""
from __future__ import annotations

import struct
import sys
from binascii import crc32
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

__all__ = ["MCAP_MAGIC", "McapChannel", "McapDamage", "McapRecovery", "McapRecoveryError"]

MCAP_MAGIC = b"\x89MCAP0\r\n"

_HEADER, _FOOTER, _SCHEMA, _CHANNEL, _MESSAGE, _CHUNK, _DATA_END = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0F
_RECORD_HEAD = struct.Struct("<BQ")  # opcode, content length
_MESSAGE_HEAD = struct.Struct("<HIQQ")  # channel id, sequence, log time, publish time
_CHUNK_HEAD = struct.Struct("<QQQI")  # start time, end time, uncompressed size, uncompressed CRC
_U16, _U32, _U64 = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<Q")


class McapRecoveryError(ValueError):
    """The file is not an mcap file at all (no magic number), so there is nothing to recover."""


@dataclass(frozen=True)
class McapChannel:
    """A channel as far as reading its messages needs: its id, topic and message type."""

    id: int
    topic: str
    msgtype: str


@dataclass(frozen=True)
class McapDamage:
    """Where and why the walk stopped before the data section's end.

    Attributes:
        file: the mcap file.
        offset: byte offset of the first record that could not be read whole (for a file that ends
            between two records, the file size).
        file_size: the file's size in bytes.
        reason: what is wrong with that record.
        data_complete: the damage lies after the data section (in the summary or footer): every
            message was read.
    """

    file: Path
    offset: int
    file_size: int
    reason: str
    data_complete: bool = False


def _zstd_module() -> object:
    # Python 3.14 has it built in; rosbags installs the backport (older rosbags: zstandard).
    if sys.version_info >= (3, 14):
        from compression import zstd  # type: ignore[import-not-found]

        return zstd
    try:
        from backports import zstd  # type: ignore[import-not-found]

        return zstd
    except ImportError:
        import zstandard  # type: ignore[import-not-found]

        return zstandard


def _decompress_whole(compression: str, data: bytes) -> bytes:
    if compression == "":
        return data
    if compression == "lz4":
        import lz4.frame

        return lz4.frame.decompress(data)
    if compression == "zstd":
        zstd = _zstd_module()
        if hasattr(zstd, "decompress"):
            return zstd.decompress(data)  # type: ignore[attr-defined]
        return zstd.ZstdDecompressor().decompress(data)  # type: ignore[attr-defined]
    raise ValueError(f"unknown chunk compression {compression!r}")


def _decompress_prefix(compression: str, data: bytes) -> bytes:
    """As much of the uncompressed data as the first part of a compressed stream gives."""
    if compression == "":
        return data
    if compression == "lz4":
        import lz4.frame

        return lz4.frame.LZ4FrameDecompressor().decompress(data)
    if compression == "zstd":
        zstd = _zstd_module()
        decompressor = zstd.ZstdDecompressor()  # type: ignore[attr-defined]
        if hasattr(decompressor, "decompressobj"):  # zstandard's API
            return decompressor.decompressobj().decompress(data)
        return decompressor.decompress(data)
    raise ValueError(f"unknown chunk compression {compression!r}")


class _Record:
    """A cursor over a record's bytes; a read past the end raises ``ValueError``."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def take(self, size: int) -> memoryview:
        if self.pos + size > len(self.data):
            raise ValueError(f"field of {size} bytes at {self.pos} runs past the record's {len(self.data)} bytes")
        part = self.data[self.pos:self.pos + size]
        self.pos += size
        return part

    def unpack(self, layout: struct.Struct) -> tuple[int, ...]:
        return layout.unpack(self.take(layout.size))

    def string(self) -> str:
        (size,) = self.unpack(_U32)
        return bytes(self.take(size)).decode()


@dataclass
class McapRecovery:
    """Walks one mcap file and yields ``(channel, log_time_ns, message bytes)`` up to the damage.

    Args:
        path: the ``.mcap`` file.

    After :meth:`messages` is exhausted, :attr:`damage` says where the walk stopped early (``None``
    when it reached the data section's end) and :attr:`messages_read` how many messages it yielded.
    """

    path: Path
    damage: McapDamage | None = field(default=None, init=False)
    messages_read: int = field(default=0, init=False)
    channels: dict[int, McapChannel] = field(default_factory=dict, init=False)
    _schemas: dict[int, str] = field(default_factory=dict, init=False, repr=False)

    def messages(self) -> Iterator[tuple[McapChannel, int, bytes]]:
        """The messages in file order (each chunk's sorted by log time).

        Raises:
            McapRecoveryError: the file does not start with the mcap magic number.
        """
        self.path = Path(self.path)
        size = self.path.stat().st_size
        with open(self.path, "rb") as handle:
            if handle.read(len(MCAP_MAGIC)) != MCAP_MAGIC:
                raise McapRecoveryError(f"{self.path} is not an mcap file (no mcap magic number at its start)")
            yield from self._walk(handle, size)

    def _stop(self, offset: int, size: int, reason: str, data_complete: bool = False) -> None:
        self.damage = McapDamage(self.path, offset, size, reason, data_complete)

    def _walk(self, handle: BinaryIO, size: int) -> Iterator[tuple[McapChannel, int, bytes]]:
        first = True
        while True:
            offset = handle.tell()
            head = handle.read(_RECORD_HEAD.size)
            if not head:
                self._stop(offset, size, f"the file ends at byte {offset}, before the data section's end record")
                return
            if len(head) < _RECORD_HEAD.size:
                self._stop(offset, size, f"record header cut short: {len(head)} of {_RECORD_HEAD.size} bytes")
                return
            opcode, length = _RECORD_HEAD.unpack(head)
            if opcode == 0 or (first and opcode != _HEADER):
                self._stop(offset, size, f"invalid record (opcode {opcode:#04x})")
                return
            first = False
            available = size - offset - _RECORD_HEAD.size
            if length > available:
                if opcode == _CHUNK:
                    yield from self._partial_chunk(handle.read(available), offset, size, length)
                else:
                    self._stop(offset, size, f"record (opcode {opcode:#04x}) of {length} bytes cut short: "
                                             f"the file ends {available} bytes into it")
                return
            if opcode == _FOOTER:
                return
            if opcode == _DATA_END:
                handle.seek(size - len(MCAP_MAGIC))
                if size - offset < len(MCAP_MAGIC) or handle.read(len(MCAP_MAGIC)) != MCAP_MAGIC:
                    end = offset + _RECORD_HEAD.size + length
                    self._stop(end, size, f"the data section is whole (it ends at byte {end}); the summary and "
                                          "footer after it are cut short or damaged", data_complete=True)
                return
            if opcode not in (_SCHEMA, _CHANNEL, _MESSAGE, _CHUNK):
                handle.seek(length, 1)  # indexes, attachments, metadata: nothing to read here
                continue
            content = handle.read(length)
            if opcode == _CHUNK:
                messages = self._chunk(content, offset, size)
                if messages is None:
                    return
                yield from messages
                if self.damage is not None:
                    return
                continue
            try:
                message = self._plain_record(opcode, _Record(content))
            except (ValueError, UnicodeDecodeError) as exc:
                self._stop(offset, size, f"malformed record (opcode {opcode:#04x}): {exc}")
                return
            if message is not None:
                self.messages_read += 1
                yield message

    def _plain_record(self, opcode: int, record: _Record) -> tuple[McapChannel, int, bytes] | None:
        """Schema and channel records are remembered; a message on a known channel is returned."""
        if opcode == _SCHEMA:
            (schema_id,) = record.unpack(_U16)
            self._schemas[schema_id] = record.string()
        elif opcode == _CHANNEL:
            channel_id, schema_id = record.unpack(_U16) + record.unpack(_U16)
            topic = record.string()
            self.channels[channel_id] = McapChannel(channel_id, topic, self._schemas.get(schema_id, ""))
        elif opcode == _MESSAGE:
            channel_id, _, log_time, _ = record.unpack(_MESSAGE_HEAD)
            channel = self.channels.get(channel_id)
            if channel is not None:
                return channel, log_time, bytes(record.data[record.pos:])
        return None

    def _chunk(self, content: bytes, offset: int, size: int) -> list[tuple[McapChannel, int, bytes]] | None:
        """A whole chunk's messages sorted by log time, or ``None`` (damage recorded) if it is bad."""
        try:
            record = _Record(content)
            _, _, uncompressed_size, crc = record.unpack(_CHUNK_HEAD)
            compression = record.string()
            (compressed_size,) = record.unpack(_U64)
            payload = bytes(record.take(compressed_size))
            data = _decompress_whole(compression, payload)
        except Exception as exc:  # the codecs raise their own error types
            self._stop(offset, size, f"chunk cannot be decompressed: {type(exc).__name__}: {exc}")
            return None
        if len(data) != uncompressed_size:
            self._stop(offset, size, f"chunk decompresses to {len(data)} bytes, its header says {uncompressed_size}")
            return None
        if crc and crc32(data) != crc:
            self._stop(offset, size, "chunk fails its CRC check")
            return None
        return self._chunk_messages(data, offset, size, cut=False)

    def _partial_chunk(self, content: bytes, offset: int, size: int,
                       length: int) -> Iterator[tuple[McapChannel, int, bytes]]:
        reason = f"chunk of {length} bytes cut short: the file ends {len(content)} bytes into it"
        try:
            record = _Record(content)
            record.unpack(_CHUNK_HEAD)
            compression = record.string()
            record.unpack(_U64)
            data = _decompress_prefix(compression, bytes(record.data[record.pos:]))
        except Exception as exc:  # a header cut short, or a codec error on the part that is there
            self._stop(offset, size, f"{reason} ({type(exc).__name__}: {exc})")
            return
        yield from self._chunk_messages(data, offset, size, cut=True)
        self._stop(offset, size, reason)

    def _chunk_messages(self, data: bytes, offset: int, size: int,
                        cut: bool) -> list[tuple[McapChannel, int, bytes]]:
        """The messages of a chunk's records; a chunk ``cut`` short ends at its last whole record."""
        messages: list[tuple[McapChannel, int, bytes]] = []
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            if pos + _RECORD_HEAD.size > len(view):
                if not cut:
                    self._stop(offset, size, f"chunk ends inside a record header at {pos} of its {len(view)} bytes")
                break
            opcode, length = _RECORD_HEAD.unpack(view[pos:pos + _RECORD_HEAD.size])
            start = pos + _RECORD_HEAD.size
            if opcode == 0 or start + length > len(view):
                if not cut or opcode == 0:
                    self._stop(offset, size, f"chunk holds a malformed record at {pos} of its {len(view)} bytes")
                break
            pos = start + length
            try:
                message = self._plain_record(opcode, _Record(view[start:pos]))
            except (ValueError, UnicodeDecodeError) as exc:
                self._stop(offset, size, f"chunk holds a malformed record at {start - _RECORD_HEAD.size}: {exc}")
                break
            if message is not None:
                messages.append(message)
        messages.sort(key=lambda item: item[1])
        self.messages_read += len(messages)
        return messages
