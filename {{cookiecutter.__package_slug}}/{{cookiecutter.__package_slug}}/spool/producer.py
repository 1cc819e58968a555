"""``Producer``: records go into batch files in ``tmp/``, which a background thread publishes
to ``ready/`` (write, fsync, atomic rename), with backpressure on ``ready/``."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from types import TracebackType

from .files import _create_locked, _fdatasync, _fsync_dir, _Layout, _Stamper, _unlock_close
from .forks import _track
from .records import (
    _CRC_PACK,
    _TEXT,
    _TEXT_BODY,
    MAGIC,
    SpoolError,
    SpoolFull,
    _check_int,
    _check_seconds,
    _crc32,
    _frame,
)

_MAX_PENDING = 4  # full batches a producer may hold while they are being published


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
