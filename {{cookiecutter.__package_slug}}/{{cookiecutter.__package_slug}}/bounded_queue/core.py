"""The queue without its workers: the store (FIFO, LIFO or stable priority), ``put`` with
backpressure, ``get`` and ``task_done``, the counters and the state checks, and the helpers
that wake waiters. :class:`BoundedQueue` (``workers.py``) builds on it."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
import logging
import math
import reprlib
from collections.abc import Callable, Sized
from types import TracebackType
from typing import Any, Generic, Literal, NoReturn, TypeVar

from .config import (
    _IDLE,
    _PROCESSING,
    _STOPPED,
    _STOPPING,
    QueueMetrics,
    QueueOrdering,
    QueueStatus,
    _check_int,
    _check_ordering,
    _check_timeout,
)
from .errors import QueueEmptyError, QueueFullError, QueueStateError

T = TypeVar("T")

_LOG = logging.getLogger(__package__)  # the queue's logger, named as before the split
_repr = reprlib.Repr()
_repr.maxstring = 80
_repr.maxother = 80


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


class _QueueCore(Generic[T]):
    """A bounded store with put, get and their waiters; :class:`BoundedQueue` adds the worker
    pool, the lifecycle and shutdown, and documents the constructor's arguments."""

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
