"""What runs inside each worker process.

A worker process opens the source's session and the context once, then runs the reader on
the items its parent sends, at most one per reader slot at a time (`slots.py`: fixed, or
adaptive), and reports one outcome per item. Before a reader starts, the process tells its
parent which items start (one frame for those that start together), so that if the process
dies the parent knows which of its items had started.
A source's `begin` and `commit` (a durable source recording a start, acknowledging an item) run
once for the items that start, or succeed, together, and `commit` outside the reader's slots:
the next item starts while the acknowledgement is on the wire. It never
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
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, nullcontext, suppress
from dataclasses import dataclass
from typing import Any, NamedTuple

from .calls import keywords, open_context
from .instrument import Instrument
from .metrics import Metrics
from .retry import Permanent, ReaderTimeout, RetryAfter, backoff
from .slots import TICK, TICK_GROWING, Slots, next_limit
from .source import Failure, Source
from .texts import error_text, shorten
from .wire import Frame, FrameReader, Kind, encode, encode_seqs

logger = logging.getLogger(__name__)

CONTEXT_FAILED_EXIT = 3
_UNTRACED = nullcontext()  # the span of a reader call when nothing traces it
CANCEL_GRACE = 1.0  # seconds a timed-out async reader gets to finish cancelling


class _Done(NamedTuple):
    """An item whose reader ended, on its way to the source's commit."""

    seq: int
    item: Any
    attempt: int
    error: str | None
    timed_out: bool
    started: float


class _Batches:
    """Calls `call` with the entries added while its previous call ran, one call at a time,
    so that one call to the source serves the items that start (or end) together. The task
    of the call in progress is in `running` until it is done."""

    def __init__(
        self,
        call: Callable[[list[Any]], Awaitable[None]],
        running: set[asyncio.Task[None]],
        finished: Callable[[asyncio.Task[None]], None],
    ) -> None:
        self._call = call
        self._running = running
        self._finished = finished
        self._waiting: list[Any] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, entry: Any) -> None:
        """Queue `entry` for the next call."""
        self._waiting.append(entry)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain())
            self._running.add(self._task)
            self._task.add_done_callback(self._finished)

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                await self._call(batch)
        finally:
            self._task = None  # in the step that found nothing waiting: `add` makes a new one


@dataclass(frozen=True)
class ReaderPlan:
    """Everything a worker process needs to run the reader; inherited through fork."""

    reader: Callable[..., Any]
    reader_takes: frozenset[str]
    context: Callable[..., Any] | None
    settings: Any
    slots: Slots  # how many items run at once: see slots.py
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
        self.beginning = _Batches(self._begin, self.running, self._finished)
        self.committing = _Batches(self._commit, self.running, self._finished)
        self.reading = 0  # items holding a reader slot (at most `limit`)
        self.limit = plan.slots.start  # reader slots now
        self.starting: list[tuple[int, bytes]] = []  # to launch at the end of this turn
        self.tick: asyncio.TimerHandle | None = None  # the next slot decision (adaptive)
        self.measured = (0.0, 0.0, 0.0)  # (loop time, CPU time, delay) of the tick set
        self.outbox: list[bytes] = []
        self.read: list[int] = []  # items whose reader is done, for the next READ frame
        self.transport: asyncio.Transport | None = None
        self.retiring = False
        self.stopping = False
        self.ctx: Any = None
        self.state: Any = None  # the source's session
        self.is_async = inspect.iscoroutinefunction(plan.reader)
        self.begins = plan.source.begins
        self.commits = plan.source.commits
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
            if self.plan.metrics is not None:
                self.plan.metrics.slots.set(self.limit)
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
        elif self.reading < self.limit:
            self._start(frame.seq, frame.payload)
        else:
            self.backlog.append((frame.seq, frame.payload))
            self._watch(TICK_GROWING)  # soon: items wait for a slot

    def _start(self, seq: int, payload: bytes) -> None:
        """Take a slot for the item; it is launched with the others of this turn."""
        self.reading += 1
        if not self.starting:
            asyncio.get_running_loop().call_soon(self._launch)
        self.starting.append((seq, payload))

    def _launch(self) -> None:
        """Tell the parent which items start (written now, before any of their readers can
        take the process down with it), then start them."""
        batch, self.starting = self.starting, []
        if not batch:  # handed back by a stop in this turn
            return
        self._send(encode_seqs(Kind.STARTED, [seq for seq, _ in batch]))
        self._flush()
        loop = asyncio.get_running_loop()
        for seq, payload in batch:
            if self.begins:  # the items that start together begin in one call
                self.beginning.add((seq, payload))
                continue
            task = loop.create_task(self._run_item(seq, payload))
            self.running.add(task)
            task.add_done_callback(self._finished)

    def _reader_done(self) -> None:
        """An item left the reader: its slot goes to the next item waiting."""
        self.reading -= 1
        self._fill()

    def _fill(self) -> None:
        """Give the free slots to the items waiting for one."""
        while self.backlog and self.reading < self.limit and not self.stopping:
            self._start(*self.backlog.popleft())

    # adaptive slots (slots.py)
    def _watch(self, after: float = TICK) -> None:
        """Take the next slot decision in `after` seconds, if the slots adapt and none is
        due."""
        if self.plan.slots.adaptive and self.tick is None and not self.stopping:
            loop = asyncio.get_running_loop()
            self.measured = (loop.time(), time.process_time(), after)
            self.tick = loop.call_at(self.measured[0] + after, self._adapt)

    def _adapt(self) -> None:
        """Decide the slots from the last tick: CPU used, loop lag, items waiting."""
        loop = asyncio.get_running_loop()
        now, cpu = loop.time(), time.process_time()
        since, used, after = self.measured
        self.tick = None
        waiting = bool(self.backlog) and self.reading >= self.limit
        busy = (cpu - used) / max(now - since, 1e-6)
        lag = now - since - after
        limit = next_limit(self.plan.slots, self.limit, waiting=waiting, busy=busy, lag=lag)
        grew = limit > self.limit
        if limit != self.limit:
            self.limit = limit
            self._send(encode(Kind.SLOTS, limit))  # the parent hands out as many
            if self.plan.metrics is not None:
                self.plan.metrics.slots.set(limit)
            self._fill()
        if self.reading or self.backlog:
            self._watch(TICK_GROWING if grew else TICK)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.running.discard(task)
        self._check_done()

    def _decode(self, seq: int, payload: bytes) -> tuple[Any, bytes | None] | None:
        """The item and its trace carrier; None (its failure reported) if it cannot be
        unpickled."""
        carrier: bytes | None = None
        if self.plan.tracing is not None:  # the parent put the item's carrier first
            carrier, _, payload = payload.partition(b"\n")
        try:
            return pickle.loads(payload), carrier
        except BaseException as exc:  # any failure is the item's outcome
            logger.error("item #%d could not be unpickled in %s", seq, _process_name())
            text = f"unpickling failed: {error_text(exc)}"
            self._send(encode(Kind.FAILED, seq, 1, text.encode(errors="replace")))
            return None

    async def _run_item(self, seq: int, payload: bytes) -> None:
        """Decode one item and run it (a source without `begin`)."""
        started = time.perf_counter()
        decoded = self._decode(seq, payload)
        if decoded is None:
            self._reader_done()
            return
        item, carrier = decoded
        await self._run(seq, item, item, carrier, started)

    async def _begin(self, batch: list[tuple[int, bytes]]) -> None:
        """Begin the items that started together in one call to the source, then run each
        in its own task; an item `begin` refused fails without running."""
        started = time.perf_counter()
        if self.stopping:  # not begun yet: they go back untouched
            for seq, _ in batch:
                self._send(encode(Kind.NOT_STARTED, seq))
                self.reading -= 1
            return
        decoded: list[tuple[int, Any, bytes | None]] = []
        for seq, payload in batch:
            one = self._decode(seq, payload)
            if one is None:
                self._reader_done()
            else:
                decoded.append((seq, *one))
        if not decoded:
            return
        items = [item for _, item, _ in decoded]
        given = await _per_item("begin", self.plan.source.begin(items, self.state), len(items))
        loop = asyncio.get_running_loop()
        for (seq, item, carrier), what in zip(decoded, given, strict=True):
            if isinstance(what, BaseException):  # it fails; a commit step still sees it
                refusal = Failure(error_text(what), permanent=isinstance(what, Permanent))
                self._ended(_Done(seq, item, 1, refusal, False, started))
                self._reader_done()
                continue
            task = loop.create_task(self._run(seq, item, what, carrier, started))
            self.running.add(task)
            task.add_done_callback(self._finished)

    async def _run(
        self, seq: int, item: Any, given: Any, carrier: bytes | None, started: float
    ) -> None:
        """Run the reader on `given` (what `begin` made of `item`), then commit or report."""
        holding = True  # this item holds one of the reader slots
        reported = False
        try:
            attempt, error, timed_out = await self._read(given, seq, carrier)
            if self.commits:
                holding = False
                self._reader_done()  # the next item reads while this one commits
            self._ended(_Done(seq, item, attempt, error, timed_out, started))
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

    def _ended(self, done: _Done) -> None:
        """Commit an item whose reader ended (or that `begin` refused), or report it."""
        if not self.commits:
            self._report(done, done.error)
            return
        self._send_read(done.seq)  # the parent may send one more
        if done.error is None:  # committed together with the others that succeed now
            self.committing.add(done)
            return
        # Alone: the source may wait there (a retry backoff) without holding others.
        task = asyncio.get_running_loop().create_task(self._commit([done]))
        self.running.add(task)
        task.add_done_callback(self._finished)

    async def _commit(self, batch: list[_Done]) -> None:
        """Run the source's commit on items whose readers ended, then report each."""
        call = self.plan.source.commit([(d.item, d.error) for d in batch], self.state)
        results = await _per_item("commit", call, len(batch))
        for done, result in zip(batch, results, strict=True):
            self._report(done, done.error if result is None else error_text(result))

    def _report(self, done: _Done, error: str | None) -> None:
        """Count one item's outcome (`error`, or None: it succeeded) and queue it for the
        parent."""
        metrics = self.plan.metrics
        if metrics is not None:  # duration first: whoever sees the outcome sees it
            metrics.duration.observe(time.perf_counter() - done.started)
            (metrics.succeeded if error is None else metrics.failed).inc()
            if done.timed_out:
                metrics.timed_out.inc()
        if error is None:
            self._send(encode(Kind.SUCCEEDED, done.seq, done.attempt))
        else:
            kind = Kind.TIMED_OUT if done.timed_out else Kind.FAILED
            if getattr(error, "permanent", False):
                kind = Kind.GAVE_UP
            self._send(encode(kind, done.seq, done.attempt, error.encode(errors="replace")))

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
        if self.tick is not None:
            self.tick.cancel()
            self.tick = None
        for seq, _ in self.starting:  # not launched yet: they never started
            self._send(encode(Kind.NOT_STARTED, seq))
            self.reading -= 1
        self.starting.clear()
        while self.backlog:
            self._send(encode(Kind.NOT_STARTED, self.backlog.popleft()[0]))

    def _check_done(self) -> None:
        idle = not self.running and not self.backlog and not self.starting
        if (self.stopping or self.retiring) and idle and self.done and not self.done.done():
            self.done.set_result(None)

    # outcomes are batched: one write per event-loop turn
    def _send(self, frame: bytes) -> None:
        if not self.outbox and not self.read:
            asyncio.get_running_loop().call_soon(self._flush)
        self.outbox.append(frame)

    def _send_read(self, seq: int) -> None:
        """Tell the parent the reader is done with item `seq` (one frame for all in a turn)."""
        if not self.outbox and not self.read:
            asyncio.get_running_loop().call_soon(self._flush)
        self.read.append(seq)

    def _flush(self) -> None:
        if self.plan.metrics is not None:  # once a turn, not once an item
            self.plan.metrics.in_flight.set(self.reading)
        if self.read:  # first: an item's READ must reach the parent before its outcome
            self.outbox.insert(0, encode_seqs(Kind.READ, self.read))
            self.read = []
        if self.outbox and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.outbox))
        self.outbox.clear()


async def _per_item(name: str, call: Awaitable[Sequence[Any]], count: int) -> list[Any]:
    """The results of a source's `begin` or `commit` call for `count` items, one per item:
    if the call raises, or returns another number of results, that error for each."""
    try:
        results = list(await call)
        if len(results) != count:
            raise RuntimeError(f"{name}() returned {len(results)} results for {count} items")
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # any failure is the items' outcome
        return [exc] * count
    return results


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
