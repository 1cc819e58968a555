"""What runs inside each worker process.

A worker process opens the source's session (if it has one) and the context once, then runs
the reader on the items its parent sends, at most one per reader slot at a time (`slots.py`:
fixed, or adaptive), and reports one outcome per item. Before a reader starts, the process
tells its parent which items start (one frame for those that start together), so that if the
process dies the parent knows which of its items had started.

With a session, the items that start together begin in one `Session.begin` call, and those
whose readers end together are committed in one `Session.commit` call, outside the reader's
slots: the next item starts while the acknowledgement is on the wire. The process never
abandons an item it was sent: on RETIRE it finishes all of them, on STOP (or SIGTERM) it
finishes the running ones and hands the others back as not started. Then it closes the
context and exits.
"""

from __future__ import annotations

import asyncio
import functools
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
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass
from typing import Any, NamedTuple

from .calls import keywords, open_context
from .instrument import Instrument
from .metrics import Metrics
from .retry import Permanent, ReaderTimeout, RetryAfter, backoff
from .settings import env_name
from .slots import TICK, TICK_GROWING, Slots, cpu_demand, next_limit
from .source import Failure, ItemInfo, Session, Source
from .texts import error_text, shorten
from .wire import Frame, FrameReader, Kind, encode, encode_seqs

logger = logging.getLogger(__name__)

CONTEXT_FAILED_EXIT = 3
CANCEL_GRACE = 1.0  # seconds a timed-out async reader gets to finish cancelling
_NO_INFO = ItemInfo()


class _Ended(NamedTuple):
    """An item whose reader ended (or that `begin` refused), on its way to commit and report."""

    seq: int
    item: Any  # as fetched
    attempts: int
    failure: Failure | None
    timed_out: bool
    started: float  # perf_counter when it took its slot (0.0 without metrics)
    label: str  # how logs name it
    raised: BaseException | None = None  # what the reader raised last, for the log


class _Batches:
    """Calls `call` with the entries added while its previous call ran, one call at a time,
    so that one call to the session serves the items that start (or end) together. The task
    of the call in progress is in `tasks` until it is done."""

    def __init__(
        self,
        call: Callable[[list[Any]], Awaitable[None]],
        tasks: set[asyncio.Task[None]],
        task_done: Callable[[asyncio.Task[None]], None],
    ) -> None:
        self._call = call
        self._tasks = tasks
        self._task_done = task_done
        self._waiting: list[Any] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, entry: Any) -> None:
        """Queue `entry` for the next call."""
        self._waiting.append(entry)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain())
            self._tasks.add(self._task)
            self._task.add_done_callback(self._task_done)

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
    is_async: bool
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
    tracing: Instrument | None = None


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
        self.waiting: deque[Frame] = deque()  # sent here, waiting for a slot
        self.launching: list[Frame] = []  # took a slot this turn: launched at its end
        self.tasks: set[asyncio.Task[None]] = set()  # readers, begins and commits running
        self.in_slots = 0  # items holding a reader slot (at most `slots`)
        self.slots = plan.slots.start  # reader slots now
        self.tick: asyncio.TimerHandle | None = None  # the next slot decision (adaptive)
        self.measured = (0.0, 0.0, 0.0)  # (loop time, CPU demand, delay) of the tick set
        self.outbox: list[bytes] = []
        self.readers_done: list[int] = []  # for the next READER_DONE frame
        self.transport: asyncio.Transport | None = None
        self.retiring = False
        self.stopping = False
        self.session: Session | None = None
        self.beginning = _Batches(self._begin_batch, self.tasks, self._task_done)
        self.committing = _Batches(self._commit_batch, self.tasks, self._task_done)
        self.call_reader: Callable[..., Any] = plan.reader  # with ctx and settings, once open
        self.exit_ready: asyncio.Future[None] | None = None
        self.closed: asyncio.Future[None] | None = None

    async def run(self) -> int:
        plan = self.plan
        loop = asyncio.get_running_loop()
        self.exit_ready = loop.create_future()
        self.closed = loop.create_future()
        async with AsyncExitStack() as stack:
            try:
                if plan.tracing is not None:
                    plan.tracing.process_started(plan.name)
                session = plan.source.session()
                if session is not None:
                    self.session = await stack.enter_async_context(session)
                ctx = await open_context(stack, plan.context, plan.settings)
            except Exception as exc:
                logger.exception("context() failed in %s", _process_name())
                text = f"{type(exc).__name__}: {exc}".encode(errors="replace")
                self.sock.sendall(encode(Kind.CONTEXT_FAILED, payload=text))
                return CONTEXT_FAILED_EXIT
            fixed = keywords(plan.reader_takes - {"item"}, ctx=ctx, settings=plan.settings)
            self.call_reader = functools.partial(plan.reader, **fixed)
            loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
            await loop.connect_accepted_socket(lambda: self, self.sock)
            if plan.metrics is not None:
                plan.metrics.slots.set(self.slots)
            self._send(encode(Kind.READY))
            await self.exit_ready
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
                self._receive(frame)
            elif frame.kind == Kind.RETIRE:
                self.retiring = True
            elif frame.kind == Kind.STOP:
                self._stop()
        self._exit_if_idle()

    def eof_received(self) -> bool:
        self._stop()  # the parent went away: finish what runs, nobody to report to
        self._exit_if_idle()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(None)
        self._stop()
        self._exit_if_idle()

    # slots
    def _receive(self, frame: Frame) -> None:
        if self.stopping:
            self._send(encode(Kind.NOT_STARTED, frame.seq))
        elif self.in_slots < self.slots:
            self._take_slot(frame)
        else:
            self.waiting.append(frame)
            self._watch_slots(TICK_GROWING)  # soon: items wait for a slot

    def _take_slot(self, frame: Frame) -> None:
        """Give the item a slot; it is launched with the others of this turn."""
        self.in_slots += 1
        if not self.launching:
            asyncio.get_running_loop().call_soon(self._launch)
        self.launching.append(frame)

    def _launch(self) -> None:
        """Tell the parent which items start (written now, before any of their readers can
        take the process down with it), then start them."""
        batch, self.launching = self.launching, []
        if not batch:  # handed back by a stop in this turn
            return
        self._send(encode_seqs(Kind.STARTED, [frame.seq for frame in batch]))
        self._flush()
        started = time.perf_counter() if self.plan.metrics is not None else 0.0
        if self.session is not None:  # the items that start together begin in one call
            for frame in batch:
                self.beginning.add((frame, started))
            return
        loop = asyncio.get_running_loop()
        for frame in batch:
            item = self._unpickle(frame)
            if item is _UNREADABLE:
                continue
            task = loop.create_task(self._read_item(frame, item, item, started, self._info(item)))
            self.tasks.add(task)
            task.add_done_callback(self._task_done)

    def _info(self, item: Any) -> ItemInfo:
        """What the source knows of `item`, when a span needs it (else asked only if the
        item fails, for its log line)."""
        return _NO_INFO if self.plan.tracing is None else _describe(self.plan.source, item)

    def _label(self, info: ItemInfo, item: Any) -> str:
        """How logs name an item: its id, as its source knows it, or its repr."""
        if info is _NO_INFO:
            info = _describe(self.plan.source, item)
        return info.id if info.id is not None else shorten(item)

    def _free_slot(self) -> None:
        """An item left the reader: its slot goes to the next item waiting."""
        self.in_slots -= 1
        self._fill_slots()

    def _fill_slots(self) -> None:
        while self.waiting and self.in_slots < self.slots and not self.stopping:
            self._take_slot(self.waiting.popleft())

    def _watch_slots(self, after: float = TICK) -> None:
        """Take the next slot decision in `after` seconds, if the slots adapt and none is
        due."""
        if self.plan.slots.adaptive and self.tick is None and not self.stopping:
            loop = asyncio.get_running_loop()
            self.measured = (loop.time(), cpu_demand(), after)
            self.tick = loop.call_at(self.measured[0] + after, self._adapt_slots)

    def _adapt_slots(self) -> None:
        """Decide the slots from the last tick: CPU used, loop lag, items waiting."""
        loop = asyncio.get_running_loop()
        now, cpu = loop.time(), cpu_demand()
        since, used, after = self.measured
        self.tick = None
        waiting = bool(self.waiting) and self.in_slots >= self.slots
        busy = (cpu - used) / max(now - since, 1e-6)
        lag = now - since - after
        slots = next_limit(self.plan.slots, self.slots, waiting=waiting, busy=busy, lag=lag)
        grew = slots > self.slots
        if slots != self.slots:
            self.slots = slots
            self._send(encode(Kind.SLOTS, slots))  # the parent hands out as many
            if self.plan.metrics is not None:
                self.plan.metrics.slots.set(slots)
            self._fill_slots()
        if self.in_slots or self.waiting:
            self._watch_slots(TICK_GROWING if grew else TICK)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self._exit_if_idle()

    # items
    def _unpickle(self, frame: Frame) -> Any:
        """The item a frame carries; `_UNREADABLE` (its failure reported, its slot freed) if it
        cannot be unpickled."""
        try:
            return pickle.loads(frame.payload)
        except BaseException as exc:  # any failure is the item's outcome
            text = f"unpickling failed: {error_text(exc)}"
            logger.error("item #%d failed in %s: %s", frame.seq, _process_name(), text)
            self._send(encode(Kind.FAILED, frame.seq, 1, text.encode(errors="replace")))
            self._free_slot()
            return _UNREADABLE

    async def _begin_batch(self, batch: list[tuple[Frame, float]]) -> None:
        """Begin the items that started together in one call to the session, then read each
        in its own task; an item `begin` refused fails without running."""
        session = self.session
        assert session is not None
        if self.stopping:  # not begun yet: they go back untouched
            for frame, _ in batch:
                self._send(encode(Kind.NOT_STARTED, frame.seq))
                self.in_slots -= 1
            return
        readable = []
        for frame, started in batch:
            item = self._unpickle(frame)
            if item is not _UNREADABLE:
                readable.append((frame, item, started))
        if not readable:
            return
        items = [item for _, item, _ in readable]
        given = await _per_item("begin", session.begin(items), len(items))
        loop = asyncio.get_running_loop()
        for (frame, item, started), what in zip(readable, given, strict=True):
            info = self._info(item)
            if isinstance(what, BaseException):  # it fails; a commit step still sees it
                refusal = Failure(error_text(what), permanent=isinstance(what, Permanent))
                label = self._label(info, item)
                self._after_reader(_Ended(frame.seq, item, 1, refusal, False, started, label))
                self._free_slot()
                continue
            task = loop.create_task(self._read_item(frame, item, what, started, info))
            self.tasks.add(task)
            task.add_done_callback(self._task_done)

    async def _read_item(
        self, frame: Frame, item: Any, given: Any, started: float, info: ItemInfo
    ) -> None:
        """Run the reader on `given` (what `begin` made of `item`), then commit or report."""
        holding = True  # this item holds one of the reader slots
        try:
            attempts, failure, raised = await self._call_reader(item, given, frame, info)
            label = self._label(info, item) if failure is not None else ""
            timed_out = isinstance(raised, ReaderTimeout)
            ended = _Ended(frame.seq, item, attempts, failure, timed_out, started, label, raised)
            if self.session is not None:
                holding = False
                self._free_slot()  # the next item reads while this one commits
            self._after_reader(ended)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the item must end with an outcome
            text = error_text(exc)
            logger.error("item #%d failed in the runtime: %s", frame.seq, text)
            self._send(encode(Kind.FAILED, frame.seq, 1, text.encode(errors="replace")))
        finally:
            if holding:  # after the outcome is queued, so it is sent before the next item runs
                self._free_slot()

    async def _call_reader(
        self, item: Any, given: Any, frame: Frame, info: ItemInfo
    ) -> tuple[int, Failure | None, BaseException | None]:
        """Run the reader on `given` (what `begin` made of `item`), retrying as planned:
        (attempts made, final failure or None, what it raised last or None). With tracing
        each try runs in its own span.

        Whatever the reader raises, `BaseException`s included, ends as the item's failure: a
        `Permanent` error is not retried, a `RetryAfter` sets the wait before the next try.
        """
        plan = self.plan
        call, is_async, timeout = self.call_reader, plan.is_async, plan.timeout
        tracing, metrics = plan.tracing, plan.metrics
        if metrics is not None:
            metrics.started.inc()
        attempt = 0
        while True:
            attempt += 1
            try:
                if tracing is None and not timeout and is_async:  # the common case, kept short
                    await call(item=given)
                else:
                    span = (
                        _nothing()
                        if tracing is None
                        else tracing.span(info, frame.seq, attempt, frame.carrier)
                    )
                    with span:
                        result = call(item=given)
                        if is_async or inspect.isawaitable(result):
                            await (_within(result, timeout, plan.settings) if timeout else result)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # every failure is the item's outcome
                permanent = isinstance(exc, Permanent)
                if attempt <= plan.max_retries and not permanent:
                    delay = (
                        exc.seconds
                        if isinstance(exc, RetryAfter)
                        else backoff(attempt, plan.retry_backoff, plan.retry_backoff_max)
                    )
                    logger.warning(
                        "reader failed on %s (attempt %d of %d), retrying in %.2fs: %s",
                        self._label(info, item),
                        attempt,
                        plan.max_retries + 1,
                        delay,
                        error_text(exc, 500),
                    )
                    if metrics is not None:
                        metrics.retried.inc()
                    await asyncio.sleep(delay)
                    continue
                return attempt, Failure(error_text(exc), permanent=permanent), exc
            return attempt, None, None

    def _after_reader(self, ended: _Ended) -> None:
        """Commit an item whose reader ended (or that `begin` refused), or report it."""
        if self.session is None:
            self._report(ended, ended.failure)
            return
        self._send_reader_done(ended.seq)  # the parent may send one more
        if ended.failure is None:  # committed together with the others that succeed now
            self.committing.add(ended)
            return
        # Alone: the session may wait there (a retry backoff) without holding others.
        task = asyncio.get_running_loop().create_task(self._commit_batch([ended]))
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    async def _commit_batch(self, batch: list[_Ended]) -> None:
        """Run the session's commit on items whose readers ended, then report each."""
        assert self.session is not None
        call = self.session.commit([(ended.item, ended.failure) for ended in batch])
        results = await _per_item("commit", call, len(batch))
        for ended, result in zip(batch, results, strict=True):
            if result is None:
                self._report(ended, ended.failure)
                continue
            permanent = isinstance(result, Permanent) or bool(
                ended.failure is not None and ended.failure.permanent
            )
            failure = Failure(error_text(result), permanent=permanent)
            label = ended.label or self._label(_NO_INFO, ended.item)
            self._report(ended._replace(label=label), failure)

    def _report(self, ended: _Ended, failure: Failure | None) -> None:
        """Count one item's outcome (`failure`, or None: it succeeded), log a failure (one
        line), and queue the outcome for the parent."""
        metrics = self.plan.metrics
        if metrics is not None:  # duration first: whoever sees the outcome sees it
            metrics.duration.observe(time.perf_counter() - ended.started)
            (metrics.succeeded if failure is None else metrics.failed).inc()
            if ended.timed_out:
                metrics.timed_out.inc()
        if failure is None:
            self._send(encode(Kind.SUCCEEDED, ended.seq, ended.attempts))
            return
        # One line per failure; the reader's traceback with it, or at DEBUG for a `Permanent`
        # (the reader's decision, not a bug).
        raised = ended.raised
        shown = None if raised is None or failure.permanent else _safe_exc_info(raised)
        logger.error("item %s failed: %s", ended.label, failure, exc_info=shown)
        if raised is not None and failure.permanent:
            logger.debug("item %s: the reader raised", ended.label, exc_info=_safe_exc_info(raised))
        kind = Kind.TIMED_OUT if ended.timed_out else Kind.FAILED
        if failure.permanent:
            kind = Kind.GAVE_UP
        payload = failure.encode(errors="replace")
        self._send(encode(kind, ended.seq, ended.attempts, payload))

    # lifecycle
    def _on_sigterm(self) -> None:
        self._stop()
        self._exit_if_idle()

    def _stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        if self.tick is not None:
            self.tick.cancel()
            self.tick = None
        for frame in self.launching:  # not launched yet: they never started
            self._send(encode(Kind.NOT_STARTED, frame.seq))
            self.in_slots -= 1
        self.launching.clear()
        while self.waiting:
            self._send(encode(Kind.NOT_STARTED, self.waiting.popleft().seq))

    def _exit_if_idle(self) -> None:
        idle = not self.tasks and not self.waiting and not self.launching
        ready = self.exit_ready
        if (self.stopping or self.retiring) and idle and ready is not None and not ready.done():
            ready.set_result(None)

    # outcomes are batched: one write per event-loop turn
    def _send(self, frame: bytes) -> None:
        if not self.outbox and not self.readers_done:
            asyncio.get_running_loop().call_soon(self._flush)
        self.outbox.append(frame)

    def _send_reader_done(self, seq: int) -> None:
        """Tell the parent the reader is done with item `seq` (one frame for all in a turn)."""
        if not self.outbox and not self.readers_done:
            asyncio.get_running_loop().call_soon(self._flush)
        self.readers_done.append(seq)

    def _flush(self) -> None:
        if self.plan.metrics is not None:  # once a turn, not once an item
            self.plan.metrics.in_flight.set(self.in_slots)
        if self.readers_done:  # first: it must reach the parent before the item's outcome
            self.outbox.insert(0, encode_seqs(Kind.READER_DONE, self.readers_done))
            self.readers_done = []
        if self.outbox and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.outbox))
        self.outbox.clear()


_UNREADABLE = object()  # what `_unpickle` returns for an item it could not read


def _describe(source: Source, item: Any) -> ItemInfo:
    """What the source knows of `item`; nothing if asking fails."""
    try:
        return source.describe(item)
    except Exception:
        return _NO_INFO


class _nothing:
    """A context manager that does nothing (a reader call outside any span)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


async def _per_item(name: str, call: Awaitable[Sequence[Any]], count: int) -> list[Any]:
    """The results of a session's `begin` or `commit` call for `count` items, one per item:
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


async def _within(awaitable: Any, seconds: float, settings: Any) -> None:
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
        raise ReaderTimeout(seconds, env_name(settings, "READER_TIMEOUT"))
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
