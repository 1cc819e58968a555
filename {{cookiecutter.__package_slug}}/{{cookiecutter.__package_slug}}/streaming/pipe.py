"""``QueueIO``: the pipe itself, an ``io.RawIOBase`` with a write side, a read side and the
ways each side ends (``close``, ``abort``, ``close_read``)."""

from __future__ import annotations

import io
import operator
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

from .pieces import (
    _NO_LIMIT,
    DEFAULT_CHUNK_SIZE,
    PipeAbortedError,
    _as_bytes,
    _byte_view,
    _join,
    _Piece,
    _positive_int,
    _timeout,
)

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

_Pipe = TypeVar("_Pipe", bound="QueueIO")


class QueueIO(io.RawIOBase):
    """An in-memory pipe: one thread writes, another reads; unbounded unless limited.

    ``memory_limit`` bounds the bytes held (``None``: unbounded), ``chunk_size`` is
    the piece size a write is split into while it waits for room, and ``timeout``
    (seconds) bounds every blocking wait, raising :class:`TimeoutError`.
    """

    def __init__(
        self,
        *,
        memory_limit: int | None = None,
        chunk_size: int | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__()
        if memory_limit is not None:
            memory_limit = _positive_int("memory_limit", memory_limit)
        if chunk_size is None:
            chunk_size = DEFAULT_CHUNK_SIZE
            if memory_limit is not None:
                chunk_size = min(chunk_size, memory_limit)
        else:
            chunk_size = _positive_int("chunk_size", chunk_size)
            if memory_limit is not None and chunk_size > memory_limit:
                raise ValueError(
                    f"chunk_size must not exceed memory_limit, got chunk_size={chunk_size} "
                    f"> memory_limit={memory_limit}"
                )
        self._memory_limit = memory_limit
        self._limit = _NO_LIMIT if memory_limit is None else memory_limit
        self._chunk_size = chunk_size
        self._timeout = _timeout(timeout)

        self._lock = threading.Lock()
        self._can_read = threading.Condition(self._lock)  # the reader waits here
        self._can_write = threading.Condition(self._lock)  # the writer waits here
        # The stream's unread bytes, in order.  The first _carried of them were put
        # back by a timed-out read beyond the limit; the other _buffered count against it.
        self._pieces: deque[_Piece] = deque()
        self._carried = 0
        self._buffered = 0
        self._max_buffered = 0
        self._bytes_written = 0
        self._bytes_read = 0
        # While the reader waits: how many buffered bytes would let it proceed.
        self._reader_want = 0
        # While the writer waits: how much room it needs.
        self._writer_need = 0
        self._write_closed = False  # close() or abort() was called
        self._aborted = False
        self._abort_cause: BaseException | None = None
        self._read_closed = False  # close_read() was called
        self._read_cause: BaseException | None = None
        self._eof_seen = False  # a read already reported the end of the stream
        self._write_end_done = False  # _write_end_closed() hook already ran

    # ------------------------------------------------------------------ info

    @property
    def memory_limit(self) -> int | None:
        """The most bytes the pipe may buffer at once, or ``None`` when unbounded."""
        return self._memory_limit

    @property
    def chunk_size(self) -> int:
        """Largest piece a write is split into while it waits for room."""
        return self._chunk_size

    @property
    def timeout(self) -> float | None:
        """Seconds any single blocking call may wait, or ``None`` to wait as long as needed."""
        return self._timeout

    @property
    def buffered(self) -> int:
        """Bytes written but not yet read, at most ``memory_limit``; see below for one exception.

        A read that times out puts back the bytes it had taken, but only as many as
        the buffer has room for (the writer may have refilled it meanwhile).  It keeps
        the rest aside, not counted here nor against the limit, and the next reads
        return them first; reading them makes no room for the writer.
        """
        return self._buffered

    @property
    def max_buffered(self) -> int:
        """The largest value ``buffered`` has had (never above ``memory_limit``)."""
        return self._max_buffered

    @property
    def bytes_written(self) -> int:
        """Bytes admitted by ``write`` so far."""
        return self._bytes_written

    @property
    def bytes_read(self) -> int:
        """Bytes handed to the reader so far."""
        return self._bytes_read

    @property
    def closed(self) -> bool:
        """True once the reader called ``close_read()``; then reads raise ``ValueError``.

        ``close()`` and ``abort()`` leave it False: they end the data, not the read
        end, which still returns the buffered rest and then ``b""`` (or raises
        :class:`PipeAbortedError`).  io wrappers check ``closed`` before each call,
        so this is what lets them read to the end.  A writer behind a wrapper
        (``io.BufferedWriter``, ``io.TextIOWrapper``) is therefore refused with
        ``ValueError`` by the wrapper, not ``BrokenPipeError``, once the reader hung up.
        """
        return self._read_closed

    def _check_open(self) -> None:
        if self._read_closed:
            raise ValueError("I/O operation on a QueueIO whose read end is closed (close_read())")

    def readable(self) -> bool:
        """True: this is the read end of the pipe.  ``ValueError`` once ``closed``, as io does."""
        self._check_open()
        return True

    def writable(self) -> bool:
        """True: this is the write end of the pipe.  ``ValueError`` once ``closed``, as io does."""
        self._check_open()
        return True

    def seekable(self) -> bool:
        """False: a pipe cannot seek.  ``ValueError`` once ``closed``, as io does."""
        self._check_open()
        return False

    def tell(self) -> int:
        """The read position: bytes handed to the reader so far (``seek`` is unsupported)."""
        return self._bytes_read

    # ----------------------------------------------------------------- write

    def write(self, b: ReadableBuffer, /) -> int:
        """Append ``b`` (bytes, bytearray, memoryview...) and return its length in bytes.

        ``bytes`` are kept without copying; other buffers are copied once, so the
        caller may reuse them.  Blocks while the buffer has no room.  Raises
        ``ValueError`` after ``close()``, :class:`PipeAbortedError` after ``abort()``
        and ``BrokenPipeError`` once the reader called ``close_read()``.
        """
        data = b if type(b) is bytes else _as_bytes(b)
        n = len(data)
        with self._lock:
            if self._write_closed or self._read_closed:
                self._raise_write_error()
            buffered = self._buffered + n
            if buffered > self._limit:
                fits = False
            elif n:
                # The common case, inlined from _admit: it is most of a small write's cost.
                fits = True
                self._pieces.append((data, 0, n))
                self._buffered = buffered
                self._bytes_written += n
                if buffered > self._max_buffered:
                    self._max_buffered = buffered
                want = self._reader_want
                if want and buffered >= want:
                    self._can_read.notify()
            else:
                return 0
        if not fits:
            return self._write_in_pieces(data)
        self._admitted(data)
        return n

    def writelines(self, lines: Iterable[ReadableBuffer], /) -> None:
        """``write`` each buffer in turn; it raises what ``write`` raises."""
        for line in lines:
            self.write(line)

    def _write_in_pieces(self, data: bytes) -> int:
        n = len(data)
        step = self._chunk_size
        view = memoryview(data)
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        start = 0
        while start < n:
            end = min(start + step, n)
            with self._lock:
                self._wait_for_room(end - start, deadline, start, n)
                self._admit(data, start, end)
            self._admitted(view[start:end])
            start = end
        return n

    def _admit(self, data: bytes, start: int, end: int) -> None:
        """Append one piece; the caller holds the lock and checked for room."""
        self._pieces.append((data, start, end))
        buffered = self._buffered + end - start
        self._buffered = buffered
        self._bytes_written += end - start
        if buffered > self._max_buffered:
            self._max_buffered = buffered
        want = self._reader_want
        if want and buffered >= want:
            self._can_read.notify()

    def _wait_for_room(self, need: int, deadline: float | None, done: int, total: int) -> None:
        """Wait (lock held) until ``need`` more bytes fit; ``done`` of ``total`` are in."""
        while True:
            if self._write_closed or self._read_closed:
                self._raise_write_error()
            if self._buffered + need <= self._limit:
                return
            left = None
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    error = TimeoutError(
                        f"write() timed out after {self._timeout} s waiting for room "
                        f"({done} of {total} bytes admitted)"
                    )
                    if done:
                        # Part of this write is already in the stream: the reader must
                        # not take the rest of the stream as whole.
                        self._abort_locked(error)
                    raise error
            self._writer_need = need
            if self._reader_want:
                self._can_read.notify()  # the reader takes what is there, making room
            try:
                self._can_write.wait(left)
            finally:
                self._writer_need = 0

    def _raise_write_error(self) -> None:
        if self._aborted:
            raise PipeAbortedError(self._abort_message()) from self._abort_cause
        if self._write_closed:
            raise ValueError("write to a closed QueueIO: close() was already called")
        raise BrokenPipeError("the reader closed the QueueIO") from self._read_cause

    def _admitted(self, data: bytes | memoryview) -> None:
        """Hook run in the writer's thread, without the lock, after ``data`` entered the pipe."""

    def _write_end_closed(self, clean: bool) -> None:
        """Hook run once, without the lock, when the write side ends (``clean``: by close())."""

    # ------------------------------------------------------------------ read

    def read(self, size: int | None = -1, /) -> bytes:
        """Return exactly ``size`` bytes, fewer only at end of stream; ``b""`` after it.

        ``size`` < 0 or None reads to the end (``readall``).  Blocks until enough
        data arrived or the writer closed.  Raises :class:`PipeAbortedError` if the
        writer aborted and ``ValueError`` after ``close_read()``.
        """
        n = -1 if size is None else operator.index(size)
        if n < 0:
            return self.readall()
        return _join(self._collect(n, partial=False))

    def read1(self, size: int | None = -1, /) -> bytes:
        """Return up to ``size`` bytes (all if < 0), waiting only while nothing is buffered."""
        n = -1 if size is None else operator.index(size)
        return _join(self._collect(_NO_LIMIT if n < 0 else n, partial=True))

    def readall(self) -> bytes:
        """Read until the writer closes and return everything."""
        return _join(self._collect(_NO_LIMIT, partial=False))

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        """Fill ``buffer`` completely (less only at end of stream); return the byte count."""
        with memoryview(buffer) as view:
            out = _byte_view(view)
            return self._copy_into(out, self._collect(len(out), partial=False))

    def readinto1(self, buffer: WriteableBuffer, /) -> int:
        """Copy what is buffered into ``buffer``, waiting only while nothing is buffered."""
        with memoryview(buffer) as view:
            out = _byte_view(view)
            return self._copy_into(out, self._collect(len(out), partial=True))

    @staticmethod
    def _copy_into(out: memoryview, parts: list[_Piece]) -> int:
        pos = 0
        for data, start, end in parts:
            size = end - start
            if start == 0 and size == len(data):
                out[pos : pos + size] = data
            else:
                out[pos : pos + size] = memoryview(data)[start:end]
            pos += size
        return pos

    def readline(self, size: int | None = -1, /) -> bytes:
        """Return one line including its ``b"\\n"``, at most ``size`` bytes if ``size`` >= 0."""
        limit = -1 if size is None else operator.index(size)
        if limit < 0:
            limit = _NO_LIMIT
        parts: list[_Piece] = []
        got = 0
        deadline: float | None = None
        with self._lock:
            while got < limit:
                if self._read_closed or self._aborted:
                    self._raise_read_error()
                found = False
                pieces = self._pieces
                while pieces and got < limit:
                    data, start, end = pieces[0]
                    stop = min(end, start + limit - got)
                    newline = data.find(b"\n", start, stop)
                    if newline >= 0:
                        stop = newline + 1
                        found = True
                    self._take_head(stop)
                    parts.append((data, start, stop))
                    got += stop - start
                    if found:
                        break
                if found or got >= limit:
                    break
                if self._write_closed:
                    self._eof_seen = True
                    break
                deadline = self._wait_for_data(1, deadline, parts, got)
        return _join(parts)

    def __iter__(self) -> Iterator[bytes]:
        """Iterate over lines, as files do; works after the writer closed, not once ``closed``."""
        self._check_open()
        return self

    def _collect(self, n: int, *, partial: bool) -> list[_Piece]:
        """Take ``n`` bytes (or, if ``partial``, at least one) out of the buffer."""
        parts: list[_Piece] = []
        got = 0
        deadline: float | None = None
        with self._lock:
            while True:
                if self._read_closed or self._aborted:
                    self._raise_read_error()
                available = self._carried + self._buffered
                if available >= n - got:
                    self._take(n - got, parts)
                    return parts
                if self._write_closed:  # end of stream: hand out the rest, short
                    self._take(available, parts)
                    self._eof_seen = True
                    return parts
                if available and (partial or self._writer_need):
                    # read1 wants whatever there is; a full buffer must be drained
                    # for the writer to continue, so take it now.
                    self._take(available, parts)
                    got += available
                    if partial:
                        return parts
                    continue
                deadline = self._wait_for_data(1 if partial else n - got, deadline, parts, got)

    def _wait_for_data(
        self, want: int, deadline: float | None, parts: list[_Piece], got: int
    ) -> float | None:
        """Wait (lock held) for ``want`` bytes or a state change; return the deadline."""
        left = None
        if self._timeout is not None:
            now = time.monotonic()
            if deadline is None:
                deadline = now + self._timeout
            left = deadline - now
            if left <= 0:
                self._put_back(parts, got)
                raise TimeoutError(
                    f"read timed out after {self._timeout} s waiting for data "
                    f"({self._buffered} bytes buffered)"
                )
        # The writer counts only _buffered; what is carried is there already.
        self._reader_want = max(1, want - self._carried)
        try:
            self._can_read.wait(left)
        finally:
            self._reader_want = 0
        return deadline

    def _take(self, n: int, parts: list[_Piece]) -> None:
        """Move ``n`` <= buffered bytes from the buffer into ``parts`` (lock held)."""
        pieces = self._pieces
        left = n
        while left:
            data, start, end = pieces[0]
            size = end - start
            if size <= left:
                pieces.popleft()
                parts.append((data, start, end))
                left -= size
            else:
                pieces[0] = (data, start + left, end)
                parts.append((data, start, start + left))
                left = 0
        self._consumed(n)

    def _take_head(self, stop: int) -> None:
        """Consume the head piece up to index ``stop`` of its data (lock held)."""
        data, start, end = self._pieces[0]
        if stop == end:
            self._pieces.popleft()
        else:
            self._pieces[0] = (data, stop, end)
        self._consumed(stop - start)

    def _consumed(self, n: int) -> None:
        """Account for ``n`` bytes taken from the front (lock held): carried ones first."""
        self._bytes_read += n
        carried = self._carried
        if carried:
            if n <= carried:
                self._carried = carried - n
                return  # the buffer itself is unchanged: no room for the writer
            self._carried = 0
            n -= carried
        self._buffered -= n
        need = self._writer_need
        if need and self._buffered + need <= self._limit:  # wake the writer once it fits
            self._can_write.notify()

    def _put_back(self, parts: list[_Piece], got: int) -> None:
        """Return bytes taken by a read that timed out to the front, so none are lost.

        While the read waited, the writer may have refilled the room they had left;
        so the buffer counts them only as far as it stays within the limit, and the
        first bytes are carried outside it instead (they are the first to be read).
        """
        if not parts:
            return
        self._pieces.extendleft(reversed(parts))
        self._bytes_read -= got
        unread = self._carried + self._buffered + got
        buffered = min(unread, self._limit)  # never less than before: _buffered <= limit
        self._carried = unread - buffered
        self._buffered = buffered
        if buffered > self._max_buffered:
            self._max_buffered = buffered

    def _raise_read_error(self) -> None:
        if self._read_closed:
            raise ValueError("read from a QueueIO whose read end is closed (close_read())")
        raise PipeAbortedError(self._abort_message()) from self._abort_cause

    # --------------------------------------------------------------- closing

    def close(self) -> None:
        """Writer: end the stream.  The reader gets the buffered rest, then ``b""``.

        Idempotent.  A write blocked in another thread raises ``ValueError``.
        ``closed`` stays False.  io wrappers' ``close()`` calls this, so a reader that
        closes its wrapper before the end ends the writer's stream: a reader that
        stops early should call ``close_read()`` (or detach its wrapper) instead.
        """
        with self._lock:
            if self._write_closed:
                return
            self._write_closed = True
            self._wake_all()
        self._finish_write_end(clean=True)

    def abort(self, exc: BaseException | None = None) -> bool:
        """Writer: end the stream with an error; buffered data is dropped.

        The reader's next (or blocked) read raises :class:`PipeAbortedError` whose
        ``__cause__`` is ``exc``.  Returns False when it came too late to matter:
        the reader had already seen the end of the stream or closed its end.
        """
        with self._lock:
            effective = self._abort_locked(exc)
        self._finish_write_end(clean=False)
        return effective

    def _abort_locked(self, exc: BaseException | None) -> bool:
        self._write_closed = True
        if self._aborted or self._eof_seen or self._read_closed:
            return False
        self._aborted = True
        self._abort_cause = exc
        self._pieces.clear()
        self._carried = 0
        self._buffered = 0
        self._wake_all()
        return True

    def close_read(self, exc: BaseException | None = None) -> None:
        """Reader: hang up.  Unread data is dropped; later reads raise ``ValueError``.

        The writer's next (or blocked) write raises ``BrokenPipeError`` whose
        ``__cause__`` is ``exc``.  Idempotent.
        """
        with self._lock:
            if self._read_closed:
                return
            self._read_closed = True
            self._read_cause = exc
            self._pieces.clear()
            self._carried = 0
            self._buffered = 0
            self._wake_all()

    def _wake_all(self) -> None:
        self._can_read.notify_all()
        self._can_write.notify_all()

    def _finish_write_end(self, clean: bool) -> None:
        with self._lock:
            if self._write_end_done:
                return
            self._write_end_done = True
        self._write_end_closed(clean)

    def _abort_message(self) -> str:
        cause = self._abort_cause
        if cause is None:
            return "the writer aborted the stream"
        return f"the writer aborted the stream: {cause!r}"

    def __enter__(self: _Pipe) -> _Pipe:
        """The writer's ``with``: unlike io's, entering never fails; a write says why it can't."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close on success; on an exception, ``abort(exc)`` so the reader sees it."""
        if exc is None:
            self.close()
        else:
            self.abort(exc)
