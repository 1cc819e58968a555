"""Bounded asyncio queue with backpressure, a worker pool, graceful shutdown and metrics.

Concurrency inside one process and one event loop: producers ``await put()`` and are
slowed down while the queue is full (backpressure); a pool of worker tasks takes items
as they arrive (no polling) and runs an async function on each one.

How it works:

* one base class, :class:`BoundedQueue`, whose ``_init`` hook creates the store and binds
  the ``_put`` / ``_get`` hooks for the chosen ordering (FIFO, LIFO, stable priority);
* blocked producers and consumers wait on futures kept in deques and are woken by the
  operation that unblocks them, and a woken waiter that cannot use its turn (cancelled,
  or its item refused) passes it to the next; the fast paths create no future and no
  timer;
* ``stop()`` closes the queue: new items are refused, blocked producers get
  :class:`QueueStateError`, and whatever is queued and in flight is finished (or, after the
  timeout, cancelled and handed back); a worker that dies on a ``BaseException`` stops the
  pool, and the error reaches ``join()``, ``put()`` and ``stop()`` instead of vanishing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import heapq
import inspect
import itertools
import logging
import math
import reprlib
from collections.abc import Awaitable, Callable, Iterable, Sized
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, Generic, Literal, NoReturn, TypeVar

from pydantic import BaseModel, ConfigDict, field_validator

__all__ = [
    "BoundedQueue",
    "ErrorHandler",
    "QueueConfig",
    "QueueEmptyError",
    "QueueError",
    "QueueFullError",
    "QueueMetrics",
    "QueueOrdering",
    "QueueStateError",
    "QueueStatus",
    "WorkQueue",
    "WorkerFunc",
]

T = TypeVar("T")
_Q = TypeVar("_Q", bound="BoundedQueue[Any]")

WorkerFunc = Callable[[T], Awaitable[object]]
"""An async function run by the workers on each item."""
ErrorHandler = Callable[[Exception, T], Awaitable[object]]
"""An async function called as ``handler(exception, item)`` when a worker function fails."""

_LOG = logging.getLogger(__name__)
_repr = reprlib.Repr()
_repr.maxstring = 80
_repr.maxother = 80


# --------------------------------------------------------------------------- errors


class QueueError(Exception):
    """Base class of every error raised by this module's queues."""


class QueueFullError(QueueError):
    """The queue is full: ``put_nowait`` was refused or ``put`` timed out."""


class QueueEmptyError(QueueError):
    """``get_nowait`` found the queue empty."""


class QueueStateError(QueueError):
    """The operation is not allowed in the queue's current state (named in the message)."""


# --------------------------------------------------------------------------- enums, config


class QueueStatus(str, enum.Enum):
    """Lifecycle state of a queue: IDLE -> PROCESSING -> STOPPING -> STOPPED."""

    IDLE = "idle"
    PROCESSING = "processing"
    STOPPING = "stopping"
    STOPPED = "stopped"


class QueueOrdering(str, enum.Enum):
    """The order in which queued items are handed out."""

    FIFO = "fifo"
    LIFO = "lifo"
    PRIORITY = "priority"


_IDLE = QueueStatus.IDLE
_PROCESSING = QueueStatus.PROCESSING
_STOPPING = QueueStatus.STOPPING
_STOPPED = QueueStatus.STOPPED


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def _check_timeout(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds >= 0 or None, got {value!r}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be a number of seconds >= 0 or None, got {value!r}")
    return float(value)


def _check_ordering(value: object) -> QueueOrdering:
    try:
        return QueueOrdering(value)
    except ValueError:
        allowed = ", ".join(repr(o.value) for o in QueueOrdering)
        raise ValueError(f"ordering must be one of {allowed}, got {value!r}") from None


class QueueConfig(BaseModel):
    """Validated settings for a queue; build one with ``BoundedQueue.from_config(config)``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    queue_capacity: int = 100
    """Maximum number of queued (not yet started) items; ``put`` blocks beyond it."""
    concurrency_limit: int | None = None
    """Maximum number of worker tasks, hence of items in flight; None = no limit."""
    ordering: QueueOrdering = QueueOrdering.FIFO
    """FIFO, LIFO or priority (stable among equal priorities)."""
    put_timeout: float | None = None
    """Default ``put`` timeout in seconds; None = wait as long as it takes."""

    @field_validator("queue_capacity")
    @classmethod
    def _capacity(cls, value: int) -> int:
        return _check_int("queue_capacity", value, 1)

    @field_validator("concurrency_limit")
    @classmethod
    def _limit(cls, value: int | None) -> int | None:
        return None if value is None else _check_int("concurrency_limit", value, 1)

    @field_validator("put_timeout")
    @classmethod
    def _timeout(cls, value: float | None) -> float | None:
        return _check_timeout("put_timeout", value)


@dataclass(frozen=True)
class QueueMetrics:
    """A snapshot of a queue's counters, taken by :attr:`BoundedQueue.metrics`."""

    enqueued: int
    """Items accepted by put / put_nowait / offer."""
    processed: int
    """Items whose worker function returned (or that a consumer marked task_done)."""
    failed: int
    """Items whose worker function raised."""
    cancelled: int
    """Items whose worker was cancelled mid-item (stop timeout, or a cancelled worker)."""
    handler_errors: int
    """Times the error handler itself raised."""
    backpressure_events: int
    """Times a put found the queue full (it then waited, timed out, or was refused)."""
    in_flight: int
    """Items taken from the queue and not finished yet."""
    depth: int
    """Items queued now."""
    max_depth: int
    """Highest depth seen."""

    def as_dict(self) -> dict[str, int]:
        """The snapshot as a plain dict (for logging or a metrics exporter)."""
        return asdict(self)


def _expire(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(True)


def _discard(waiters: collections.deque[asyncio.Future[bool]], fut: asyncio.Future[bool]) -> None:
    with contextlib.suppress(ValueError):
        waiters.remove(fut)


def _wakeup_next(waiters: collections.deque[asyncio.Future[bool]]) -> None:
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(False)
            return


def _wake_all(waiters: collections.deque[asyncio.Future[bool]]) -> None:
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(False)


def _unpush(
    heap: list[tuple[Any, int, Any]], entry: tuple[Any, int, Any], exc: TypeError
) -> NoReturn:
    """Undo a heappush that failed on an unorderable priority, then explain."""
    for i in range(len(heap) - 1, -1, -1):  # heappush appends before comparing
        if heap[i] is entry:
            del heap[i]
            heapq.heapify(heap)
            break
    raise TypeError(
        f"priority {_repr.repr(entry[0])} cannot be compared with queued priorities: {exc}"
    ) from exc


# --------------------------------------------------------------------------- the queue


class BoundedQueue(Generic[T]):
    """An asyncio queue of at most ``maxsize`` items, with a worker pool and a lifecycle.

    ``put`` blocks while the queue is full; ``start_workers`` runs a pool of tasks that
    process items as they arrive; ``stop`` drains and shuts down. Use it as
    ``async with BoundedQueue(...) as q:`` (start on entry, drain on normal exit).

    Args:
        maxsize: maximum number of queued items (>= 1).
        timeout: default ``put`` timeout in seconds; None (default) waits as long as it
            takes.
        logger: where worker failures are logged; defaults to this module's logger.
        ordering: ``"fifo"`` (default), ``"lifo"`` or ``"priority"``.
        priority_key: with priority ordering, maps an item to its priority (lowest
            first); by default the item itself is compared. Equal priorities keep
            insertion order. ``put`` calls it once per item, before it waits for room.
        concurrency_limit: maximum number of worker tasks (so of items in flight).

    ``stop()`` without a timeout logs a warning once it has waited ``stop_warning_after``
    seconds (10 by default; set it on the class or the queue), naming what it waits for.
    """

    stop_warning_after: float = 10.0

    def __init__(
        self,
        maxsize: int = 100,
        timeout: float | None = None,
        logger: logging.Logger | None = None,
        *,
        ordering: QueueOrdering | str = QueueOrdering.FIFO,
        priority_key: Callable[[T], Any] | None = None,
        concurrency_limit: int | None = None,
    ) -> None:
        self._maxsize = _check_int("maxsize", maxsize, 1)
        self._timeout = _check_timeout("timeout", timeout)
        self._logger = _LOG if logger is None else logger
        self._ordering = _check_ordering(ordering)
        if priority_key is not None and self._ordering is not QueueOrdering.PRIORITY:
            raise ValueError(
                f"priority_key needs ordering='priority', got ordering={self._ordering.value!r}"
            )
        self._priority_key = priority_key
        self._concurrency_limit = (
            None
            if concurrency_limit is None
            else _check_int("concurrency_limit", concurrency_limit, 1)
        )
        self._status = _IDLE
        self._getters: collections.deque[asyncio.Future[bool]] = collections.deque()
        self._putters: collections.deque[asyncio.Future[bool]] = collections.deque()
        self._joiners: collections.deque[asyncio.Future[bool]] = collections.deque()
        self._stop_waiters: collections.deque[asyncio.Future[bool]] = collections.deque()
        self._unfinished = 0  # queued + in flight
        self._enqueued = 0
        self._processed = 0
        self._failed = 0
        self._cancelled = 0
        self._handler_errors = 0
        self._backpressure_events = 0
        self._max_depth = 0
        self._workers: set[asyncio.Task[None]] = set()
        self._workers_started = 0
        self._cancel_requested = False  # workers being cancelled by us, not by accident
        self._hard_stopped = False
        self._stop_running = False
        self._fatal: BaseException | None = None
        self._fatal_tb: TracebackType | None = None
        self._queue: Sized
        self._put: Callable[[T], None]
        self._get: Callable[[], T]
        # Set by the priority store when a priority_key is given: put() computes the key
        # before it waits, and then adds the item with _put_prioritized(priority, item).
        self._priority_of: Callable[[T], Any] | None = None
        self._put_prioritized: Callable[[Any, T], None]
        self._init(self._maxsize)

    # ------------------------------------------------------------------ storage hooks

    def _init(self, maxsize: int) -> None:
        """Create the store (``self._queue``) and bind the ``_put`` / ``_get`` hooks.

        Subclasses may override this to install other storage: ``self._queue`` must be
        sized (``len`` is the depth), ``self._put(item)`` adds and ``self._get()`` removes
        the next item; neither may block. If either raises, the queue is left as the hook
        left it and the error reaches the caller of ``put`` / ``get``.
        """
        if self._ordering is QueueOrdering.PRIORITY:
            self._init_heap()
            return
        store: collections.deque[T] = collections.deque()
        self._queue = store
        self._put = store.append
        self._get = store.popleft if self._ordering is QueueOrdering.FIFO else store.pop

    def _init_heap(self) -> None:
        """Priority store: a heap of ``(priority, sequence, item)``; the sequence keeps
        equal priorities in insertion order and means items are never compared."""
        heap: list[tuple[Any, int, T]] = []
        seq = itertools.count()
        key = self._priority_key
        push = heapq.heappush
        pop = heapq.heappop
        logger = self._logger

        def put_prioritized(priority: Any, item: T) -> None:
            entry = (priority, next(seq), item)
            try:
                push(heap, entry)
            except TypeError as exc:
                _unpush(heap, entry, exc)

        def put(item: T) -> None:
            put_prioritized(item if key is None else key(item), item)

        def get() -> T:
            top = heap[0]
            try:
                pop(heap)
            except TypeError as exc:
                # A push compares a priority only with its ancestors, so two queued
                # priorities may first meet here. heappop has already taken ``top`` out
                # (its sift swaps entries, so none is lost): hand it out.
                if any(entry is top for entry in heap):
                    raise
                logger.warning(
                    "priorities cannot be compared (%s); %s is handed out,"
                    " the items still queued may leave out of priority order",
                    exc,
                    _repr.repr(top[2]),
                )
            return top[2]

        self._queue = heap
        self._put = put
        self._get = get
        if key is not None:
            self._priority_of = key
            self._put_prioritized = put_prioritized

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_config(
        cls: type[_Q],
        config: QueueConfig,
        *,
        logger: logging.Logger | None = None,
        priority_key: Callable[[Any], Any] | None = None,
    ) -> _Q:
        """Build a queue from a validated :class:`QueueConfig`."""
        return cls(
            maxsize=config.queue_capacity,
            timeout=config.put_timeout,
            logger=logger,
            ordering=config.ordering,
            priority_key=priority_key,
            concurrency_limit=config.concurrency_limit,
        )

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self._status.value} {self._ordering.value}"
            f" depth={len(self._queue)}/{self._maxsize} workers={len(self._workers)}>"
        )

    # ------------------------------------------------------------------ introspection

    @property
    def status(self) -> QueueStatus:
        """The lifecycle state."""
        return self._status

    @property
    def maxsize(self) -> int:
        """Maximum number of queued items."""
        return self._maxsize

    @property
    def ordering(self) -> QueueOrdering:
        """FIFO, LIFO or PRIORITY."""
        return self._ordering

    @property
    def concurrency_limit(self) -> int | None:
        """Maximum number of worker tasks, or None."""
        return self._concurrency_limit

    @property
    def num_workers(self) -> int:
        """Number of worker tasks currently alive."""
        return len(self._workers)

    def qsize(self) -> int:
        """Number of queued items (not counting items in flight)."""
        return len(self._queue)

    def empty(self) -> bool:
        """True if no item is queued."""
        return not self._queue

    def full(self) -> bool:
        """True if ``maxsize`` items are queued (a ``put`` would block)."""
        return len(self._queue) >= self._maxsize

    @property
    def metrics(self) -> QueueMetrics:
        """A snapshot of the counters (cheap: the counters are plain ints)."""
        depth = len(self._queue)
        return QueueMetrics(
            enqueued=self._enqueued,
            processed=self._processed,
            failed=self._failed,
            cancelled=self._cancelled,
            handler_errors=self._handler_errors,
            backpressure_events=self._backpressure_events,
            in_flight=self._unfinished - depth,
            depth=depth,
            max_depth=self._max_depth,
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the queue for ``put`` (IDLE -> PROCESSING); a no-op if already open."""
        if self._status is _PROCESSING:
            return
        if self._status is not _IDLE:
            self._refuse("start", "a stopped queue cannot be restarted; create a new one")
        self._status = _PROCESSING

    async def __aenter__(self: _Q) -> _Q:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """On normal exit drain like ``stop()``; on an exception cancel at once."""
        if exc_type is None:
            await self.stop()
            return
        leftover = await self._shutdown(0.0, raise_fatal=False)
        dropped = len(leftover) + len(self._queue)
        if dropped:
            self._logger.warning(
                "queue closed by %s: %d queued items were never started", exc_type.__name__, dropped
            )

    async def stop(self, timeout: float | None = None) -> list[T]:
        """Close the queue and drain it; return the items that were never started.

        New puts are refused (blocked producers get :class:`QueueStateError`); workers
        finish what is queued and in flight. If that takes longer than ``timeout``
        seconds, the in-flight items are cancelled and the queued ones are removed and
        returned. Without a timeout it waits as long as it takes, and logs a warning after
        ``stop_warning_after`` seconds (e.g. no worker runs and nobody calls ``get()``).
        Calling it again returns what is still queued (normally ``[]``); a concurrent call
        waits for the first. Calling it from one of the queue's own workers raises
        :class:`QueueStateError` (it would wait for itself). If a worker died on a
        ``BaseException``, that exception is raised here after cleanup.
        """
        return await self._shutdown(_check_timeout("timeout", timeout), raise_fatal=True)

    async def join(self) -> None:
        """Wait until every queued and in-flight item is finished (or the queue stopped).

        Never hangs after ``stop()``: once the queue is STOPPED it returns at once.
        Raises the error of a worker that died on a ``BaseException``.
        """
        loop: asyncio.AbstractEventLoop | None = None
        while True:
            self._raise_fatal("join")
            if not self._unfinished or self._status is _STOPPED:
                return
            if loop is None:
                if asyncio.current_task() in self._workers:
                    self._refuse_from_worker("join")
                loop = asyncio.get_running_loop()
            fut: asyncio.Future[bool] = loop.create_future()
            self._joiners.append(fut)
            try:
                await fut
            except BaseException:
                fut.cancel()
                _discard(self._joiners, fut)
                raise

    # ------------------------------------------------------------------ producers

    async def put(self, item: T, timeout: float | None = None) -> Literal[True]:
        """Add ``item``, waiting while the queue is full (backpressure).

        Args:
            item: the item.
            timeout: seconds to wait for room; None uses the queue's default (which is
                to wait as long as it takes); ``math.inf`` waits forever; 0 never waits.

        Returns:
            True, always: a put that cannot add the item raises.

        Raises:
            QueueFullError: the timeout ran out while the queue stayed full.
            QueueStateError: the queue is not PROCESSING (not started, or stopping).
            TypeError: with priority ordering, the item's priority cannot be compared
                with the queued ones; nothing was added.
            Exception: whatever ``priority_key(item)`` raises; it is called once, before
                any waiting, and nothing was added.
        """
        if timeout is not None:
            timeout = _check_timeout("timeout", timeout)
        if self._status is not _PROCESSING:
            self._refuse("put")
        priority_of = self._priority_of
        priority = None if priority_of is None else priority_of(item)
        if len(self._queue) < self._maxsize:
            if priority_of is None:
                self._put(item)
            else:
                self._put_prioritized(priority, item)
            self._admitted()
            return True
        await self._wait_for_room(self._timeout if timeout is None else timeout)
        try:
            if priority_of is None:
                self._put(item)
            else:
                self._put_prioritized(priority, item)
        except BaseException:
            # We were woken for a slot we do not use: pass it on, or the next producer
            # waits with room in the queue.
            if self._putters and len(self._queue) < self._maxsize:
                _wakeup_next(self._putters)
            raise
        self._admitted()
        return True

    def _admit(self, item: T) -> None:
        """Append an item there is room for, count it, and wake a waiting getter."""
        self._put(item)
        self._admitted()

    def _admitted(self) -> None:
        """Count an item just added and wake a waiting getter."""
        self._unfinished += 1
        self._enqueued += 1
        depth = len(self._queue)
        if depth > self._max_depth:
            self._max_depth = depth
        if self._getters:
            _wakeup_next(self._getters)

    def put_nowait(self, item: T) -> None:
        """Add ``item`` now or raise :class:`QueueFullError` (never waits)."""
        if not self.offer(item):
            raise QueueFullError(f"queue is full: {self._maxsize} items queued (maxsize)")

    def offer(self, item: T) -> bool:
        """Add ``item`` if there is room now; return False (and wait not) if full."""
        if self._status is not _PROCESSING:
            self._refuse("put")
        if len(self._queue) >= self._maxsize:
            self._backpressure_events += 1
            return False
        self._admit(item)
        return True

    async def _wait_for_room(self, timeout: float | None) -> None:
        self._backpressure_events += 1
        if timeout == 0:
            raise QueueFullError(f"queue is full: {self._maxsize} items queued (maxsize)")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None or math.isinf(timeout) else loop.time() + timeout
        while True:
            if self._status is not _PROCESSING:
                self._refuse("put")
            if len(self._queue) < self._maxsize:
                return
            fut: asyncio.Future[bool] = loop.create_future()
            self._putters.append(fut)
            timer = None if deadline is None else loop.call_at(deadline, _expire, fut)
            try:
                expired = await fut
            except BaseException:
                woken = fut.done() and not fut.cancelled() and fut.result() is False
                fut.cancel()
                _discard(self._putters, fut)
                if woken and len(self._queue) < self._maxsize:
                    _wakeup_next(self._putters)  # pass on the wake-up we cannot use
                raise
            finally:
                if timer is not None:
                    timer.cancel()
            if expired and len(self._queue) >= self._maxsize and self._status is _PROCESSING:
                _discard(self._putters, fut)
                raise QueueFullError(
                    f"queue is full: put timed out after {timeout}s"
                    f" with {self._maxsize} items queued (maxsize)"
                )

    # ------------------------------------------------------------------ consumers

    async def get(self) -> T:
        """Remove and return the next item, waiting while the queue is empty.

        For hand-written consumers (workers do this internally); call ``task_done()``
        when the item is finished. Raises :class:`QueueStateError` once the queue is
        stopping or stopped and empty.
        """
        if not self._queue and not await self._wait_for_item():
            self._refuse("get", "the queue is closed and empty")
        try:
            item = self._get()
        except BaseException:
            self._pass_on_wakeups()  # the store failed: leave the item to the next getter
            raise
        if self._putters:
            _wakeup_next(self._putters)
        return item

    def get_nowait(self) -> T:
        """Remove and return the next item, or raise :class:`QueueEmptyError` if none."""
        if not self._queue:
            if self._status is _PROCESSING or self._status is _IDLE:
                raise QueueEmptyError("queue is empty")
            self._refuse("get", "the queue is closed and empty")
        try:
            item = self._get()
        except BaseException:
            self._pass_on_wakeups()
            raise
        if self._putters:
            _wakeup_next(self._putters)
        return item

    def _pass_on_wakeups(self) -> None:
        """After a failed ``_get``: wake whoever can use what the queue now holds."""
        if self._getters and self._queue:
            _wakeup_next(self._getters)
        if self._putters and len(self._queue) < self._maxsize:
            _wakeup_next(self._putters)

    def task_done(self) -> None:
        """Mark an item taken with ``get()`` as finished (counted as processed)."""
        if self._unfinished <= len(self._queue):
            raise ValueError("task_done() called more times than items were taken with get()")
        self._processed += 1
        self._unfinished -= 1
        if not self._unfinished and self._joiners:
            _wake_all(self._joiners)

    async def _wait_for_item(self) -> bool:
        """Wait until an item is queued; False if the queue is closed and empty."""
        loop = asyncio.get_running_loop()
        while not self._queue:
            if self._status is _STOPPING or self._status is _STOPPED:
                return False
            fut: asyncio.Future[bool] = loop.create_future()
            self._getters.append(fut)
            try:
                await fut
            except BaseException:
                woken = fut.done() and not fut.cancelled()
                fut.cancel()
                _discard(self._getters, fut)
                if woken and self._queue:
                    _wakeup_next(self._getters)  # pass on the wake-up we cannot use
                raise
        return True

    # ------------------------------------------------------------------ workers

    async def start_workers(
        self,
        worker_func: WorkerFunc[T],
        num_workers: int | None = None,
        error_handler: ErrorHandler[T] | None = None,
    ) -> None:
        """Start ``num_workers`` tasks that run ``await worker_func(item)`` on each item.

        ``num_workers`` defaults to ``concurrency_limit`` (or 1). The total number of
        workers may not exceed ``concurrency_limit``. A failing item goes to
        ``await error_handler(exc, item)``, or is logged; either way it is counted and
        the worker goes on. A ``BaseException`` (e.g. cancellation) stops the pool.
        """
        if self._status is not _PROCESSING:
            self._refuse("start_workers", "call start() or use 'async with' first")
        if not _async_callable(worker_func):
            raise TypeError(f"worker_func must be an async callable, got {worker_func!r}")
        if error_handler is not None and not _async_callable(error_handler):
            raise TypeError(f"error_handler must be an async callable, got {error_handler!r}")
        limit = self._concurrency_limit
        if num_workers is None:
            count = 1 if limit is None else max(limit - len(self._workers), 0)
        else:
            count = _check_int("num_workers", num_workers, 1)
        total = len(self._workers) + count
        if limit is not None and (total > limit or count == 0):
            raise ValueError(
                f"{len(self._workers)} workers run and concurrency_limit={limit}: "
                + (f"num_workers={count} would make {total}" if count else "no room for one more")
            )
        loop = asyncio.get_running_loop()
        for _ in range(count):
            self._workers_started += 1
            name = f"queue-worker-{self._workers_started}"
            task = loop.create_task(self._worker(worker_func, error_handler, name), name=name)
            self._workers.add(task)
            task.add_done_callback(self._worker_done)

    async def _worker(
        self, func: WorkerFunc[T], handler: ErrorHandler[T] | None, name: str
    ) -> None:
        queue = self._queue
        get = self._get
        putters = self._putters
        joiners = self._joiners
        busy = 0  # 0: idle, 1: running func(item), 2: running handler(exc, item)
        item: Any = None
        try:
            while True:
                if not queue and not await self._wait_for_item():
                    return  # closed and drained
                item = get()
                busy = 1
                if putters:
                    _wakeup_next(putters)
                try:
                    await func(item)
                except Exception as exc:
                    busy = 2
                    self._failed += 1
                    await self._report(exc, item, handler, name)
                else:
                    self._processed += 1
                busy = 0
                self._unfinished -= 1
                if not self._unfinished and joiners:
                    _wake_all(joiners)
        except BaseException as exc:
            if busy:
                self._unfinished -= 1
                if busy == 1:
                    if isinstance(exc, asyncio.CancelledError):
                        self._cancelled += 1
                    else:
                        self._failed += 1
                if not self._unfinished:
                    _wake_all(joiners)
            if not (self._cancel_requested and isinstance(exc, asyncio.CancelledError)):
                self._die(exc, name, item if busy else None)
            raise

    async def _report(
        self, exc: Exception, item: T, handler: ErrorHandler[T] | None, name: str
    ) -> None:
        if handler is None:
            self._logger.error("%s: item %s failed: %r", name, _repr.repr(item), exc, exc_info=exc)
            return
        try:
            await handler(exc, item)
        except Exception as handler_exc:
            self._handler_errors += 1
            self._logger.error(
                "%s: error handler failed on item %s (original error %r): %r",
                name,
                _repr.repr(item),
                exc,
                handler_exc,
                exc_info=handler_exc,
            )

    def _die(self, exc: BaseException, name: str, item: object) -> None:
        """A worker is ending on a BaseException it was not asked for: stop the pool."""
        if self._fatal is not None:
            return
        self._fatal = exc
        self._fatal_tb = exc.__traceback__
        where = "between items" if item is None else f"on item {_repr.repr(item)}"
        self._logger.error("%s died %s with %r; stopping the queue", name, where, exc)
        if self._status is not _STOPPED:
            self._status = _STOPPING
        self._cancel_requested = True
        current = asyncio.current_task()
        for task in self._workers:
            if task is not current:
                task.cancel()
        _wake_all(self._putters)
        _wake_all(self._getters)
        _wake_all(self._joiners)

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        self._workers.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: it was reported through _die
        if (
            (self._fatal is not None or self._hard_stopped)
            and not self._workers
            and not self._stop_running
            and self._status is _STOPPING
        ):
            self._status = _STOPPED
            _wake_all(self._joiners)
            _wake_all(self._stop_waiters)

    # ------------------------------------------------------------------ shutdown

    async def _shutdown(self, timeout: float | None, *, raise_fatal: bool) -> list[T]:
        if self._status is _IDLE:
            self._status = _STOPPED
        if self._status is _STOPPED and not self._workers:
            if raise_fatal:
                self._raise_fatal("stop")
            return [] if self._fatal is not None else self._take_all()
        if asyncio.current_task() in self._workers:
            self._refuse_from_worker("stop")
        if self._status is _PROCESSING:
            self._status = _STOPPING
        _wake_all(self._putters)  # they see the state and raise QueueStateError
        _wake_all(self._getters)  # idle workers exit once the queue is empty
        loop = asyncio.get_running_loop()
        while self._stop_running:  # another stop() is at work: wait for it
            fut: asyncio.Future[bool] = loop.create_future()
            self._stop_waiters.append(fut)
            try:
                await fut
            except BaseException:
                fut.cancel()
                _discard(self._stop_waiters, fut)
                raise
            if self._status is _STOPPED:
                if raise_fatal:
                    self._raise_fatal("stop")
                return []
        self._stop_running = True
        leftover: list[T] = []
        try:
            if self._fatal is None and not self._hard_stopped and timeout != 0:
                await self._drain(loop, timeout)
            if self._fatal is None:
                leftover = self._take_all()
            await self._cancel_workers()
        except BaseException:
            # stop() itself was cancelled: cancel the workers, leave the rest queued
            self._hard_stopped = True
            self._cancel_requested = True
            for task in self._workers:
                task.cancel()
            raise
        finally:
            self._stop_running = False
            _wake_all(self._stop_waiters)
        self._status = _STOPPED
        _wake_all(self._joiners)
        if raise_fatal:
            self._raise_fatal("stop")
        return leftover

    async def _drain(self, loop: asyncio.AbstractEventLoop, timeout: float | None) -> None:
        deadline = None if timeout is None or math.isinf(timeout) else loop.time() + timeout
        warning = None
        if deadline is None and self._unfinished:
            warning = loop.call_later(self.stop_warning_after, self._warn_stop_waiting)
        try:
            while self._unfinished and self._fatal is None:
                fut: asyncio.Future[bool] = loop.create_future()
                self._joiners.append(fut)
                timer = None if deadline is None else loop.call_at(deadline, _expire, fut)
                try:
                    expired = await fut
                except BaseException:
                    fut.cancel()
                    _discard(self._joiners, fut)
                    raise
                finally:
                    if timer is not None:
                        timer.cancel()
                if expired:
                    _discard(self._joiners, fut)
                    return
        finally:
            if warning is not None:
                warning.cancel()

    def _warn_stop_waiting(self) -> None:
        queued = len(self._queue)
        waiting = (
            f"stop() has waited {self.stop_warning_after:g}s for {queued} queued and"
            f" {self._unfinished - queued} in-flight items"
        )
        if self._workers:
            self._logger.warning("%s; pass stop(timeout=...) to bound the wait", waiting)
        else:
            self._logger.warning(
                "%s and no worker runs: call start_workers() before stop(), take the items"
                " with get() and task_done(), or pass stop(timeout=...)",
                waiting,
            )

    def _take_all(self) -> list[T]:
        items: list[T] = []
        while self._queue:
            items.append(self._get())
        self._unfinished -= len(items)
        if not self._unfinished:
            _wake_all(self._joiners)
        return items

    async def _cancel_workers(self) -> None:
        if not self._workers:
            return
        self._cancel_requested = True
        tasks = list(self._workers)
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)

    # ------------------------------------------------------------------ errors

    def _raise_fatal(self, op: str) -> None:
        exc = self._fatal
        if exc is None:
            return
        if isinstance(exc, asyncio.CancelledError):
            raise QueueStateError(
                f"cannot {op}: queue is {self._status.value}:"
                " a worker was cancelled outside stop(), so the queue stopped"
            ) from exc
        raise exc.with_traceback(self._fatal_tb)  # the worker's traceback, not all re-raises

    def _refuse_from_worker(self, op: str) -> NoReturn:
        raise QueueStateError(
            f"cannot {op}: queue is {self._status.value} and {op}() was called from one of"
            f" its own workers, which would wait for itself;"
            f" use asyncio.create_task(queue.{op}()) instead"
        )

    def _refuse(self, op: str, hint: str = "") -> NoReturn:
        self._raise_fatal(op)
        if not hint:
            hint = (
                "call start() or use 'async with' first"
                if self._status is _IDLE
                else "stop() was called"
            )
        raise QueueStateError(f"cannot {op}: queue is {self._status.value}; {hint}")


class WorkQueue(BoundedQueue[T]):
    """A :class:`BoundedQueue` with two high-level helpers.

    ``process(worker_func)`` starts ``concurrency_limit`` workers; ``batch_process(items,
    worker_func)`` runs a whole list through the queue and stops it. The constructor
    takes ``concurrency_limit`` third: ``(maxsize, timeout, concurrency_limit, logger)``.
    """

    def __init__(
        self,
        maxsize: int = 100,
        timeout: float | None = None,
        concurrency_limit: int | None = None,
        logger: logging.Logger | None = None,
        *,
        ordering: QueueOrdering | str = QueueOrdering.FIFO,
        priority_key: Callable[[T], Any] | None = None,
    ) -> None:
        super().__init__(
            maxsize,
            timeout,
            logger,
            ordering=ordering,
            priority_key=priority_key,
            concurrency_limit=concurrency_limit,
        )

    async def process(
        self,
        worker_func: WorkerFunc[T],
        num_workers: int | None = None,
        error_handler: ErrorHandler[T] | None = None,
    ) -> None:
        """Start the workers (``num_workers`` defaults to ``concurrency_limit``, or 1)."""
        await self.start_workers(worker_func, num_workers, error_handler)

    async def batch_process(
        self,
        items: Iterable[T],
        worker_func: WorkerFunc[T],
        num_workers: int | None = None,
        error_handler: ErrorHandler[T] | None = None,
    ) -> None:
        """Start the queue if needed, run every item through the workers, then stop it.

        Returns when all items are finished; the queue is then STOPPED. Failed items are
        handled as in ``start_workers``. If this call fails or is cancelled, the queue is
        stopped at once (in-flight items cancelled) and the error propagates.
        """
        if self._status is _IDLE:
            await self.start()
        if self._status is not _PROCESSING:
            self._refuse("batch_process")
        if self._workers:
            raise QueueStateError(
                f"cannot batch_process: queue is {self._status.value} with"
                f" {len(self._workers)} workers already running; use put() and join()"
            )
        await self.start_workers(worker_func, num_workers, error_handler)
        try:
            for item in items:
                await self.put(item)
            await self.join()
        except BaseException:
            await self._shutdown(0.0, raise_fatal=False)
            raise
        await self.stop()


def _async_callable(func: object) -> bool:
    """False for what is not callable, or is a plain (not async) function or method."""
    if not callable(func):
        return False
    return not inspect.isroutine(func) or inspect.iscoroutinefunction(func)
