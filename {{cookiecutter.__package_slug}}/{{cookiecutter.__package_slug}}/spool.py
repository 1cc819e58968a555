"""A durable batch spool that separate processes share through one folder, with no broker.

Producers append length- and checksum-framed records to a private batch file and publish it
with write, fsync, atomic rename into ``ready/`` and fsync of that folder. A consumer claims
the oldest ready batch by locking it (``fcntl.flock``) and renaming it into ``claimed/``, and
``ack`` deletes it. Every open or claimed batch file is locked by the process that owns it,
and a lock dies with its process, so :func:`recover` can run at any time from any process:
it moves only unlocked (dead) batches back to ``ready/`` and never touches a live one.

Delivery is at least once; every record has a key that is stable across redeliveries.
POSIX only (``fcntl``), on a local file system. See docs/spool.md for the layout and tuning.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import secrets
import stat
import struct
import threading
import time
import traceback
import weakref
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import NamedTuple, Protocol

__all__ = [
    "Batch",
    "Consumer",
    "DeadBatch",
    "Producer",
    "Record",
    "Recovery",
    "SpoolError",
    "SpoolFull",
    "dead_batches",
    "purge_dead",
    "recover",
    "replay_dead",
]

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
_MAX_PENDING = 4  # full batches a producer may hold while they are being published
# Names in ready/, claimed/ and dead/: "<publish time ns, 20 digits>-<producer token>.<failures>".
_NAME = re.compile(r"^(\d{20}-[0-9a-f]{16})\.(\d+)$")
_FOLDERS = ("tmp", "ready", "claimed", "dead", "corrupt")

logger = logging.getLogger(__name__)


class SpoolError(Exception):
    """A spool object was misused (closed, used after fork, batch already finished) or failed."""


class SpoolFull(SpoolError, TimeoutError):
    """``put`` or ``flush`` waited ``timeout`` seconds for room in ``ready/``; nothing was added."""


class Record(NamedTuple):
    """One delivered record: ``key`` (stable across redeliveries) and ``data`` as it was put."""

    key: str
    data: bytes | str


@dataclass(frozen=True)
class Recovery:
    """What :func:`recover` did: batches it moved, dead-lettered or deleted."""

    requeued: int  # claims of dead consumers moved back to ready/
    republished: int  # open batches of dead producers published to ready/
    dead_lettered: int  # claims of dead consumers that reached max_attempts
    removed: int  # empty batches and half-created files of dead processes deleted
    quarantined: int = 0  # entries that are not batch files, moved to corrupt/


# ----------------------------------------------------------------------------------------------
# validation, framing, file helpers


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


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _unlock_close(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


_fdatasync = getattr(os, "fdatasync", os.fsync)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_all(fd: int) -> bytes:
    chunks = []
    size = max(os.fstat(fd).st_size, 1 << 16)
    while chunk := os.read(fd, size):
        chunks.append(chunk)
    return b"".join(chunks)


def _create_locked(directory: str, name: str, data: bytes, fsync: bool) -> int:
    """Create ``directory/name`` holding ``data`` and return its fd, flock-ed by this process.

    The file is written under a dot name and renamed only once locked, so recover() never
    finds it unlocked under its real name. A concurrent recover() may delete the unlocked dot
    file before we lock it; the rename then fails and we start again.
    """
    while True:
        part = os.path.join(directory, f".{name}.{secrets.token_hex(4)}")
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            if _try_lock(fd):
                _write_all(fd, data)
                if fsync:
                    os.fsync(fd)
                try:
                    os.rename(part, os.path.join(directory, name))
                except FileNotFoundError:
                    pass
                else:
                    return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _write_file(directory: str, name: str, data: bytes, fsync: bool) -> None:
    _unlock_close(_create_locked(directory, name, data, fsync))


class _NotABatchFile(Exception):
    """The entry is not a regular file this process can open: a directory, a symlink, a
    fifo, a socket, a device, or a file it may not read."""


# os.open errors that come from the entry itself (O_NOFOLLOW on a symlink: ELOOP, or
# EMLINK on FreeBSD; a socket: ENXIO or EOPNOTSUPP; no permission: EACCES or EPERM).
_NOT_A_BATCH_ERRNOS = frozenset(
    {errno.ELOOP, errno.EMLINK, errno.ENXIO, errno.EOPNOTSUPP, errno.ENODEV}
    | {errno.EACCES, errno.EPERM}
)


def _open_regular(path: str) -> int | None:
    """Open the regular file ``path`` for reading; None if it is gone.

    Never follows a symlink and never blocks (O_NONBLOCK: a fifo opens at once). Raises
    :class:`_NotABatchFile` if the entry is anything but a regular file it may read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in _NOT_A_BATCH_ERRNOS:
            raise _NotABatchFile(f"{path}: {exc.strerror}") from exc
        raise
    try:
        mode = os.fstat(fd).st_mode
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _NotABatchFile(f"{path}: not a regular file ({stat.filemode(mode)})")
    return fd


def _open_if_dead(path: str) -> int | None:
    """Open and lock ``path`` if no live process holds it; None if it is live or gone.

    Raises :class:`_NotABatchFile` as :func:`_open_regular` does.
    """
    fd = _open_regular(path)
    if fd is None:
        return None
    try:
        if _try_lock(fd):
            # Still the same file under that name? (It may have moved before we locked it.)
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            fcntl.flock(fd, fcntl.LOCK_UN)
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


def _error_text(error: BaseException | str) -> str:
    if isinstance(error, BaseException):
        return "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return str(error)


class _Layout:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = _check_root(root)
        self.tmp, self.ready, self.claimed, self.dead, self.corrupt = (
            os.path.join(self.root, folder) for folder in _FOLDERS
        )

    def make(self) -> None:
        for folder in (self.tmp, self.ready, self.claimed, self.dead, self.corrupt):
            os.makedirs(folder, exist_ok=True)

    def set_aside(self, path: str, name: str, fsync: bool) -> bool:
        """Move the entry at ``path`` to ``corrupt/<name>.bad``, whatever kind of entry it is.

        If that name is taken, a random part is added: nothing in ``corrupt/`` is replaced.
        Returns False, leaving the entry where it is, if it is gone (another process moved
        it) or cannot be moved.
        """
        target = f"{name}.bad"
        for _ in range(3):
            if os.path.lexists(os.path.join(self.corrupt, target)):
                target = f"{name}.{secrets.token_hex(4)}.bad"
            try:
                os.rename(path, os.path.join(self.corrupt, target))
            except FileNotFoundError:
                return False
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
                    return False
                target = f"{name}.{secrets.token_hex(4)}.bad"
                continue
            if fsync:
                _fsync_dir(self.corrupt)
            return True
        return False

    def dead_letter(
        self, src: str, batch_id: str, failures: int, error: BaseException | str, fsync: bool
    ) -> None:
        """Move a locked batch at ``src`` to dead/, with its last error beside it."""
        name = f"{batch_id}.{failures}"
        text = f"failed {failures} time(s); last error:\n{_error_text(error)}\n"
        _write_file(self.dead, f"{name}.error", text.encode(), fsync)
        os.rename(src, os.path.join(self.dead, name))
        if fsync:
            _fsync_dir(self.dead)


class _Stamper:
    """Publish names that sort by publish time, strictly increasing within one stamper."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(8)
        self._last = 0

    def next(self) -> str:
        ns = time.time_ns()
        if ns <= self._last:
            ns = self._last + 1
        self._last = ns
        return f"{ns:020d}-{self.token}"


# ----------------------------------------------------------------------------------------------
# fork safety: a forked child closes its copies of our locked files (the parent keeps the locks)


class _ForkAware(Protocol):
    def _drop_after_fork(self) -> None: ...


_tracked: weakref.WeakSet[_ForkAware] | None = None


def _after_fork_in_child() -> None:
    for obj in list(_tracked or ()):
        obj._drop_after_fork()


def _track(obj: _ForkAware) -> None:
    global _tracked
    if _tracked is None:
        _tracked = weakref.WeakSet()
        os.register_at_fork(after_in_child=_after_fork_in_child)
    _tracked.add(obj)


# ----------------------------------------------------------------------------------------------
# producer


class _OpenBatch:
    __slots__ = ("buffer", "deadline", "fd", "left", "path", "space")

    def __init__(
        self, fd: int, path: str, deadline: float | None, left: int, space: int, buffered: bool
    ) -> None:
        self.fd = fd
        self.path = path
        self.deadline = deadline
        self.left = left  # records it may still take
        self.space = space  # bytes of frames it may still take (< 0 after one oversize record)
        self.buffer = bytearray() if buffered else None  # frames not yet written to the file


class Producer:
    """Write records into batches and publish each batch to ``root/ready/``.

    A batch is published when it holds ``max_records`` records or ``max_bytes`` bytes of
    frames, when it is ``max_age`` seconds old, and on :meth:`flush`, :meth:`close` and exit
    of a ``with`` block. Publishing runs in a background thread (write, fsync, atomic rename,
    fsync of ``ready/``; no fsync with ``fsync=False``) while ``put`` fills the next batch.

    Records reach the open batch file each time ``write_buffer`` bytes have gathered and when
    the batch is published (``write_buffer=0``: on every put); what reached the file before
    the process died is published by :func:`recover`.

    Backpressure: while ``ready/`` holds ``max_ready`` batches, publishing waits, and ``put``
    blocks once four full batches wait; after ``timeout`` seconds it raises :class:`SpoolFull`.
    Thread-safe. A producer created before ``fork`` is unusable in the child.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        max_records: int = 1000,
        max_bytes: int = 1 << 20,
        max_age: float | None = 1.0,
        max_ready: int | None = 64,
        timeout: float | None = None,
        fsync: bool = True,
        write_buffer: int = 1 << 16,
    ) -> None:
        """Create the spool folders under ``root`` if needed; nothing is written until put."""
        self._max_records = _check_int("max_records", max_records)
        self._max_bytes = _check_int("max_bytes", max_bytes)
        self._max_age = _check_seconds("max_age", max_age)
        self._max_ready = None if max_ready is None else _check_int("max_ready", max_ready)
        self._timeout = _check_seconds("timeout", timeout)
        self._fsync = bool(fsync)
        if isinstance(write_buffer, bool) or not isinstance(write_buffer, int) or write_buffer < 0:
            raise ValueError(f"write_buffer={write_buffer!r} is invalid: it must be an int >= 0")
        self._write_buffer = write_buffer
        self._layout = _Layout(root)
        self._layout.make()
        self._stamper = _Stamper()
        self._opened = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._current: _OpenBatch | None = None
        self._pending: deque[_OpenBatch] = deque()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._usable = True  # False once closing, closed, failed or forked; then no _current
        self._closing = False
        self._closed = False
        self._forked = False
        _track(self)

    def put(self, record: bytes | bytearray | memoryview | str, key: str | None = None) -> None:
        """Add a record (bytes-like or str) with an optional key.

        Without ``key`` the record's key is ``"<batch id>/<offset in the batch file>"``.
        Raises :class:`SpoolFull` after ``timeout`` seconds of backpressure, in which case
        the record was not added.
        """
        if key is None and type(record) is str:  # the common case, inlined
            data = record.encode()
            body = _TEXT_BODY(len(data), 0, _TEXT) + data
            frame = _CRC_PACK(_crc32(body)) + body
        else:
            frame = _frame(record, key)
        size = len(frame)
        with self._lock:
            cur = self._current  # None when there is no open batch or this producer is closed
            if cur is None or not cur.left or size > cur.space:
                cur = self._make_room(size)
            buffer = cur.buffer
            if buffer is None:
                done = os.write(cur.fd, frame)
                if done != size:
                    self._write_from(cur, frame, done)
            else:
                buffer += frame
                if len(buffer) >= self._write_buffer:
                    self._write_out(cur)
            cur.left -= 1
            cur.space -= size
            if (not cur.left or cur.space <= 0) and len(self._pending) < _MAX_PENDING:
                self._seal_now(cur)  # else the next put seals it, waiting for room

    def flush(self) -> None:
        """Publish everything put so far and wait until it is durable in ``ready/``.

        Raises :class:`SpoolFull` after ``timeout`` seconds of backpressure.
        """
        with self._lock:
            self._check_usable()
            deadline = self._deadline()
            if self._current is not None:
                self._seal(self._current, deadline)
            while self._pending:
                self._wait(deadline, "flush")
            self._raise_failure()

    def close(self) -> None:
        """Publish what is left (ignoring ``max_ready``), stop the publisher thread; idempotent."""
        with self._lock:
            if self._closed or self._closing:
                return
            self._usable = False
            if self._forked:
                self._closed = True
                return
            self._closing = True
            if self._current is not None:
                with contextlib.suppress(OSError):  # recorded by _fail, raised below
                    self._seal_now(self._current)
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        with self._lock:
            self._closed = True
            leftovers = [*self._pending, *([self._current] if self._current else [])]
            self._pending.clear()
            self._current = None
            for batch in leftovers:  # only after a failure: recover() will publish them
                _unlock_close(batch.fd)
            self._raise_failure()

    def __enter__(self) -> Producer:
        """Return self; the ``with`` block's exit calls :meth:`close`."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close: publish everything that was put."""
        self.close()

    # internals; all called with self._lock held, except _publish

    def _deadline(self) -> float | None:
        return None if self._timeout is None else time.monotonic() + self._timeout

    def _check_usable(self) -> None:
        if self._forked:
            raise SpoolError("this Producer was created before fork(); create a new one here")
        self._raise_failure()
        if not self._usable:
            raise SpoolError("this Producer is closed")

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise SpoolError(f"writing or publishing a batch failed: {self._error!r}") from (
                self._error
            )

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        self._usable = False
        if self._current is not None:  # close() closes it; recover() will publish it
            self._pending.append(self._current)
            self._current = None
        self._cond.notify_all()

    def _wait(self, deadline: float | None, what: str) -> None:
        self._raise_failure()
        if deadline is None:
            self._cond.wait()
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise SpoolFull(
                f"{what} waited {self._timeout} s for room: ready/ holds max_ready="
                f"{self._max_ready} batches"
            )
        self._cond.wait(remaining)

    def _make_room(self, size: int) -> _OpenBatch:
        """The open batch a frame of ``size`` bytes goes to: seal a full one, open a new one."""
        self._check_usable()
        deadline = self._deadline()
        cur = self._current
        while cur is not None and (
            not cur.left or (size > cur.space and cur.space < self._max_bytes)
        ):
            self._seal(cur, deadline)
            cur = self._current
        return self._open() if cur is None else cur

    def _write_out(self, batch: _OpenBatch) -> None:
        if batch.buffer:
            data, batch.buffer = batch.buffer, bytearray()
            self._write_from(batch, data, 0)

    def _write_from(self, batch: _OpenBatch, data: bytes | bytearray, done: int) -> None:
        """Write ``data[done:]`` at the end of the batch file; on failure, fail the producer.

        A frame cut short by the failure is left for the consumer's framing check to quarantine.
        """
        try:
            view = memoryview(data)[done:]
            while view:
                view = view[os.write(batch.fd, view) :]
        except BaseException as exc:
            self._fail(exc)
            raise

    def _seal(self, batch: _OpenBatch, deadline: float | None) -> None:
        """Seal ``batch`` (the current one) once there is room; the publisher may do it first."""
        while self._current is batch and len(self._pending) >= _MAX_PENDING:
            self._wait(deadline, "put")
            self._check_usable()
        if self._current is batch:
            self._seal_now(batch)

    def _seal_now(self, batch: _OpenBatch) -> None:
        self._write_out(batch)
        self._pending.append(batch)
        self._current = None
        self._cond.notify_all()

    def _open(self) -> _OpenBatch:
        self._opened += 1
        name = f"{self._stamper.token}-{self._opened:010d}.open"
        fd = _create_locked(self._layout.tmp, name, MAGIC, fsync=False)
        path = os.path.join(self._layout.tmp, name)
        deadline = None if self._max_age is None else time.monotonic() + self._max_age
        batch = _OpenBatch(
            fd, path, deadline, self._max_records, self._max_bytes, self._write_buffer > 0
        )
        self._current = batch
        if self._thread is None:
            self._thread = threading.Thread(target=self._publisher, name="spool-publisher")
            self._thread.daemon = True
            self._thread.start()
        self._cond.notify_all()
        return batch

    def _ready_room(self) -> int:
        if self._closing or self._max_ready is None:
            return len(self._pending)
        return self._max_ready - len(os.listdir(self._layout.ready))

    def _publisher(self) -> None:
        with self._lock:
            try:
                self._publish_loop()
            except BaseException as exc:
                self._fail(exc)

    def _publish_loop(self) -> None:
        poll = 0.001
        while self._error is None:
            cur = self._current
            now = time.monotonic()
            if (
                cur is not None
                and len(self._pending) < _MAX_PENDING
                and (
                    not cur.left
                    or cur.space <= 0
                    or (cur.deadline is not None and cur.deadline <= now)
                )
            ):
                self._seal_now(cur)  # full, or max_age reached
                continue
            if self._pending:
                room = self._ready_room()
                if room <= 0:
                    self._cond.wait(poll)
                    poll = min(poll * 2, 0.05)
                    continue
                poll = 0.001
                batches = list(self._pending)[:room]
                self._lock.release()
                try:
                    self._publish(batches)
                finally:
                    self._lock.acquire()
                for _ in batches:
                    self._pending.popleft()
                self._cond.notify_all()
                continue
            if cur is None or cur.deadline is None:
                if self._closing:
                    return
                self._cond.wait()
            else:
                self._cond.wait(cur.deadline - now)

    def _publish(self, batches: list[_OpenBatch]) -> None:
        """Publish sealed batches in order; one fsync of ready/ covers them all."""
        for batch in batches:
            if self._fsync:
                _fdatasync(batch.fd)
            name = f"{self._stamper.next()}.0"
            os.rename(batch.path, os.path.join(self._layout.ready, name))
        if self._fsync:
            _fsync_dir(self._layout.ready)
        for batch in batches:
            _unlock_close(batch.fd)

    def _drop_after_fork(self) -> None:
        self._forked = True
        self._usable = False
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._thread = None
        for batch in [*self._pending, *([self._current] if self._current else [])]:
            os.close(batch.fd)  # close our copy only: the parent keeps its lock
        self._pending.clear()
        self._current = None


# ----------------------------------------------------------------------------------------------
# consumer


class Batch:
    """A batch claimed by a :class:`Consumer`: its records, and ack / nack / release.

    ``id`` is the batch id, ``attempts`` how many earlier deliveries failed, ``records`` the
    intact records in order. Finish it exactly once, from the process that claimed it. As a
    context manager it acks on success, nacks on an exception, and releases on
    ``KeyboardInterrupt``/``SystemExit``/``GeneratorExit``.
    """

    __slots__ = ("_consumer", "_done", "_fd", "_name", "attempts", "id", "records")

    def __init__(
        self, consumer: Consumer, fd: int, name: str, attempts: int, records: list[Record]
    ) -> None:
        self._consumer = consumer
        self._fd = fd
        self._name = name
        self._done = False
        self.id = name.rpartition(".")[0]
        self.attempts = attempts
        self.records = records

    def __iter__(self) -> Iterator[Record]:
        """Iterate over the records in order."""
        return iter(self.records)

    def __len__(self) -> int:
        """Number of records."""
        return len(self.records)

    def __repr__(self) -> str:
        """Show id, attempts, size and whether the batch is finished."""
        state = "done" if self._done else "held"
        return f"Batch(id={self.id!r}, attempts={self.attempts}, records={len(self)}, {state})"

    @property
    def done(self) -> bool:
        """True once acked, nacked or released."""
        return self._done

    def ack(self, *, dead: Mapping[int, str] | None = None) -> None:
        """Delete the batch: it has been processed and is never delivered again.

        ``dead`` (record position -> error): records given up on, moved first to ``dead/`` as
        a batch of their own (see :meth:`nack`).
        """
        path = self._finish("ack")
        try:
            if dead:
                self._bury(dead)
            os.unlink(path)
        finally:
            _unlock_close(self._fd)

    def nack(
        self, error: BaseException | str = "", *, dead: Mapping[int, str] | None = None
    ) -> None:
        """Return the batch to ``ready/`` with one more failed attempt (keeping its place).

        After ``max_attempts`` failures it moves to ``dead/`` with ``error`` written beside it.
        ``dead`` (record position -> error): records given up on at once (their reader said
        so): they go to ``dead/`` as a batch of their own, with their errors and their keys, and
        the batch comes back without them.
        """
        path: str | None = self._finish("nack")
        consumer = self._consumer
        layout = consumer._layout
        failures = self.attempts + 1
        copy = None
        try:
            if dead and path is not None:
                path, copy = self._without(dead, path)
            if path is None:
                return
            if failures >= consumer._max_attempts:
                layout.dead_letter(path, self.id, failures, error, consumer._fsync)
            else:
                os.rename(path, os.path.join(layout.ready, f"{self.id}.{failures}"))
        finally:
            _unlock_close(self._fd)
            if copy is not None:
                _unlock_close(copy)

    def release(self, *, dead: Mapping[int, str] | None = None) -> None:
        """Return the batch to ``ready/`` without counting an attempt (without the ``dead``
        records: see :meth:`nack`)."""
        path: str | None = self._finish("release")
        copy = None
        try:
            if dead and path is not None:
                path, copy = self._without(dead, path)
            if path is not None:
                os.rename(path, os.path.join(self._consumer._layout.ready, self._name))
        finally:
            _unlock_close(self._fd)
            if copy is not None:
                _unlock_close(copy)

    def _bury(self, dead: Mapping[int, str]) -> None:
        """Write the records at the positions in ``dead`` to ``dead/`` as a new batch: one
        failure, each record's error in its note, the records' keys kept."""
        layout = self._consumer._layout
        fsync = self._consumer._fsync
        positions = sorted(dead)
        note = "\n".join(f"{self.records[p].key}: {_error_text(dead[p])}" for p in positions)
        batch_id = _Stamper().next()
        name = f"{batch_id}.1"
        records = [self.records[position] for position in positions]
        fd = _create_locked(layout.tmp, name, _frames(records), fsync)  # locked: recover()
        try:  # leaves it alone until it is in dead/
            layout.dead_letter(os.path.join(layout.tmp, name), batch_id, 1, note, fsync)
        finally:
            _unlock_close(fd)

    def _without(self, dead: Mapping[int, str], path: str) -> tuple[str | None, int | None]:
        """Bury the ``dead`` records, and replace the claimed file at ``path`` with a copy
        holding the others: (the copy's path, its locked fd), or (None, None) if none is left.
        """
        self._bury(dead)
        kept = [record for position, record in enumerate(self.records) if position not in dead]
        if not kept:
            os.unlink(path)
            return None, None
        layout = self._consumer._layout
        fd = _create_locked(layout.tmp, self._name, _frames(kept), self._consumer._fsync)
        os.unlink(path)
        return os.path.join(layout.tmp, self._name), fd

    def __enter__(self) -> Batch:
        """Return self."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Ack on success, nack on an Exception, release on other BaseExceptions."""
        if self._done:
            return
        if exc is None:
            self.ack()
        elif isinstance(exc, Exception):
            self.nack(exc)
        else:
            self.release()

    def _finish(self, what: str) -> str:
        if self._consumer._forked:
            raise SpoolError(f"cannot {what} batch {self.id}: it was claimed before fork()")
        if self._done:
            raise SpoolError(f"cannot {what} batch {self.id}: it is already finished")
        self._done = True
        return os.path.join(self._consumer._layout.claimed, self._name)

    def _drop_after_fork(self) -> None:
        if not self._done:
            self._done = True
            os.close(self._fd)  # our copy only: the parent keeps its lock


class Consumer:
    """Claim ready batches one at a time, oldest first; no two consumers get the same batch.

    A batch that fails ``max_attempts`` times (``nack`` or the death of its consumer) goes to
    ``dead/``. Torn or corrupt records are copied to ``corrupt/`` and not delivered.
    Not thread-safe: use one consumer per thread. Unusable in a child after ``fork``.
    """

    def __init__(
        self, root: str | os.PathLike[str], *, max_attempts: int = 5, fsync: bool = True
    ) -> None:
        """Create the spool folders under ``root`` if needed."""
        self._max_attempts = _check_int("max_attempts", max_attempts)
        self._fsync = bool(fsync)
        self._layout = _Layout(root)
        self._layout.make()
        self._held: Batch | None = None
        self._closed = False
        self._forked = False
        _track(self)

    def claim(self, timeout: float | None = 0.0) -> Batch | None:
        """Claim the oldest ready batch, waiting up to ``timeout`` s (None: forever) for one.

        Returns None if there was none in time. The previous batch must be finished first.
        An entry of ``ready/`` that is not a readable batch file (bad header, a directory,
        a symlink, a fifo, a file it may not open or read) is moved to ``corrupt/`` and
        skipped: it never makes ``claim`` raise or block.
        """
        wait = _check_seconds("timeout", timeout)
        if self._forked:
            raise SpoolError("this Consumer was created before fork(); create a new one here")
        if self._closed:
            raise SpoolError("this Consumer is closed")
        if self._held is not None and not self._held.done:
            raise SpoolError(f"finish batch {self._held.id} (ack, nack or release) first")
        deadline = None if wait is None else time.monotonic() + wait
        delay = 0.0005
        while True:
            batch = self._claim_once()
            if batch is not None:
                self._held = batch
                return batch
            if deadline is None:
                time.sleep(delay)
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.01)

    def close(self) -> None:
        """Release a batch still held (no attempt counted); idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._held is not None and not self._held.done and not self._forked:
            self._held.release()

    def __enter__(self) -> Consumer:
        """Return self; the ``with`` block's exit calls :meth:`close`."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close: release a batch still held."""
        self.close()

    def _claim_once(self) -> Batch | None:
        layout = self._layout
        for name in sorted(os.listdir(layout.ready)):
            match = _NAME.match(name)
            if match is None:
                continue
            path = os.path.join(layout.ready, name)
            try:
                fd = _open_regular(path)
            except _NotABatchFile:
                layout.set_aside(path, name, self._fsync)
                continue
            if fd is None:
                continue  # another consumer claimed it
            try:
                if not _try_lock(fd):
                    os.close(fd)  # being claimed or published right now
                    continue
                claimed = os.path.join(layout.claimed, name)
                try:
                    os.rename(path, claimed)
                except FileNotFoundError:
                    _unlock_close(fd)  # claimed and finished by another consumer meanwhile
                    continue
                batch = self._load(fd, name, match.group(1), int(match.group(2)), claimed)
            except BaseException:
                os.close(fd)  # the claim stays in claimed/, unlocked: recover() returns it
                raise
            if batch is not None:
                return batch
        return None

    def _load(self, fd: int, name: str, batch_id: str, attempts: int, path: str) -> Batch | None:
        layout = self._layout
        try:
            buf = _read_all(fd)
        except OSError:
            buf = b""  # unreadable (an I/O error): set aside like a foreign file
        if not buf.startswith(MAGIC):
            layout.set_aside(path, name, self._fsync)
            _unlock_close(fd)
            return None
        records, bad = _parse(buf, batch_id)
        for start, end in bad:
            part = f"{batch_id}@{start}.bad"
            if not os.path.exists(os.path.join(layout.corrupt, part)):
                _write_file(layout.corrupt, part, buf[start:end], self._fsync)
                logger.warning(
                    "spool batch %s: %d byte(s) at offset %d are not an intact record (torn, "
                    "corrupt or not the text they claim): set aside in corrupt/%s; the batch's "
                    "other records are delivered",
                    batch_id,
                    end - start,
                    start,
                    part,
                )
        if bad and self._fsync:
            _fsync_dir(layout.corrupt)
        if not records:
            os.unlink(path)
            _unlock_close(fd)
            return None
        return Batch(self, fd, name, attempts, records)

    def _drop_after_fork(self) -> None:
        self._forked = True
        if self._held is not None:
            self._held._drop_after_fork()


# ----------------------------------------------------------------------------------------------
# recovery


def recover(root: str | os.PathLike[str], *, max_attempts: int = 5, fsync: bool = True) -> Recovery:
    """Return the batches of dead processes to ``ready/``; safe at any time, from any process.

    A claim whose consumer died counts as a failed attempt (after ``max_attempts`` it moves
    to ``dead/``); an open batch of a dead producer is published as it is (a torn last record
    is quarantined when claimed). Files locked by live processes are never touched. An entry
    of ``claimed/`` or ``tmp/`` that is not a regular file it may open (a directory, a
    symlink, a fifo...) is moved to ``corrupt/``; it never makes ``recover`` raise or block.
    """
    _check_int("max_attempts", max_attempts)
    layout = _Layout(root)
    layout.make()
    stamper = _Stamper()
    requeued = republished = dead_lettered = removed = quarantined = 0

    def open_if_dead(path: str, name: str) -> int | None:
        nonlocal quarantined
        try:
            return _open_if_dead(path)
        except _NotABatchFile:
            quarantined += layout.set_aside(path, name, fsync)
            return None

    for name in sorted(os.listdir(layout.claimed)):
        match = _NAME.match(name)
        path = os.path.join(layout.claimed, name)
        if match is None or (fd := open_if_dead(path, name)) is None:
            continue
        try:
            batch_id, failures = match.group(1), int(match.group(2)) + 1
            if failures >= max_attempts:
                reason = f"the consumer holding it died (attempt {failures})"
                layout.dead_letter(path, batch_id, failures, reason, fsync)
                dead_lettered += 1
            else:
                os.rename(path, os.path.join(layout.ready, f"{batch_id}.{failures}"))
                requeued += 1
        finally:
            _unlock_close(fd)

    for name in sorted(os.listdir(layout.tmp)):
        is_open = name.endswith(".open") and not name.startswith(".")
        if not (is_open or name.startswith(".")):
            continue
        path = os.path.join(layout.tmp, name)
        if (fd := open_if_dead(path, name)) is None:
            continue
        try:
            if not is_open or os.fstat(fd).st_size <= len(MAGIC):
                os.unlink(path)
                removed += 1
            else:
                if fsync:
                    _fdatasync(fd)
                os.rename(path, os.path.join(layout.ready, f"{stamper.next()}.0"))
                republished += 1
        finally:
            _unlock_close(fd)

    for folder in (layout.dead, layout.corrupt):
        for name in os.listdir(folder):
            if not name.startswith("."):
                continue
            path = os.path.join(folder, name)
            try:
                fd = _open_if_dead(path)
            except _NotABatchFile:
                continue  # not a file a spool process was creating: leave it alone
            if fd is not None:
                try:
                    os.unlink(path)
                    removed += 1
                finally:
                    _unlock_close(fd)

    if fsync and (requeued or republished):
        _fsync_dir(layout.ready)
    return Recovery(requeued, republished, dead_lettered, removed, quarantined)


@dataclass(frozen=True)
class DeadBatch:
    """A batch in ``dead/``: its file name there, how often it failed, the last error."""

    name: str
    failures: int
    error: str
    when: float  # when it was moved to dead/ (seconds since the epoch)


def dead_batches(root: str | os.PathLike[str], limit: int | None = None) -> list[DeadBatch]:
    """The batches in ``dead/``, oldest published first (at most ``limit``)."""
    layout = _Layout(root)
    batches: list[DeadBatch] = []
    for name in sorted(_dead_names(layout)):
        if limit is not None and len(batches) >= limit:
            break
        match = _NAME.match(name)
        assert match is not None
        note = os.path.join(layout.dead, f"{name}.error")
        try:
            with open(note, encoding="utf-8", errors="replace") as file:
                error = file.read()
            when = os.stat(note).st_mtime
        except OSError:  # no note (an older spool), or purged meanwhile
            error, when = "", _mtime(os.path.join(layout.dead, name))
        batches.append(DeadBatch(name, int(match.group(2)), error.strip(), when))
    return batches


def replay_dead(
    root: str | os.PathLike[str], names: list[str] | None = None, *, fsync: bool = True
) -> int:
    """Move dead batches (``names``, or all) back to ``ready/`` with their failures reset.

    Each moves with one atomic rename, so a batch is replayed once even if two processes
    replay it at once. Returns how many this call moved.
    """
    layout = _Layout(root)

    def move(name: str, batch_id: str) -> None:
        os.rename(os.path.join(layout.dead, name), os.path.join(layout.ready, f"{batch_id}.0"))

    moved = _each_dead(layout, _dead_names(layout) if names is None else names, move)
    if fsync and moved:
        _fsync_dir(layout.ready)
        _fsync_dir(layout.dead)
    return moved


def purge_dead(
    root: str | os.PathLike[str],
    names: list[str] | None = None,
    older_than: float | None = None,
    *,
    fsync: bool = True,
) -> int:
    """Delete dead batches: ``names``, or all, or (with ``older_than``) those moved to
    ``dead/`` more than that many seconds ago. Returns how many this call deleted."""
    layout = _Layout(root)
    if names is None:
        cutoff = None if older_than is None else time.time() - older_than
        names = [
            batch.name for batch in dead_batches(root) if cutoff is None or batch.when < cutoff
        ]
    deleted = _each_dead(layout, names, lambda name, _: os.unlink(os.path.join(layout.dead, name)))
    if fsync and deleted:
        _fsync_dir(layout.dead)
    return deleted


def _each_dead(layout: _Layout, names: list[str], act: Callable[[str, str], None]) -> int:
    """``act(name, batch id)`` on each named batch of ``dead/``, then drop its error note;
    a batch that is not there (another process got to it first) is skipped. Returns how
    many it acted on."""
    done = 0
    for name in names:
        match = _NAME.match(name)
        if match is None:
            continue
        try:
            act(name, match[1])
        except FileNotFoundError:
            continue
        done += 1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(layout.dead, f"{name}.error"))
    return done


def _dead_names(layout: _Layout) -> list[str]:
    try:
        return [name for name in os.listdir(layout.dead) if _NAME.match(name)]
    except FileNotFoundError:
        return []


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0
