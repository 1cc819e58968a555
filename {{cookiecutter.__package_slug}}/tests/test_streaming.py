"""Unit and property tests for the streaming module (QueueIO and friends)."""

from __future__ import annotations

import array
import csv
import hashlib
import io
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from {{ cookiecutter.__package_slug }}.streaming import (
    HashingQueueIO,
    LimitedQueueIO,
    PipeAbortedError,
    ProgressHashingQueueIO,
    QueueIO,
)

WAIT = 10.0  # bound on every wait in these tests; a healthy run needs milliseconds

T = TypeVar("T")


class Worker(Generic[T]):
    """Run ``fn`` in a daemon thread; every join is bounded."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self._fn = fn
        self._value: T | None = None
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as exc:
            self._error = exc

    def join(self) -> None:
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "worker thread did not finish in time"

    def result(self) -> T:
        self.join()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def error(self) -> BaseException:
        self.join()
        assert self._error is not None, f"expected an error, got {self._value!r}"
        return self._error


@pytest.fixture
def spawn() -> Iterator[Callable[[Callable[[], Any]], Worker[Any]]]:
    """Start workers; at teardown every one of them must have finished."""
    workers: list[Worker[Any]] = []

    def start(fn: Callable[[], Any]) -> Worker[Any]:
        worker = Worker(fn)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.join()


class ProbeMixin(QueueIO):
    """Reports, through its own condition, when a side is about to block in the pipe."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.probe = threading.Condition()
        self.reader_waiting = False
        self.writer_waiting = False
        self.writer_done = False

    def _wait_for_data(
        self, want: int, deadline: float | None, parts: list[tuple[bytes, int, int]], got: int
    ) -> float | None:
        with self.probe:
            self.reader_waiting = True
            self.probe.notify_all()
        try:
            return super()._wait_for_data(want, deadline, parts, got)
        finally:
            with self.probe:
                self.reader_waiting = False

    def _wait_for_room(self, need: int, deadline: float | None, done: int, total: int) -> None:
        blocked = self._buffered + need > self._limit
        if blocked:
            with self.probe:
                self.writer_waiting = True
                self.probe.notify_all()
        try:
            super()._wait_for_room(need, deadline, done, total)
        finally:
            if blocked:
                with self.probe:
                    self.writer_waiting = False

    def mark_writer_done(self) -> None:
        with self.probe:
            self.writer_done = True
            self.probe.notify_all()

    def until_reader_waits(self) -> None:
        with self.probe:
            assert self.probe.wait_for(lambda: self.reader_waiting, WAIT), "reader never blocked"

    def until_writer_waits(self) -> None:
        with self.probe:
            assert self.probe.wait_for(lambda: self.writer_waiting, WAIT), "writer never blocked"

    def until_writer_blocked_or_done(self) -> None:
        with self.probe:
            assert self.probe.wait_for(lambda: self.writer_waiting or self.writer_done, WAIT)


class ProbeQueueIO(ProbeMixin, QueueIO):
    """Unbounded pipe with probes."""


class ProbeLimited(ProbeMixin, LimitedQueueIO):
    """Bounded pipe with probes."""


class ProbeHashing(ProbeMixin, HashingQueueIO):
    """Hashing pipe with probes."""


class ExpiringMixin(ProbeMixin):
    """Its reader's waits time out when the test says so, not when a clock does.

    Make it with ``timeout=WAIT``.  A reader wait whose index (0, 1, ...) is in
    ``expire_waits``, or any wait once ``expire_now`` is set, times out at once.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.expire_waits: set[int] = set()
        self.expire_now = False
        self.waits = 0

    def _wait_for_data(
        self, want: int, deadline: float | None, parts: list[tuple[bytes, int, int]], got: int
    ) -> float | None:
        index = self.waits
        self.waits += 1
        if self.expire_now or index in self.expire_waits:
            self.expire_now = False
            deadline = float("-inf")  # already past: this wait times out without waiting
        return super()._wait_for_data(want, deadline, parts, got)

    def expire_reader_wait(self) -> None:
        """Make the reader's current (or next) wait time out."""
        with self._lock:
            self.expire_now = True
            self._can_read.notify_all()

    def until_writer_done_and_reader_waits(self) -> None:
        with self.probe:
            assert self.probe.wait_for(lambda: self.writer_done and self.reader_waiting, WAIT)


class ExpiringQueueIO(ExpiringMixin, QueueIO):
    """Unbounded pipe whose read timeouts the test triggers."""


class ExpiringLimited(ExpiringMixin, LimitedQueueIO):
    """Bounded pipe whose read timeouts the test triggers."""


class ExpiringHashing(ExpiringMixin, HashingQueueIO):
    """Hashing pipe whose read timeouts the test triggers."""


class ExpiringProgress(ExpiringMixin, ProgressHashingQueueIO):
    """Progress pipe whose read timeouts the test triggers."""


# --------------------------------------------------------------------------- io


def test_is_a_raw_io_object() -> None:
    q = QueueIO()
    assert isinstance(q, io.RawIOBase)
    assert q.readable()
    assert q.writable()
    assert not q.seekable()
    with pytest.raises(io.UnsupportedOperation):
        q.seek(0)
    with pytest.raises(io.UnsupportedOperation):
        q.seek(0, io.SEEK_END)
    with pytest.raises(io.UnsupportedOperation):
        q.fileno()
    assert q.tell() == 0
    q.write(b"abcdef")
    assert q.read(4) == b"abcd"
    assert q.tell() == 4  # the read position, as upload clients that call tell() expect


def test_read_all_kinds_single_thread() -> None:
    q = QueueIO()
    assert q.write(b"first line\nsecond") == 17
    assert q.write(bytearray(b" half\nthird\n")) == 12
    assert q.write(memoryview(b"0123456789")) == 10
    q.close()
    assert not q.closed  # the writer's close ends the data, not the reader's file
    assert q.readline() == b"first line\n"
    assert q.read(6) == b"second"
    assert q.read1(3) == b" ha"
    buf = bytearray(4)
    assert q.readinto(buf) == 4
    assert buf == b"lf\nt"
    assert q.readline(3) == b"hir"
    assert list(q) == [b"d\n", b"0123456789"]
    assert q.read() == b""
    assert q.bytes_written == q.bytes_read == 39


def test_after_eof_every_read_returns_empty() -> None:
    q = QueueIO()
    q.write(b"abc")
    q.close()
    assert q.read(10) == b"abc"
    for _ in range(3):
        assert q.read(10) == b""
        assert q.read() == b""
        assert q.read1(5) == b""
        assert q.readinto(bytearray(5)) == 0
        assert q.readinto1(bytearray(5)) == 0
        assert q.readline() == b""
        assert q.readall() == b""
        assert list(q) == []


def test_read_zero_and_negative_sizes() -> None:
    q = QueueIO()
    q.write(b"abcdef")
    assert q.read(0) == b""
    assert q.readinto(bytearray()) == 0
    q.close()
    assert q.read(None) == b"abcdef"
    q2 = QueueIO()
    q2.write(b"xyz")
    q2.close()
    assert q2.read(-1) == b"xyz"
    with pytest.raises(TypeError):
        q2.read(1.5)  # type: ignore[arg-type]


def test_bytes_are_not_copied_but_mutable_buffers_are() -> None:
    q = QueueIO()
    payload = bytes(range(256)) * 4
    q.write(payload)
    assert q.read(len(payload)) is payload
    mutable = bytearray(b"hello")
    q.write(mutable)
    mutable[:] = b"XXXXX"
    assert q.read(5) == b"hello"


def test_write_accepts_any_contiguous_buffer() -> None:
    q = QueueIO()
    ints = array.array("i", [1, 2, 3])
    assert q.write(ints) == ints.itemsize * 3
    assert q.write(memoryview(b"abcdef")[::2]) == 3  # non-contiguous
    q.close()
    assert q.read() == ints.tobytes() + b"ace"


@pytest.mark.parametrize("bad", ["text", 42, None, [1, 2]])
def test_write_rejects_non_buffers(bad: object) -> None:
    q = QueueIO()
    with pytest.raises(TypeError, match="bytes-like object"):
        q.write(bad)  # type: ignore[arg-type]


def test_readinto_fills_any_writable_buffer_and_refuses_readonly() -> None:
    q = QueueIO()
    q.write(b"\x01\x00\x00\x00\x02\x00\x00\x00")
    with pytest.raises(TypeError, match="writable"):
        q.readinto(b"12345678")
    out = array.array("i", [0, 0])
    assert q.readinto(out) == 8  # nothing was lost by the refused call
    assert out.tolist() == [1, 2]


def test_writelines_and_readlines() -> None:
    q = QueueIO()
    q.writelines([b"a\n", bytearray(b"b\n"), b"c"])
    q.close()
    assert q.readlines() == [b"a\n", b"b\n", b"c"]


# ------------------------------------------------------------ standard wrappers

CSV_ROWS = [
    [str(i), f"name {i}", "quoted, with comma" if i % 7 == 0 else "x" * (i % 13)]
    for i in range(3000)
]


# TextIOWrapper runs over a raw pipe (it reads with read1); only typeshed's protocol
# for its buffer wants a `name`, which QueueIO, like io.RawIOBase, does not have.


def _write_csv(pipe: QueueIO, rows: list[list[str]]) -> None:
    """The writer's side: csv through a text wrapper; closing the wrapper closes the pipe."""
    raw: Any = pipe
    with io.TextIOWrapper(raw, encoding="utf-8", newline="", write_through=True) as text:
        csv.writer(text).writerows(rows)


def _text_reader(pipe: QueueIO, wrapping: str) -> io.TextIOWrapper:
    raw: Any = pipe if wrapping == "text" else io.BufferedReader(pipe)
    return io.TextIOWrapper(raw, encoding="utf-8", newline="")


@pytest.mark.parametrize("wrapping", ["text", "buffered+text"])
def test_csv_reader_reads_every_row_after_the_writer_closed(wrapping: str, spawn: Any) -> None:
    q = QueueIO()
    text = _text_reader(q, wrapping)
    rows = csv.reader(text)
    writer = spawn(lambda: _write_csv(q, CSV_ROWS))
    first = next(rows)  # the reader has begun ...
    writer.result()  # ... and the writer closes while it is far behind
    assert q.buffered > 0
    with text:  # entering checks `closed`: it must not be true while bytes remain
        assert [first, *rows] == CSV_ROWS
        assert text.read() == ""  # at the end, reads return "" again and again
        assert text.read() == ""
    assert not q.closed


@pytest.mark.parametrize("wrapping", ["text", "buffered+text"])
def test_csv_streams_through_a_small_limit(wrapping: str, spawn: Any) -> None:
    q = LimitedQueueIO(memory_limit=1024, chunk_size=256)
    writer = spawn(lambda: _write_csv(q, CSV_ROWS))
    with _text_reader(q, wrapping) as text:
        assert list(csv.reader(text)) == CSV_ROWS
    writer.result()
    assert q.max_buffered <= 1024


def test_buffered_reader_reads_to_the_end_after_close() -> None:
    q = QueueIO()
    q.write(b"line one\nline two\n" + bytes(range(256)) * 100)
    q.close()
    with io.BufferedReader(q, buffer_size=64) as f:
        assert f.readable()
        assert f.peek(1)[:1] == b"l"
        assert f.readline() == b"line one\n"
        assert next(iter(f)) == b"line two\n"
        assert f.read1(3) == bytes(range(3))
        buf = bytearray(5)
        assert f.readinto(buf) == 5
        assert buf == bytes(range(3, 8))
        assert f.read(248) == bytes(range(8, 256))
        assert f.read() == bytes(range(256)) * 99
        assert f.read() == b""
        assert f.read(1) == b""
    assert q.read() == b""


def test_closed_means_the_read_end_is_closed() -> None:
    q = QueueIO()
    q.write(b"abc")
    q.close()
    assert not q.closed
    assert q.readable()
    assert q.writable()
    assert not q.seekable()
    assert q.read() == b"abc"  # end of stream is not closed either
    assert not q.closed
    assert q.read() == b""
    q.close_read()
    assert q.closed
    for check in (q.readable, q.writable, q.seekable, lambda: iter(q)):
        with pytest.raises(ValueError, match="read end is closed"):
            check()
    with pytest.raises(ValueError, match="closed"):
        io.BufferedReader(q).read()


def test_abort_reaches_a_reader_behind_a_wrapper() -> None:
    q = QueueIO()
    q.write(b"a,b\n")
    cause = RuntimeError("source lost")
    q.abort(cause)
    assert not q.closed  # the reader must get the abort, not "I/O operation on closed file"
    text = _text_reader(q, "text")
    with pytest.raises(PipeAbortedError) as info:
        text.readline()
    assert info.value.__cause__ is cause


def test_writer_sees_broken_pipe_after_the_reader_hung_up() -> None:
    q = QueueIO()
    cause = ConnectionError("upload failed")
    q.close_read(cause)
    with pytest.raises(BrokenPipeError):
        q.writelines([b"a", b"b"])
    with pytest.raises(BrokenPipeError) as info, q:  # entering q is not refused ...
        q.write(b"data")  # ... the write says why it cannot go on
    assert info.value.__cause__ is cause


# --------------------------------------------------------- exact reads, threads


def test_read_n_waits_across_writer_stalls(spawn: Any) -> None:
    q = ProbeQueueIO()
    reader = spawn(lambda: q.read(10))
    q.until_reader_waits()
    q.write(b"abc")  # not enough: the read must keep waiting
    q.until_reader_waits()
    q.write(b"defg")
    q.until_reader_waits()
    q.write(b"hijklmn")
    assert reader.result() == b"abcdefghij"
    q.close()
    assert q.read() == b"klmn"


def test_readinto_waits_for_a_full_buffer(spawn: Any) -> None:
    q = ProbeQueueIO()
    buf = bytearray(6)
    reader = spawn(lambda: q.readinto(buf))
    q.until_reader_waits()
    q.write(b"abc")
    q.until_reader_waits()
    q.write(b"def")
    assert reader.result() == 6
    assert buf == b"abcdef"


def test_short_read_happens_only_at_eof(spawn: Any) -> None:
    q = ProbeQueueIO()
    reader = spawn(lambda: (q.read(10), q.read(10)))
    q.until_reader_waits()
    q.write(b"abc")
    q.until_reader_waits()
    q.close()
    assert reader.result() == (b"abc", b"")


def test_read1_returns_what_is_there(spawn: Any) -> None:
    q = ProbeQueueIO()
    reader = spawn(lambda: q.read1(100))
    q.until_reader_waits()
    q.write(b"abc")
    assert reader.result() == b"abc"
    q.write(b"defgh")
    assert q.read1(2) == b"de"
    assert q.read1() == b"fgh"


def test_readline_waits_for_newline(spawn: Any) -> None:
    q = ProbeQueueIO()
    reader = spawn(q.readline)
    q.until_reader_waits()
    q.write(b"par")
    q.until_reader_waits()
    q.write(b"tial\nnext")
    assert reader.result() == b"partial\n"
    assert q.buffered == 4


def test_readall_streams_through_a_small_limit(spawn: Any) -> None:
    q = ProbeLimited(memory_limit=1000, chunk_size=100)
    data = bytes(range(256)) * 40
    reader = spawn(q.readall)
    for i in range(0, len(data), 333):
        q.write(data[i : i + 333])
    q.close()
    assert reader.result() == data
    assert q.max_buffered <= 1000


# --------------------------------------------------------------- memory bound


def test_writer_blocks_at_the_limit_until_reader_makes_room(spawn: Any) -> None:
    q = ProbeLimited(memory_limit=1000, chunk_size=250)
    writer = spawn(lambda: [q.write(b"x" * 400) for _ in range(5)])
    q.until_writer_waits()
    assert 750 < q.buffered <= 1000
    assert q.read(1000) == b"x" * 1000
    writer.result()
    assert q.read(1000) == b"x" * 1000
    assert q.max_buffered <= 1000


def test_blocked_writer_resumes_as_soon_as_its_piece_fits(spawn: Any) -> None:
    q = ProbeLimited(memory_limit=1000, chunk_size=100)
    q.write(b"a" * 1000)
    writer = spawn(lambda: q.write(b"b" * 100))
    q.until_writer_waits()
    assert q.read(100) == b"a" * 100  # exactly enough room; the reader then stops
    assert writer.result() == 100
    assert q.buffered == 1000


def test_write_larger_than_limit_is_split_and_streams(spawn: Any) -> None:
    q = ProbeLimited(memory_limit=4096, chunk_size=1024)
    data = bytes(range(256)) * 1024  # 256 KiB in one write
    reader = spawn(lambda: q.read(len(data)))
    assert q.write(data) == len(data)
    assert reader.result() == data
    assert q.max_buffered <= 4096


def test_read_larger_than_limit_does_not_deadlock(spawn: Any) -> None:
    q = ProbeLimited(memory_limit=1024, chunk_size=256)
    data = bytes(range(256)) * 64
    writer = spawn(lambda: [q.write(data[i : i + 100]) for i in range(0, len(data), 100)])
    assert q.read(len(data)) == data
    writer.result()
    assert q.max_buffered <= 1024


def test_default_chunk_size_never_exceeds_limit() -> None:
    assert LimitedQueueIO(memory_limit=1000).chunk_size == 1000
    assert LimitedQueueIO().memory_limit == 16 * 1024 * 1024
    assert QueueIO().memory_limit is None


# --------------------------------------------------------------------- errors


def test_abort_wakes_blocked_reader_with_cause(spawn: Any) -> None:
    q = ProbeQueueIO()
    reader = spawn(lambda: q.read(10))
    q.until_reader_waits()
    q.write(b"abc")
    cause = RuntimeError("download failed")
    assert q.abort(cause) is True
    error = reader.error()
    assert isinstance(error, PipeAbortedError)
    assert error.__cause__ is cause
    assert "download failed" in str(error)


def test_abort_beats_buffered_data_and_sticks() -> None:
    q = QueueIO()
    q.write(b"partial data")
    q.abort(ValueError("bad"))
    for read in (lambda: q.read(1), q.readall, q.readline, lambda: q.readinto(bytearray(3))):
        with pytest.raises(PipeAbortedError):
            read()
    assert q.buffered == 0
    with pytest.raises(PipeAbortedError):
        q.write(b"more")


def test_exception_inside_with_aborts(spawn: Any) -> None:
    q = ProbeQueueIO()
    reader = spawn(q.readall)

    def write_then_fail() -> None:
        with q:
            q.write(b"some")
            raise KeyError("boom")

    with pytest.raises(KeyError):
        write_then_fail()
    error = reader.error()
    assert isinstance(error, PipeAbortedError)
    assert isinstance(error.__cause__, KeyError)


def test_with_block_closes_cleanly(spawn: Any) -> None:
    q = QueueIO()
    reader = spawn(q.readall)
    with q:
        q.write(b"all of it")
    assert reader.result() == b"all of it"


def test_abort_after_eof_is_too_late() -> None:
    q = QueueIO()
    q.write(b"abc")
    q.close()
    assert q.read() == b"abc"
    assert q.abort(RuntimeError("late")) is False
    assert q.read() == b""


def test_abort_after_close_but_before_eof_reaches_reader() -> None:
    q = QueueIO()
    q.write(b"abc")
    q.close()
    assert q.abort(RuntimeError("checksum mismatch")) is True
    with pytest.raises(PipeAbortedError, match="checksum mismatch"):
        q.read()


def test_close_read_breaks_blocked_writer(spawn: Any) -> None:
    q = ProbeLimited(memory_limit=100, chunk_size=50)
    writer = spawn(lambda: [q.write(b"y" * 60) for _ in range(10)])
    q.until_writer_waits()
    cause = ConnectionError("upload failed")
    q.close_read(cause)
    error = writer.error()
    assert isinstance(error, BrokenPipeError)
    assert error.__cause__ is cause
    assert q.buffered == 0
    with pytest.raises(BrokenPipeError):
        q.write(b"again")
    with pytest.raises(ValueError, match="read end is closed"):
        q.read(1)


def test_close_read_breaks_next_write() -> None:
    q = QueueIO()
    q.write(b"abc")
    q.close_read()
    with pytest.raises(BrokenPipeError):
        q.write(b"def")
    q.close_read()  # idempotent


def test_write_after_close_raises() -> None:
    q = QueueIO()
    q.close()
    q.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        q.write(b"late")
    with pytest.raises(ValueError, match="closed"):
        q.write(b"")


def test_close_from_another_thread_releases_blocked_writer(spawn: Any) -> None:
    q = ProbeLimited(memory_limit=10, chunk_size=10)
    writer = spawn(lambda: q.write(b"z" * 30))
    q.until_writer_waits()
    q.close()
    assert isinstance(writer.error(), ValueError)


def test_close_read_releases_blocked_reader(spawn: Any) -> None:
    q = ProbeQueueIO()
    reader = spawn(lambda: q.read(5))
    q.until_reader_waits()
    q.close_read()
    assert isinstance(reader.error(), ValueError)


def test_read_timeout_loses_nothing(spawn: Any) -> None:
    q = ProbeLimited(memory_limit=100, chunk_size=10, timeout=0.05)
    q.write(b"abc")
    with pytest.raises(TimeoutError, match="timed out"):
        q.read(10)
    with pytest.raises(TimeoutError):
        q.readline()
    assert q.buffered == 3
    q.write(b"defghij")
    assert q.read(10) == b"abcdefghij"


def test_read_timeout_after_partial_take_puts_data_back(spawn: Any) -> None:
    q = ProbeLimited(memory_limit=20, chunk_size=10, timeout=0.2)
    writer = spawn(lambda: q.write(b"0123456789" * 3))  # blocks for room after 20 bytes
    q.until_writer_waits()
    with pytest.raises(TimeoutError):
        q.read(100)  # takes what is buffered while waiting, then gives it back
    writer.result()
    assert q.max_buffered <= 20
    q.close()
    assert q.read() == b"0123456789" * 3


READ_KINDS: dict[str, Callable[[QueueIO], object]] = {
    "read": lambda q: q.read(1000),
    "readall": lambda q: q.readall(),
    "readinto": lambda q: q.readinto(bytearray(1000)),
    "readline": lambda q: q.readline(),
}


@pytest.mark.parametrize("kind", list(READ_KINDS))
@pytest.mark.parametrize("cls", [ExpiringLimited, ExpiringHashing, ExpiringProgress])
def test_timed_out_read_keeps_the_buffer_within_the_limit(
    kind: str, cls: type[ExpiringMixin], spawn: Any
) -> None:
    limit = 20
    extra: dict[str, Any] = {"bar": FakeBar()} if cls is ExpiringProgress else {}
    q = cls(memory_limit=limit, chunk_size=10, timeout=WAIT, **extra)
    data = bytes(range(100, 160))  # no newline: readline gathers it all

    def write() -> None:
        q.write(data)  # 3 x the limit: fits only as the reader takes what is buffered
        q.mark_writer_done()

    writer = spawn(write)
    reader = spawn(lambda: READ_KINDS[kind](q))
    # The reader has taken all but the last refill of the buffer, and waits for more.
    q.until_writer_done_and_reader_waits()
    q.expire_reader_wait()
    assert isinstance(reader.error(), TimeoutError)
    writer.result()
    assert q.buffered <= limit  # what did not fit back is kept aside, outside the buffer
    assert q.max_buffered <= limit
    assert q.bytes_read == 0  # nothing was handed out

    # The kept bytes come first; draining them makes no room, so a writer stays bounded.
    more = bytes(range(200, 210))
    writer = spawn(lambda: q.write(more))
    q.until_writer_waits()
    assert q.read1(5) == data[:5]
    assert q.readline(5) == data[5:10]
    assert q.read(30) == data[10:40]
    assert q.writer_waiting
    assert q.buffered <= limit
    assert q.read(10) == data[40:50]
    writer.result()
    q.close()
    assert q.read() == data[50:] + more
    assert q.max_buffered <= limit
    assert q.bytes_read == q.bytes_written == len(data) + len(more)
    if isinstance(q, HashingQueueIO):
        assert q.hexdigest() == hashlib.sha256(data + more).hexdigest()


def test_unbounded_pipe_puts_a_timed_out_read_back_whole(spawn: Any) -> None:
    q = ExpiringQueueIO(timeout=WAIT)
    reader = spawn(q.readline)
    q.until_reader_waits()
    q.write(b"no newline yet")
    q.mark_writer_done()
    q.until_writer_done_and_reader_waits()
    q.expire_reader_wait()
    assert isinstance(reader.error(), TimeoutError)
    assert q.buffered == 14
    q.write(b"\n")
    assert q.readline() == b"no newline yet\n"


def test_write_timeout_before_any_byte_keeps_stream_usable() -> None:
    q = LimitedQueueIO(memory_limit=10, chunk_size=5, timeout=0.05)
    q.write(b"0123456789")
    with pytest.raises(TimeoutError, match="0 of 5 bytes"):
        q.write(b"abcde")
    assert q.read(10) == b"0123456789"
    q.write(b"abcde")
    q.close()
    assert q.read() == b"abcde"


def test_write_timeout_mid_write_aborts_the_stream() -> None:
    q = LimitedQueueIO(memory_limit=10, chunk_size=5, timeout=0.05)
    with pytest.raises(TimeoutError, match="10 of 20 bytes"):
        q.write(b"x" * 20)
    with pytest.raises(PipeAbortedError) as info:
        q.read(1)
    assert isinstance(info.value.__cause__, TimeoutError)


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"memory_limit": 0}, "memory_limit must be a positive integer, got 0"),
        ({"memory_limit": -5}, "memory_limit must be a positive integer, got -5"),
        ({"memory_limit": True}, "memory_limit must be a positive integer, got True"),
        ({"memory_limit": 1.5}, "memory_limit must be a positive integer, got 1.5"),
        ({"memory_limit": None}, "memory_limit must be a positive integer, got None"),
        ({"chunk_size": 0}, "chunk_size must be a positive integer, got 0"),
        (
            {"memory_limit": 10, "chunk_size": 11},
            "chunk_size must not exceed memory_limit, got chunk_size=11 > memory_limit=10",
        ),
        ({"timeout": 0}, "timeout must be a positive number of seconds or None, got 0"),
        ({"timeout": -1.0}, "timeout must be a positive number of seconds or None, got -1.0"),
        ({"timeout": float("nan")}, "timeout must be a positive number"),
        ({"timeout": "1"}, "timeout must be a positive number"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")):
        LimitedQueueIO(**kwargs)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nope", "hash_algorithm must be a hashlib algorithm name, got 'nope'"),
        ("shake_128", "hash_algorithm must have a fixed digest size, got 'shake_128'"),
    ],
)
def test_bad_hash_algorithm_is_refused(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HashingQueueIO(hash_algorithm=name)


def test_bad_total_size_is_refused() -> None:
    with pytest.raises(ValueError, match="total_size must be a non-negative integer or None"):
        ProgressHashingQueueIO(total_size=-1, bar=FakeBar())


# --------------------------------------------------------------------- hashing


@pytest.mark.parametrize("algorithm", ["sha256", "md5", "blake2b", "sha1"])
def test_hash_matches_hashlib(algorithm: str, spawn: Any) -> None:
    q = HashingQueueIO(hash_algorithm=algorithm, memory_limit=4096, chunk_size=512)
    data = bytes(range(256)) * 100
    reader = spawn(q.readall)
    with q:
        for i in range(0, len(data), 700):
            q.write(data[i : i + 700])
    assert reader.result() == data
    assert q.hexdigest() == hashlib.new(algorithm, data).hexdigest()
    assert q.digest() == hashlib.new(algorithm, data).digest()
    assert q.get_hash() == q.hexdigest()
    assert q.hash_name == algorithm


def test_digest_only_after_clean_close() -> None:
    q = HashingQueueIO()
    q.write(b"abc")
    with pytest.raises(RuntimeError, match="not called close"):
        q.hexdigest()
    q.abort()
    with pytest.raises(RuntimeError, match="aborted"):
        q.hexdigest()


class RecordingHasher:
    """Wraps a hashlib object and records which threads fed it."""

    def __init__(self) -> None:
        self.inner = hashlib.sha256()
        self.threads: set[int] = set()
        self.name = self.inner.name

    def update(self, data: bytes | memoryview) -> None:
        self.threads.add(threading.get_ident())
        self.inner.update(data)

    def hexdigest(self) -> str:
        return self.inner.hexdigest()


def test_hashing_happens_in_the_writer_thread(spawn: Any) -> None:
    q = HashingQueueIO(memory_limit=1000, chunk_size=100)
    recorder = RecordingHasher()
    q._hasher = recorder  # type: ignore[assignment]
    data = bytes(range(256)) * 20

    def write() -> int:
        with q:
            q.write(data)  # split into pieces: each is hashed once it is in
            q.write(b"tail")
        return threading.get_ident()

    writer = spawn(write)
    assert q.readall() == data + b"tail"
    assert recorder.threads == {writer.result()}
    assert q.hexdigest() == hashlib.sha256(data + b"tail").hexdigest()


# -------------------------------------------------------------------- progress


class FakeBar:
    """Records what a progress bar is told."""

    def __init__(self) -> None:
        self.total = 0
        self.closes = 0

    def update(self, n: int) -> None:
        self.total += n

    def close(self) -> None:
        self.closes += 1


def test_progress_bar_follows_writes_and_closes_once() -> None:
    bar = FakeBar()
    q = ProgressHashingQueueIO(total_size=10, bar=bar, memory_limit=64)
    q.write(b"01234")
    q.write(bytearray(b"56789"))
    assert bar.total == 10
    q.close()
    q.close()
    assert q.progress is bar
    assert q.read() == b"0123456789"
    assert q.read() == b""
    assert q.abort() is False  # too late: the reader saw the end
    assert bar.closes == 1
    assert q.hexdigest() == hashlib.sha256(b"0123456789").hexdigest()


def test_progress_uses_tqdm_when_installed(capsys: pytest.CaptureFixture[str]) -> None:
    import tqdm  # a dependency of the project (its drain progress bar)

    q = ProgressHashingQueueIO(total_size=3, desc="copy")
    assert isinstance(q.progress, tqdm.tqdm)
    q.write(b"abc")
    assert q.progress.n == 3
    q.close()
    assert "copy" in capsys.readouterr().err


def test_progress_without_tqdm_runs_without_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # makes `import tqdm` fail
    q = ProgressHashingQueueIO(total_size=3)
    assert q.progress is None
    q.write(b"abc")
    q.close()
    assert q.read() == b"abc"
    assert q.hexdigest() == hashlib.sha256(b"abc").hexdigest()


# ------------------------------------------------------------ property tests


@st.composite
def transfers(draw: st.DrawFn) -> dict[str, Any]:
    limit = draw(st.one_of(st.none(), st.integers(1, 2048)))
    chunk = None if limit is None else draw(st.integers(1, limit))
    total = draw(st.integers(0, 12_000))
    data = draw(st.binary(min_size=total, max_size=total)) if total < 500 else None
    if data is None:
        seed = draw(st.integers(0, 255))
        data = bytes((seed + i * 7) % 251 for i in range(total)).replace(b"\x07", b"\n")
    writes = draw(st.lists(st.integers(0, 3000), min_size=1, max_size=30))
    kinds = st.sampled_from(["bytes", "bytearray", "memoryview"])
    reads = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["read", "read1", "readinto", "readinto1", "readline"]),
                st.integers(0, 3000),
            ),
            min_size=1,
            max_size=30,
        )
    )
    writes.append(1000)  # each round of writes and of reads makes progress
    reads.append(("read", 1000))
    return {
        "limit": limit,
        "chunk": chunk,
        "data": data,
        "writes": writes,
        "kinds": [draw(kinds) for _ in writes],
        "reads": reads,
        "stall_side": draw(st.sampled_from(["none", "writer", "reader"])),
        "stalls": draw(st.sets(st.integers(0, 40), max_size=6)),
    }


def _pipe(limit: int | None, chunk: int | None) -> ProbeMixin:
    if limit is None:
        return ProbeHashing(memory_limit=sys.maxsize)
    return ProbeHashing(memory_limit=limit, chunk_size=chunk)


def _read_once(q: QueueIO, kind: str, size: int) -> tuple[bytes, bool]:
    """One read of ``kind``; returns the bytes and whether it proved end of stream."""
    if kind == "read":
        got = q.read(size)
        return got, len(got) < size
    if kind == "read1":
        got = q.read1(size)
        return got, size > 0 and not got
    if kind == "readline":
        got = q.readline(size)
        return got, len(got) < size and not got.endswith(b"\n")
    buf = bytearray(size)
    n = q.readinto(buf) if kind == "readinto" else q.readinto1(buf)
    if kind == "readinto":
        return bytes(buf[:n]), n < size
    return bytes(buf[:n]), size > 0 and n == 0


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(transfers())
def test_bytes_out_equal_bytes_in(case: dict[str, Any]) -> None:
    q = _pipe(case["limit"], case["chunk"])
    data: bytes = case["data"]
    stalls: set[int] = case["stalls"]

    def write() -> None:
        pos = 0
        step = 0
        with q:
            while pos < len(data):
                for size, kind in zip(case["writes"], case["kinds"], strict=True):
                    if case["stall_side"] == "writer" and step in stalls:
                        q.until_reader_waits()
                    step += 1
                    piece = data[pos : pos + size]
                    if kind == "bytearray":
                        piece = bytearray(piece)  # type: ignore[assignment]
                    elif kind == "memoryview":
                        piece = memoryview(piece)  # type: ignore[assignment]
                    assert q.write(piece) == len(piece)
                    pos += size
                    if pos >= len(data):
                        break
        q.mark_writer_done()

    writer = Worker(write)
    out = bytearray()
    step = 0
    try:
        while True:
            for kind, size in case["reads"]:
                if case["stall_side"] == "reader" and step in stalls:
                    q.until_writer_blocked_or_done()
                step += 1
                got, eof = _read_once(q, kind, size)
                if kind in ("read", "readinto"):
                    assert len(got) == size or eof  # exact unless the stream ended
                assert len(got) <= size
                out += got
                if eof:
                    break
            else:
                continue
            break
        assert q.read() == b""  # nothing more after the end, nothing twice
    finally:
        q.close_read()
        writer.result()
    assert bytes(out) == data
    assert isinstance(q, HashingQueueIO)
    assert q.hexdigest() == hashlib.sha256(data).hexdigest()
    if case["limit"] is not None:
        assert q.max_buffered <= case["limit"]


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=20),
    limit=st.integers(1, 4096),
    read_size=st.integers(1, 10_000),
)
def test_memory_bound_holds_with_a_slow_reader(
    sizes: list[int], limit: int, read_size: int
) -> None:
    q = ProbeLimited(memory_limit=limit)
    observed: list[int] = []

    def write() -> None:
        with q:
            for size in sizes:
                q.write(b"m" * size)
        q.mark_writer_done()

    writer = Worker(write)
    total = 0
    while True:
        q.until_writer_blocked_or_done()  # let the writer fill the buffer first
        observed.append(q.buffered)
        got = q.read(read_size)
        total += len(got)
        if len(got) < read_size:
            break
    writer.result()
    assert total == sum(sizes)
    assert max(observed) <= limit
    assert q.max_buffered <= limit


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    case=transfers(),
    expire=st.sets(st.integers(0, 80), max_size=12),
    hashing=st.booleans(),
)
def test_memory_bound_holds_across_timed_out_reads(
    case: dict[str, Any], expire: set[int], hashing: bool
) -> None:
    limit = case["limit"] or 64
    chunk = min(case["chunk"] or limit, limit)
    cls = ExpiringHashing if hashing else ExpiringLimited
    q = cls(memory_limit=limit, chunk_size=chunk, timeout=WAIT)
    q.expire_waits = expire  # these reader waits time out, wherever they happen
    data: bytes = case["data"]

    def write() -> None:
        with q:
            pos = 0
            while pos < len(data):
                for size in case["writes"]:
                    q.write(data[pos : pos + size])
                    pos += size
                    if pos >= len(data):
                        break
        q.mark_writer_done()

    writer = Worker(write)
    out = bytearray()
    timeouts = 0
    try:
        eof = False
        while not eof:
            for kind, size in case["reads"]:
                try:
                    got, eof = _read_once(q, kind, size)
                except TimeoutError:
                    timeouts += 1
                    assert q.buffered <= limit
                    continue
                out += got
                if eof:
                    break
        assert q.read() == b""
    finally:
        q.close_read()  # a failed reader must not leave the writer blocked
        writer.join()
    writer.result()
    assert bytes(out) == data
    assert q.max_buffered <= limit
    assert timeouts <= len(expire)
