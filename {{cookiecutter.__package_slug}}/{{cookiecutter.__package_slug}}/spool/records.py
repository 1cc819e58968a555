"""Records and the batch file format: ``Record``, the spool's errors, the argument checks, and
the framing (``MAGIC``, then one crc32-checked frame per record) with its parser, which sets
torn or corrupt frames aside."""

from __future__ import annotations

import os
import struct
import zlib
from typing import NamedTuple

# A batch file is MAGIC followed by frames: crc32 | data length | key length | flags | key | data.
# The crc32 covers everything after itself, the lengths included.
MAGIC = b"SPOOLv1\n"
_HEAD = struct.Struct("<IIHB")
_HEAD_SIZE = _HEAD.size
_BODY = struct.Struct("<IHB")
_CRC = struct.Struct("<I")
_TEXT_BODY = _BODY.pack
_CRC_PACK = _CRC.pack
_crc32 = zlib.crc32
_TEXT = 1  # the record was put as str
_KEYED = 2  # the record carries its own key
_MAX_KEY = 0xFFFF
_MAX_DATA = 0xFFFFFFFF


class SpoolError(Exception):
    """A spool object was misused (closed, used after fork, batch already finished) or failed."""


class SpoolFull(SpoolError, TimeoutError):
    """``put`` or ``flush`` waited ``timeout`` seconds for room in ``ready/``; nothing was added."""


class Record(NamedTuple):
    """One delivered record: ``key`` (stable across redeliveries) and ``data`` as it was put."""

    key: str
    data: bytes | str


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} is invalid: it must be an integer >= 1")
    return value


def _check_seconds(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{name}={value!r} is invalid: it must be seconds >= 0 or None")
    return float(value)


def _check_root(root: str | os.PathLike[str]) -> str:
    path = os.fspath(root)
    if not isinstance(path, str) or not path:
        raise ValueError(f"root={root!r} is invalid: it must be a non-empty str or path")
    return path


def _frame(record: bytes | bytearray | memoryview | str, key: str | None) -> bytes:
    if isinstance(record, str):
        data = record.encode()
        flags = _TEXT
    elif isinstance(record, bytes):
        data = record
        flags = 0
    elif isinstance(record, bytearray | memoryview):
        data = bytes(record)
        flags = 0
    else:
        raise TypeError(f"record={record!r} is invalid: it must be bytes or str")
    if key is None:
        raw_key = b""
    elif isinstance(key, str):
        raw_key = key.encode()
        flags |= _KEYED
        if len(raw_key) > _MAX_KEY:
            raise ValueError(f"key of {len(raw_key)} bytes is too long: the limit is {_MAX_KEY}")
    else:
        raise TypeError(f"key={key!r} is invalid: it must be a str or None")
    if len(data) > _MAX_DATA:
        raise ValueError(f"record of {len(data)} bytes is too long: the limit is {_MAX_DATA}")
    body = _BODY.pack(len(data), len(raw_key), flags) + raw_key + data
    return _CRC.pack(zlib.crc32(body)) + body


def _frames(records: list[Record]) -> bytes:
    """A batch file holding ``records``, each with its key written out (so it stays the
    same when the records move to another file)."""
    return MAGIC + b"".join(_frame(record.data, record.key) for record in records)


def _frame_end(buf: bytes, off: int, n: int) -> int:
    """End offset of the intact frame at ``off``, or -1."""
    if n - off < _HEAD_SIZE:
        return -1
    crc, dlen, klen, flags = _HEAD.unpack_from(buf, off)
    end: int = off + _HEAD_SIZE + klen + dlen
    if end > n or flags > _TEXT | _KEYED or zlib.crc32(buf[off + 4 : end]) != crc:
        return -1
    return end


def _parse(buf: bytes, batch_id: str) -> tuple[list[Record], list[tuple[int, int]]]:
    """Decode a batch file: the intact records, and the byte ranges of corrupt or torn frames.

    A bad frame whose length still points at an intact frame costs only itself; otherwise
    everything from it to the end of the file is one bad range.
    """
    records: list[Record] = []
    bad: list[tuple[int, int]] = []
    append = records.append
    unpack = _HEAD.unpack_from
    crc32 = zlib.crc32
    new = tuple.__new__
    prefix = batch_id + "/"
    n = len(buf)
    off = len(MAGIC)
    while off < n:
        if n - off >= _HEAD_SIZE:
            crc, dlen, klen, flags = unpack(buf, off)
            start = off + _HEAD_SIZE
            end = start + klen + dlen
            if end <= n and flags <= _TEXT | _KEYED and crc32(buf[off + 4 : end]) == crc:
                try:
                    key = (
                        buf[start : start + klen].decode() if flags & _KEYED else prefix + str(off)
                    )
                    raw = buf[start + klen : end]
                    data = raw.decode() if flags & _TEXT else raw
                except UnicodeDecodeError:
                    pass
                else:
                    append(new(Record, (key, data)))
                    off = end
                    continue
        nxt = n
        if n - off >= _HEAD_SIZE:
            _, dlen, klen, _ = unpack(buf, off)
            candidate = off + _HEAD_SIZE + klen + dlen
            if candidate < n and _frame_end(buf, candidate, n) > 0:
                nxt = candidate
        bad.append((off, nxt))
        off = nxt
    return records, bad
