"""``BoundedQueue``: the core queue with its worker pool, its lifecycle (``start``, ``stop``,
``join``, ``async with``) and shutdown; and ``WorkQueue``, its two high-level helpers."""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar

from .config import (
    _IDLE,
    _PROCESSING,
    _STOPPED,
    _STOPPING,
    QueueConfig,
    QueueOrdering,
    _check_int,
    _check_timeout,
)
from .core import T, _discard, _expire, _QueueCore, _repr, _wake_all, _wakeup_next
from .errors import QueueStateError

_Q = TypeVar("_Q", bound="BoundedQueue[Any]")

WorkerFunc = Callable[[T], Awaitable[object]]
"""An async function run by the workers on each item."""
ErrorHandler = Callable[[Exception, T], Awaitable[object]]
"""An async function called as ``handler(exception, item)`` when a worker function fails."""


class BoundedQueue(_QueueCore[T]):
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
