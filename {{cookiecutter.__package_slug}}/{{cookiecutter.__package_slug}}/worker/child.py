"""What runs inside each worker process.

A worker process opens the source's session and the context once, then runs the reader on
the items its parent sends, at most `concurrency` at a time, and reports one outcome per item.
If the source commits in-process (a durable source acknowledging the item), its `commit` runs
after the reader, outside the reader's slot: the next item starts while the acknowledgement is
on the wire. It never
abandons an item it was sent: on RETIRE it finishes all of them, on STOP (or SIGTERM) it
finishes the running ones and hands the others back as not started. Then it closes the
context and exits.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from contextlib import AsyncExitStack, nullcontext, suppress
from dataclasses import dataclass
from typing import Any

from .calls import keywords, open_context
from .instrument import Instrument
from .metrics import Metrics
from .retry import Permanent, ReaderTimeout, RetryAfter, backoff
from .source import Failure, Source
from .texts import error_text, shorten
from .wire import Frame, FrameReader, Kind, encode

logger = logging.getLogger(__name__)

CONTEXT_FAILED_EXIT = 3
_UNTRACED = nullcontext()  # the span of a reader call when nothing traces it
READ_AHEAD = 2  # items per reader slot a process holds that it has not started
CANCEL_GRACE = 1.0  # seconds a timed-out async reader gets to finish cancelling


@dataclass(frozen=True)
class ReaderPlan:
    """Everything a worker process needs to run the reader; inherited through fork."""

    reader: Callable[..., Any]
    reader_takes: frozenset[str]
    context: Callable[..., Any] | None
    settings: Any
    concurrency: int
    window: int  # items the parent hands one process: READ_AHEAD per slot, plus committing
    max_retries: int
    retry_backoff: float
    retry_backoff_max: float
    source: Source
    timeout: float = 0.0  # READER_TIMEOUT: seconds one reader call may take; 0: no limit
    metrics: Metrics | None = None
    name: str = ""  # the worker's
    tracing: Instrument | None = None  # with one, each item's payload starts with its carrier


def run_worker_process(sock: socket.socket, inherited: list[int], plan: ReaderPlan) -> None:
    """Entry point of a forked worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent coordinates Ctrl-C
    signal.set_wakeup_fd(-1)  # the parent's event loop wake-up pipe is not ours
    for fd in inherited:  # the parent's ends of sibling sockets: keep EOF meaning "parent gone"
        with suppress(OSError):
            os.close(fd)
    try:
        code = asyncio.run(_WorkerProcess(sock, plan).run())
    finally:
        if plan.tracing is not None:  # after the context closed: its spans are sent too
            plan.tracing.process_stopping()
    raise SystemExit(code)


class _WorkerProcess(asyncio.Protocol):
    def __init__(self, sock: socket.socket, plan: ReaderPlan) -> None:
        self.sock = sock
        self.plan = plan
        self.frames = FrameReader()
        self.backlog: deque[tuple[int, bytes]] = deque()
        self.running: set[asyncio.Task[None]] = set()
        self.reading = 0  # items in the reader (at most plan.concurrency)
        self.outbox: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.retiring = False
        self.stopping = False
        self.ctx: Any = None
        self.state: Any = None  # the source's session
        self.is_async = inspect.iscoroutinefunction(plan.reader)
        self.begins = plan.source.begins
        self.commits = plan.source.commits
        self.marks_starts = bool(plan.timeout) and not self.is_async  # the parent times them
        self.done: asyncio.Future[None] | None = None
        self.closed: asyncio.Future[None] | None = None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        self.closed = loop.create_future()
        async with AsyncExitStack() as stack:
            try:
                if self.plan.tracing is not None:
                    self.plan.tracing.process_started(self.plan.name)
                self.state = await stack.enter_async_context(self.plan.source.session())
                self.ctx = await open_context(stack, self.plan.context, self.plan.settings)
            except Exception as exc:
                logger.exception("context() failed in %s", _process_name())
                text = f"{type(exc).__name__}: {exc}".encode(errors="replace")
                self.sock.sendall(encode(Kind.CONTEXT_FAILED, payload=text))
                return CONTEXT_FAILED_EXIT
            loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
            await loop.connect_accepted_socket(lambda: self, self.sock)
            self._send(encode(Kind.READY))
            await self.done
            self._flush()
            if self.transport is not None:
                self.transport.close()  # sends what is buffered, then closes
                await self.closed
        return 0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for frame in self.frames.feed(data):
            if frame.kind == Kind.ITEM:
                self._accept(frame)
            elif frame.kind == Kind.RETIRE:
                self.retiring = True
            elif frame.kind == Kind.STOP:
                self._stop()
        self._check_done()

    def eof_received(self) -> bool:
        self._stop()  # the parent went away: finish what runs, nobody to report to
        self._check_done()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(None)
        self._stop()
        self._check_done()

    # items
    def _accept(self, frame: Frame) -> None:
        if self.stopping:
            self._send(encode(Kind.NOT_STARTED, frame.seq))
        elif self.reading < self.plan.concurrency:
            self._start(frame.seq, frame.payload)
        else:
            self.backlog.append((frame.seq, frame.payload))

    def _start(self, seq: int, payload: bytes) -> None:
        self.reading += 1
        task = asyncio.get_running_loop().create_task(self._run_item(seq, payload))
        self.running.add(task)
        task.add_done_callback(self._finished)

    def _reader_done(self) -> None:
        """An item left the reader: its slot goes to the next item waiting."""
        self.reading -= 1
        if self.backlog and not self.stopping:
            self._start(*self.backlog.popleft())

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.running.discard(task)
        self._check_done()

    async def _run_item(self, seq: int, payload: bytes) -> None:
        holding = True  # this item holds one of the reader slots
        reported = False
        started = time.perf_counter()
        carrier: bytes | None = None
        try:
            if self.plan.tracing is not None:  # the parent put the item's carrier first
                carrier, _, payload = payload.partition(b"\n")
            try:
                item = pickle.loads(payload)
            except BaseException as exc:  # any failure is the item's outcome
                logger.error("item #%d could not be unpickled in %s", seq, _process_name())
                self._send(
                    encode(Kind.FAILED, seq, 1, f"unpickling failed: {error_text(exc)}".encode())
                )
                reported = True
                return
            if self.begins or self.marks_starts:
                attempt, error, timed_out = await self._attempt(seq, item, carrier)
            else:
                attempt, error, timed_out = await self._read(item, seq, carrier)
            if self.commits:
                holding = False
                self._reader_done()  # the next item reads while this one commits
                self._send(encode(Kind.READ, seq))  # and the parent may send one more
                error = await self._commit(self.plan.source, item, error)
            metrics = self.plan.metrics
            if metrics is not None:  # duration first: whoever sees the outcome sees it
                metrics.duration.observe(time.perf_counter() - started)
                (metrics.succeeded if error is None else metrics.failed).inc()
                if timed_out:
                    metrics.timed_out.inc()
            if error is None:
                self._send(encode(Kind.SUCCEEDED, seq, attempt))
            else:
                kind = Kind.TIMED_OUT if timed_out else Kind.FAILED
                self._send(encode(kind, seq, attempt, error.encode(errors="replace")))
            reported = True
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the item must end with an outcome
            if not reported:
                text = error_text(exc)
                logger.error("item #%d failed in the runtime: %s", seq, text)
                self._send(encode(Kind.FAILED, seq, 1, text.encode(errors="replace")))
        finally:
            if holding:  # after the outcome is queued, so it is sent before the next item runs
                self._reader_done()

    async def _attempt(
        self, seq: int, item: Any, carrier: bytes | None
    ) -> tuple[int, str | None, bool]:
        """Begin and read one item: (attempts made, error or None, whether it timed out)."""
        source = self.plan.source
        try:
            given = await source.begin(item, self.state) if self.begins else item
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # any failure is the item's outcome
            return 1, error_text(exc), False
        if self.marks_starts:  # the parent times sync readers
            self._send(encode(Kind.STARTED, seq))
            self._flush()  # now: the reader is about to block this process
        return await self._read(given, seq, carrier)

    async def _commit(self, source: Source, item: Any, error: str | None) -> str | None:
        """Run the source's commit; return the item's error, or None if it succeeded."""
        try:
            await source.commit(item, self.state, error)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # any failure is the item's outcome
            return error_text(exc)
        return error

    async def _read(
        self, item: Any, seq: int, carrier: bytes | None
    ) -> tuple[int, str | None, bool]:
        """Run the reader on `item`, retrying as planned: (attempts made, final error or None,
        whether it failed by overrunning READER_TIMEOUT). With tracing (`carrier` not None)
        each try runs in its own span.

        Whatever the reader raises, `BaseException`s included, ends as the item's failure: a
        `Permanent` error is not retried, a `RetryAfter` sets the wait before the next try.
        """
        plan = self.plan
        kwargs = keywords(plan.reader_takes, item=item, ctx=self.ctx, settings=plan.settings)
        metrics = plan.metrics
        if metrics is not None:
            metrics.started.inc()
        attempt = 0
        while True:
            attempt += 1
            try:
                tracing = plan.tracing
                with (
                    _UNTRACED
                    if carrier is None or tracing is None
                    else tracing.span(item, seq, attempt, carrier)
                ):
                    result = plan.reader(**kwargs)
                    if inspect.isawaitable(result):
                        if plan.timeout:
                            await _within(result, plan.timeout)
                        else:
                            await result
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # every failure is the item's outcome
                timed_out = isinstance(exc, ReaderTimeout)
                permanent = isinstance(exc, Permanent)
                if attempt <= plan.max_retries and not permanent:
                    if isinstance(exc, RetryAfter):
                        delay = exc.seconds
                    else:
                        delay = backoff(attempt, plan.retry_backoff, plan.retry_backoff_max)
                    logger.warning(
                        "reader failed on %s (attempt %d of %d), retrying in %.2fs: %s",
                        shorten(item),
                        attempt,
                        plan.max_retries + 1,
                        delay,
                        error_text(exc, 500),
                    )
                    if metrics is not None:
                        metrics.retried.inc()
                    await asyncio.sleep(delay)
                    continue
                logger.error(
                    "reader failed on %s after %d attempt(s): %s",
                    shorten(item),
                    attempt,
                    error_text(exc),
                    exc_info=_safe_exc_info(exc),
                )
                return attempt, Failure(error_text(exc), permanent=permanent), timed_out
            return attempt, None, False

    # lifecycle
    def _on_sigterm(self) -> None:
        self._stop()
        self._check_done()

    def _stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        while self.backlog:
            self._send(encode(Kind.NOT_STARTED, self.backlog.popleft()[0]))

    def _check_done(self) -> None:
        idle = not self.running and not self.backlog
        if (self.stopping or self.retiring) and idle and self.done and not self.done.done():
            self.done.set_result(None)

    # outcomes are batched: one write per event-loop turn
    def _send(self, frame: bytes) -> None:
        if not self.outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self.outbox.append(frame)

    def _flush(self) -> None:
        if self.outbox and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.outbox))
        self.outbox.clear()


async def _within(awaitable: Any, seconds: float) -> None:
    """Await `awaitable`, cancelling it after `seconds`: then raise `ReaderTimeout`.

    A `TimeoutError` the reader raises itself stays its own error.
    """
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    finally:
        if not task.done():
            task.cancel()
    if not done:
        await asyncio.wait({task}, timeout=CANCEL_GRACE)  # its cleanup, if it allows one
        raise ReaderTimeout(seconds)
    task.result()


def _safe_exc_info(exc: BaseException) -> BaseException | bool:
    """The exception for a log's traceback, unless formatting it would raise."""
    try:
        str(exc)
    except BaseException:  # a broken __str__ would break the log record
        return False
    return exc


def _process_name() -> str:
    return multiprocessing.current_process().name
