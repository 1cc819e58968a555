"""Behaviour of BoundedQueue / WorkQueue / QueueConfig."""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import ValidationError

from {{ cookiecutter.__package_slug }}.bounded_queue import (
    BoundedQueue,
    QueueConfig,
    QueueEmptyError,
    QueueError,
    QueueFullError,
    QueueMetrics,
    QueueOrdering,
    QueueStateError,
    QueueStatus,
    WorkQueue,
)

WAIT = 5.0  # upper bound for every wait in these tests


class Fatal(BaseException):
    """A BaseException that asyncio treats like any other (unlike KeyboardInterrupt)."""


class Gate:
    """A worker function that records items and blocks until released."""

    def __init__(self, block: bool = True) -> None:
        self.started: list[Any] = []
        self.done: list[Any] = []
        self.release = asyncio.Event()
        if not block:
            self.release.set()
        self._changed = asyncio.Condition()

    async def __call__(self, item: Any) -> None:
        self.started.append(item)
        async with self._changed:
            self._changed.notify_all()
        await self.release.wait()
        self.done.append(item)

    async def wait_started(self, n: int) -> None:
        async def reached() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.started) >= n)

        await asyncio.wait_for(reached(), WAIT)


def state(queue: BoundedQueue[Any]) -> QueueStatus:
    """The status, read through a call so the type checker does not pin it."""
    return queue.status


async def settle(rounds: int = 5) -> None:
    """Let already-runnable tasks take a few steps (no wall-clock waiting)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


# --------------------------------------------------------------------------- construction


async def test_defaults_construct_and_run() -> None:
    for queue in (BoundedQueue[int](), WorkQueue[int]()):
        assert state(queue) is QueueStatus.IDLE
        assert queue.maxsize == 100
        assert queue.ordering is QueueOrdering.FIFO
        assert queue.concurrency_limit is None
        gate = Gate(block=False)
        async with queue:
            await queue.start_workers(gate)
            assert queue.num_workers == 1
            for i in range(5):
                assert await queue.put(i) is True
        assert state(queue) is QueueStatus.STOPPED
        assert gate.done == [0, 1, 2, 3, 4]
    config = QueueConfig()
    assert config.queue_capacity == 100
    assert config.concurrency_limit is None
    assert config.ordering is QueueOrdering.FIFO
    assert config.put_timeout is None


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"maxsize": 0}, ValueError, ["maxsize", ">= 1", "0"]),
        ({"maxsize": -3}, ValueError, ["maxsize", "-3"]),
        ({"maxsize": "10"}, TypeError, ["maxsize", "'10'"]),
        ({"maxsize": True}, TypeError, ["maxsize", "True"]),
        ({"timeout": -1}, ValueError, ["timeout", ">= 0", "-1"]),
        ({"timeout": math.nan}, ValueError, ["timeout", "nan"]),
        ({"timeout": "1"}, TypeError, ["timeout", "'1'"]),
        ({"ordering": "random"}, ValueError, ["ordering", "'fifo'", "'random'"]),
        ({"concurrency_limit": 0}, ValueError, ["concurrency_limit", ">= 1", "0"]),
        ({"priority_key": abs}, ValueError, ["priority_key", "priority", "'fifo'"]),
    ],
)
def test_bad_constructor_arguments(
    kwargs: dict[str, Any], error: type[Exception], words: list[str]
) -> None:
    with pytest.raises(error) as info:
        BoundedQueue[Any](**kwargs)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"queue_capacity": 0}, ["queue_capacity", ">= 1", "0"]),
        ({"capacity_refresh_time": 1.0}, ["capacity_refresh_time", "xtra"]),
        ({"concurrency_limit": 0}, ["concurrency_limit", ">= 1"]),
        ({"put_timeout": -0.5}, ["put_timeout", ">= 0", "-0.5"]),
        ({"ordering": "random"}, ["ordering"]),
        ({"queue_size": 5}, ["queue_size", "xtra"]),
    ],
)
def test_bad_config(kwargs: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ValidationError) as info:
        QueueConfig(**kwargs)
    for word in words:
        assert word in str(info.value)


def test_from_config_maps_every_field() -> None:
    config = QueueConfig(queue_capacity=7, concurrency_limit=3, ordering="lifo", put_timeout=2.5)
    for cls in (BoundedQueue, WorkQueue):
        queue: BoundedQueue[Any] = cls.from_config(config)
        assert type(queue) is cls
        assert queue.maxsize == 7
        assert queue.concurrency_limit == 3
        assert queue.ordering is QueueOrdering.LIFO
        assert queue._timeout == 2.5
    assert QueueConfig(queue_capacity="12").queue_capacity == 12


def test_work_queue_takes_concurrency_limit_third() -> None:
    queue = WorkQueue[int](10, 0.5, 3)
    assert (queue.maxsize, queue._timeout, queue.concurrency_limit) == (10, 0.5, 3)


# --------------------------------------------------------------------------- orderings


async def drain_nowait(queue: BoundedQueue[Any]) -> list[Any]:
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
        queue.task_done()
    return out


async def test_fifo_and_lifo_order() -> None:
    fifo = BoundedQueue[int](10)
    lifo = BoundedQueue[int](10, ordering="lifo")
    for queue in (fifo, lifo):
        await queue.start()
        for i in range(5):
            await queue.put(i)
    assert await drain_nowait(fifo) == [0, 1, 2, 3, 4]
    assert await drain_nowait(lifo) == [4, 3, 2, 1, 0]


@dataclass(order=True)
class Job:
    priority: int
    name: str = field(compare=False)


async def test_priority_is_stable_among_equal_priorities() -> None:
    jobs = [Job(3, "backup"), Job(1, "alert"), Job(2, "log"), Job(1, "payment"), Job(1, "page")]
    queue = BoundedQueue[Job](10, ordering=QueueOrdering.PRIORITY)
    await queue.start()
    for job in jobs:
        await queue.put(job)
    assert [j.name for j in await drain_nowait(queue)] == [
        "alert",
        "payment",
        "page",
        "log",
        "backup",
    ]


async def test_priority_key_and_workers_follow_priority() -> None:
    gate = Gate()
    queue = BoundedQueue[str](10, ordering="priority", priority_key=len)
    async with queue:
        await queue.start_workers(gate, 1)
        await queue.put("first")  # taken at once by the idle worker
        await gate.wait_started(1)
        for word in ["ccc", "a", "bb", "dd", "e"]:
            await queue.put(word)
        gate.release.set()
    assert gate.done == ["first", "a", "e", "bb", "dd", "ccc"]


async def test_priority_unorderable_key_is_refused_cleanly() -> None:
    queue = BoundedQueue[Any](10, ordering="priority")
    await queue.start()
    await queue.put(2)
    await queue.put(1)
    with pytest.raises(TypeError, match="cannot be compared"):
        await queue.put("x")
    assert queue.qsize() == 2
    assert queue.metrics.enqueued == 2
    await queue.put(0)
    assert await drain_nowait(queue) == [0, 1, 2]


# --------------------------------------------------------------------------- backpressure


async def test_put_blocks_while_full_and_resumes_in_order() -> None:
    queue = BoundedQueue[int](2)
    await queue.start()
    await queue.put(1)
    await queue.put(2)
    blocked = [asyncio.create_task(queue.put(i)) for i in (3, 4)]
    await settle()
    assert not any(t.done() for t in blocked)
    assert queue.metrics.backpressure_events == 2
    assert queue.full()
    assert queue.get_nowait() == 1
    queue.task_done()
    await asyncio.wait_for(blocked[0], WAIT)
    assert not blocked[1].done()
    assert queue.get_nowait() == 2
    queue.task_done()
    await asyncio.wait_for(blocked[1], WAIT)
    assert await drain_nowait(queue) == [3, 4]
    assert queue.metrics.max_depth == 2


async def test_put_timeout_raises_queue_full() -> None:
    queue = BoundedQueue[int](1)
    await queue.start()
    await queue.put(1)
    began = time.monotonic()
    with pytest.raises(QueueFullError, match=r"timed out after 0\.05s"):
        await queue.put(2, timeout=0.05)
    assert time.monotonic() - began >= 0.04
    with pytest.raises(QueueFullError):
        await queue.put(2, timeout=0)
    assert queue.qsize() == 1
    assert queue.metrics.enqueued == 1
    assert queue.metrics.backpressure_events == 2
    assert not queue._putters  # the timed-out waiter was removed


async def test_default_timeout_comes_from_the_constructor() -> None:
    queue = BoundedQueue[int](1, timeout=0.02)
    await queue.start()
    await queue.put(1)
    with pytest.raises(QueueFullError):
        await queue.put(2)


async def test_put_with_timeout_succeeds_when_room_appears() -> None:
    queue = BoundedQueue[int](1)
    await queue.start()
    await queue.put(1)
    waiting = asyncio.create_task(queue.put(2, timeout=WAIT))
    await settle()
    assert queue.get_nowait() == 1
    queue.task_done()
    assert await asyncio.wait_for(waiting, WAIT) is True
    assert queue.get_nowait() == 2


async def test_put_nowait_and_offer_never_wait() -> None:
    queue = BoundedQueue[int](2)
    await queue.start()
    queue.put_nowait(1)
    assert queue.offer(2) is True
    assert queue.offer(3) is False
    with pytest.raises(QueueFullError, match="full"):
        queue.put_nowait(3)
    metrics = queue.metrics
    assert (metrics.enqueued, metrics.backpressure_events, metrics.depth) == (2, 2, 2)


async def test_cancelled_putter_passes_its_wakeup_on() -> None:
    queue = BoundedQueue[int](1)
    await queue.start()
    await queue.put(0)
    first = asyncio.create_task(queue.put(1))
    second = asyncio.create_task(queue.put(2))
    await settle()
    assert queue.get_nowait() == 0  # wakes `first` ...
    queue.task_done()
    first.cancel()  # ... which is cancelled before it can use the slot
    await asyncio.wait_for(second, WAIT)
    assert first.cancelled()
    assert await drain_nowait(queue) == [2]


SHORT = 1.0  # bound for a wait that must end at once when the queue works


def refuse_bad(item: str) -> int:
    """A priority key that fails on some items."""
    if item.startswith("bad"):
        raise LookupError(f"no priority for {item}")
    return len(item)


async def test_a_failing_priority_key_raises_before_waiting() -> None:
    queue = BoundedQueue[str](1, ordering="priority", priority_key=refuse_bad)
    await queue.start()
    await queue.put("a")
    with pytest.raises(LookupError, match="no priority for bad"):
        await asyncio.wait_for(queue.put("bad"), SHORT)  # full, but it does not wait
    assert not queue._putters
    assert queue.metrics.enqueued == 1


async def test_a_failing_priority_key_never_strands_the_next_producer() -> None:
    calls: list[str] = []

    def key(item: str) -> int:
        calls.append(item)
        return refuse_bad(item)

    queue = BoundedQueue[str](1, ordering="priority", priority_key=key)
    await queue.start()
    await queue.put("a")
    bad = asyncio.create_task(queue.put("bad"))
    good = asyncio.create_task(queue.put("bb"))
    await settle()
    assert queue.get_nowait() == "a"  # one free slot: it must reach `good`
    queue.task_done()
    with pytest.raises(LookupError):
        await asyncio.wait_for(bad, SHORT)
    await asyncio.wait_for(good, SHORT)
    assert calls == ["a", "bad", "bb"]  # the key ran once per item
    assert await drain_nowait(queue) == ["bb"]


async def test_woken_putter_with_an_unorderable_priority_passes_the_wakeup_on() -> None:
    queue = BoundedQueue[Any](2, ordering="priority")
    await queue.start()
    await queue.put(1)
    await queue.put(2)
    unorderable = asyncio.create_task(queue.put("x"))
    second = asyncio.create_task(queue.put(3))
    await settle()
    assert queue.get_nowait() == 1  # wakes `unorderable`, whose push then fails ...
    queue.task_done()
    with pytest.raises(TypeError, match="cannot be compared"):
        await asyncio.wait_for(unorderable, SHORT)
    await asyncio.wait_for(second, SHORT)  # ... and the free slot goes to `second`
    assert await drain_nowait(queue) == [2, 3]
    assert queue.metrics.enqueued == 3


async def test_woken_putter_whose_store_fails_passes_the_wakeup_on() -> None:
    queue = Flaky(1)
    await queue.start()
    await queue.put(0)
    first = asyncio.create_task(queue.put(-1))  # the store refuses negative items
    second = asyncio.create_task(queue.put(2))
    await settle()
    assert queue.get_nowait() == 0
    queue.task_done()
    with pytest.raises(ValueError, match="refused"):
        await asyncio.wait_for(first, SHORT)
    await asyncio.wait_for(second, SHORT)
    assert await drain_nowait(queue) == [2]


async def test_cancelled_getter_passes_its_wakeup_on() -> None:
    queue = BoundedQueue[int](2)
    await queue.start()
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await settle()
    await queue.put(1)  # wakes `first` ...
    first.cancel()  # ... which is cancelled before it can take the item
    assert await asyncio.wait_for(second, SHORT) == 1
    assert first.cancelled()
    assert not queue._getters


async def test_woken_getter_whose_store_fails_passes_the_wakeup_on() -> None:
    queue = Flaky(2)
    await queue.start()
    queue.fail_next_get = True
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await settle()
    await queue.put(1)  # wakes `first`, whose get fails and leaves the item queued
    with pytest.raises(RuntimeError, match="store hiccup"):
        await asyncio.wait_for(first, SHORT)
    assert await asyncio.wait_for(second, SHORT) == 1


async def test_a_timed_out_putter_leaves_the_next_wakeup_to_others() -> None:
    queue = BoundedQueue[int](1)
    await queue.start()
    await queue.put(0)
    impatient = asyncio.create_task(queue.put(1, timeout=0.01))
    patient = asyncio.create_task(queue.put(2))
    with pytest.raises(QueueFullError):
        await asyncio.wait_for(impatient, SHORT)
    assert queue.get_nowait() == 0
    queue.task_done()
    await asyncio.wait_for(patient, SHORT)
    assert await drain_nowait(queue) == [2]


async def test_priorities_found_unorderable_on_get_lose_no_item(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # (1, None) and (1, "a") were never compared on the way in; taking (0, 0) out
    # compares them, which raises TypeError inside heappop.
    queue = BoundedQueue[tuple[int, Any]](3, ordering="priority")
    await queue.start()
    for item in [(0, 0), (1, None), (1, "a")]:
        await queue.put(item)
    out = [queue.get_nowait() for _ in range(3)]
    assert sorted(out, key=repr) == [(0, 0), (1, "a"), (1, None)]
    assert out[0] == (0, 0)
    assert queue.qsize() == 0
    assert queue.metrics.in_flight == 3
    assert any("cannot be compared" in r.getMessage() for r in caplog.records)


async def test_workers_survive_priorities_found_unorderable_on_get() -> None:
    gate = Gate(block=False)
    async with BoundedQueue[tuple[int, Any]](3, ordering="priority") as queue:
        for item in [(0, 0), (1, None), (1, "a")]:
            await queue.put(item)
        await queue.start_workers(gate, 1)
        await asyncio.wait_for(queue.join(), SHORT)
    assert sorted(gate.done, key=repr) == [(0, 0), (1, "a"), (1, None)]
    assert queue.metrics.processed == 3


async def test_bad_put_timeout() -> None:
    queue = BoundedQueue[int]()
    await queue.start()
    with pytest.raises(ValueError, match="timeout must be"):
        await queue.put(1, timeout=-1)
    with pytest.raises(ValueError, match="timeout must be"):
        await queue.stop(timeout=-1)


# --------------------------------------------------------------------------- workers


async def test_workers_use_no_timers(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    timers: list[object] = []
    real_call_at = loop.call_at

    def counting_call_at(when: float, callback: Any, *args: Any, **kw: Any) -> Any:
        timers.append(callback)
        return real_call_at(when, callback, *args, **kw)

    monkeypatch.setattr(loop, "call_at", counting_call_at)
    done: list[int] = []

    async def work(item: int) -> None:
        done.append(item)
        await asyncio.sleep(0)

    async with BoundedQueue[int](8) as queue:
        await queue.start_workers(work, 4)
        for i in range(500):
            await queue.put(i)
        await queue.join()
        await settle()
        # idle workers are parked on futures: nothing is runnable, nothing is timed
        assert len(queue._getters) == 4
        assert not loop._ready  # type: ignore[attr-defined]
    assert sorted(done) == list(range(500))
    assert timers == []


async def test_concurrency_limit_bounds_in_flight() -> None:
    gate = Gate()
    queue = WorkQueue[int](100, concurrency_limit=3)
    async with queue:
        await queue.process(gate)
        assert queue.num_workers == 3
        with pytest.raises(ValueError, match="concurrency_limit=3"):
            await queue.start_workers(gate, 1)
        for i in range(10):
            await queue.put(i)
        await gate.wait_started(3)
        await settle()
        assert len(gate.started) == 3
        assert queue.metrics.in_flight == 3
        assert queue.metrics.depth == 7
        gate.release.set()
    assert sorted(gate.done) == list(range(10))
    queue2 = BoundedQueue[int](concurrency_limit=4)
    await queue2.start()
    with pytest.raises(ValueError, match="num_workers=5"):
        await queue2.start_workers(gate, 5)
    await queue2.start_workers(gate)
    with pytest.raises(ValueError, match="4 workers run and concurrency_limit=4: no room"):
        await queue2.start_workers(gate)


async def test_start_workers_refuses_a_sync_function() -> None:
    def work(item: int) -> None:
        return None

    async def handler(exc: Exception, item: int) -> None:
        return None

    async with BoundedQueue[int]() as queue:
        with pytest.raises(TypeError, match="worker_func must be an async callable"):
            await queue.start_workers(work)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="error_handler must be an async callable"):
            await queue.start_workers(handler, 1, work)  # type: ignore[arg-type]


async def test_error_handler_gets_exception_and_item() -> None:
    seen: list[tuple[str, int]] = []

    async def work(item: int) -> None:
        if item % 3 == 0:
            raise ValueError(f"bad {item}")

    async def handler(exc: Exception, item: int) -> None:
        seen.append((str(exc), item))

    async with WorkQueue[int](4, concurrency_limit=2) as queue:
        await queue.process(work, error_handler=handler)
        for i in range(10):
            await queue.put(i)
        await queue.join()
        metrics = queue.metrics
    assert sorted(seen) == [("bad 0", 0), ("bad 3", 3), ("bad 6", 6), ("bad 9", 9)]
    assert (metrics.processed, metrics.failed, metrics.handler_errors) == (6, 4, 0)


async def test_errors_without_handler_are_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def work(item: int) -> None:
        if item == 2:
            raise RuntimeError("boom")

    caplog.set_level(logging.ERROR)
    async with BoundedQueue[int]() as queue:
        await queue.start_workers(work, 2)
        for i in range(5):
            await queue.put(i)
    assert queue.metrics.failed == 1
    assert queue.metrics.processed == 4
    [record] = [r for r in caplog.records if "boom" in r.getMessage()]
    assert "item 2 failed" in record.getMessage()
    assert record.exc_info is not None


async def test_error_in_the_error_handler_itself(caplog: pytest.LogCaptureFixture) -> None:
    async def work(item: int) -> None:
        if item < 3:
            raise ValueError(f"bad {item}")

    async def broken_handler(exc: Exception, item: int) -> None:
        raise KeyError(f"handler broke on {item}")

    caplog.set_level(logging.ERROR)
    async with BoundedQueue[int](2) as queue:
        await queue.start_workers(work, 1, broken_handler)
        for i in range(6):
            await queue.put(i)
    metrics = queue.metrics
    assert (metrics.processed, metrics.failed, metrics.handler_errors) == (3, 3, 3)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("error handler failed" in m for m in messages) == 3
    assert any("bad 1" in m and "handler broke on 1" in m for m in messages)


async def test_base_exception_stops_the_pool_and_reaches_the_caller() -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def work(item: int) -> None:
        if item == 0:
            started.set()
            await release.wait()  # in flight when the pool dies: cancelled
        if item == 1:
            raise Fatal("worker blew up")

    queue = BoundedQueue[int](10)
    await queue.start()
    await queue.start_workers(work, 2)
    workers = [t for t in asyncio.all_tasks() if t.get_name().startswith("queue-worker-")]
    assert len(workers) == 2
    await queue.put(0)
    await asyncio.wait_for(started.wait(), WAIT)
    for i in range(1, 6):
        await queue.put(i)
    with pytest.raises(Fatal, match="worker blew up"):
        await asyncio.wait_for(queue.join(), WAIT)
    await asyncio.wait(workers, timeout=WAIT)  # the dying worker cancelled the other one
    assert state(queue) is QueueStatus.STOPPED
    assert queue.num_workers == 0
    with pytest.raises(Fatal):
        await queue.put(99)
    with pytest.raises(Fatal):
        await queue.stop()
    metrics = queue.metrics
    assert (metrics.failed, metrics.cancelled) == (1, 1)
    # items never started are still there, and can be taken back
    assert [queue.get_nowait() for _ in range(queue.qsize())] == [2, 3, 4, 5]
    with pytest.raises(Fatal):  # closed and empty: the pool's error, again
        queue.get_nowait()


async def test_base_exception_in_error_handler_stops_the_pool() -> None:
    async def work(item: int) -> None:
        raise ValueError(item)

    async def handler(exc: Exception, item: int) -> None:
        raise Fatal("handler gave up")

    queue = BoundedQueue[int]()

    async def use() -> None:
        async with queue:
            await queue.start_workers(work, 1, handler)
            await queue.put(1)
            await asyncio.wait_for(queue.join(), WAIT)

    with pytest.raises(Fatal, match="handler gave up"):
        await use()
    assert queue.metrics.failed == 1
    assert queue.metrics.cancelled == 0


async def test_worker_cancelled_mid_item_is_not_silent() -> None:
    gate = Gate()
    queue = BoundedQueue[int](10)
    await queue.start()
    await queue.start_workers(gate, 2)
    for i in range(4):
        await queue.put(i)
    await gate.wait_started(2)
    [victim] = [t for t in asyncio.all_tasks() if t.get_name() == "queue-worker-1"]
    victim.cancel()
    with pytest.raises(QueueStateError, match="cancelled") as info:
        await asyncio.wait_for(queue.join(), WAIT)
    assert isinstance(info.value.__cause__, asyncio.CancelledError)
    with pytest.raises(QueueStateError, match="cancelled"):
        await asyncio.wait_for(queue.stop(), WAIT)
    assert state(queue) is QueueStatus.STOPPED
    assert queue.num_workers == 0
    assert victim.cancelled()
    metrics = queue.metrics
    assert metrics.cancelled == 2  # the victim's item and the other worker's item
    assert metrics.in_flight == 0
    assert gate.done == []
    assert [queue.get_nowait() for _ in range(queue.qsize())] == [2, 3]


async def test_worker_function_raising_cancelled_error_stops_the_pool() -> None:
    async def work(item: int) -> None:
        raise asyncio.CancelledError

    queue = BoundedQueue[int]()
    await queue.start()
    await queue.start_workers(work, 1)
    await queue.put(1)
    with pytest.raises(QueueStateError, match="cancelled outside stop"):
        await asyncio.wait_for(queue.join(), WAIT)
    assert queue.metrics.cancelled == 1


# --------------------------------------------------------------------------- lifecycle


async def test_operations_in_the_wrong_state() -> None:
    queue = BoundedQueue[int]()
    with pytest.raises(QueueStateError, match="cannot put: queue is idle"):
        await queue.put(1)
    with pytest.raises(QueueStateError, match="idle"):
        queue.put_nowait(1)
    with pytest.raises(QueueStateError, match="cannot start_workers: queue is idle"):
        await queue.start_workers(Gate(), 1)
    await queue.start()
    await queue.start()  # no-op while processing
    assert state(queue) is QueueStatus.PROCESSING
    assert await queue.stop() == []
    assert await queue.stop() == []  # idempotent
    with pytest.raises(QueueStateError, match="cannot put: queue is stopped"):
        await queue.put(1)
    with pytest.raises(QueueStateError, match="cannot start: queue is stopped"):
        await queue.start()
    with pytest.raises(QueueStateError, match="cannot get: queue is stopped"):
        await queue.get()
    assert issubclass(QueueStateError, QueueError)


async def test_stop_on_an_idle_queue() -> None:
    queue = BoundedQueue[int]()
    assert await queue.stop() == []
    assert state(queue) is QueueStatus.STOPPED
    await asyncio.wait_for(queue.join(), WAIT)


async def test_join_waits_for_queued_and_in_flight() -> None:
    gate = Gate()
    async with BoundedQueue[int]() as queue:
        await queue.start_workers(gate, 2)
        for i in range(5):
            await queue.put(i)
        joiner = asyncio.create_task(queue.join())
        await gate.wait_started(2)
        await settle()
        assert not joiner.done()
        gate.release.set()
        await asyncio.wait_for(joiner, WAIT)
        assert queue.metrics.processed == 5
        assert queue.metrics.in_flight == 0


async def test_stop_drains_gracefully() -> None:
    gate = Gate()
    queue = BoundedQueue[int](10)
    await queue.start()
    await queue.start_workers(gate, 2)
    for i in range(8):
        await queue.put(i)
    await gate.wait_started(2)
    stopper = asyncio.create_task(queue.stop())
    await settle()
    assert state(queue) is QueueStatus.STOPPING
    with pytest.raises(QueueStateError, match="cannot put: queue is stopping"):
        await queue.put(100)
    gate.release.set()
    assert await asyncio.wait_for(stopper, WAIT) == []
    assert sorted(gate.done) == list(range(8))
    assert state(queue) is QueueStatus.STOPPED
    assert queue.num_workers == 0


async def test_stop_timeout_cancels_and_returns_never_started_items() -> None:
    gate = Gate()  # never released
    queue = BoundedQueue[int](10)
    await queue.start()
    await queue.start_workers(gate, 2)
    for i in range(6):
        await queue.put(i)
    await gate.wait_started(2)
    joiner = asyncio.create_task(queue.join())
    began = time.monotonic()
    leftover = await asyncio.wait_for(queue.stop(timeout=0.05), WAIT)
    assert time.monotonic() - began >= 0.04
    assert leftover == [2, 3, 4, 5]
    await asyncio.wait_for(joiner, WAIT)  # join never hangs after stop
    metrics = queue.metrics
    assert (metrics.cancelled, metrics.processed, metrics.in_flight, metrics.depth) == (2, 0, 0, 0)
    assert state(queue) is QueueStatus.STOPPED
    await asyncio.wait_for(queue.join(), WAIT)


class Warnings(logging.Handler):
    """The warnings logged to `logger`, with an event set at each one."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.logger = logging.getLogger(f"test.warnings.{id(self)}")
        self.messages: list[str] = []
        self.emitted = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self.emitted.set()


@pytest.fixture
def warnings() -> Iterator[Warnings]:
    handler = Warnings()
    handler.logger.addHandler(handler)
    handler.logger.setLevel(logging.WARNING)
    yield handler
    handler.logger.removeHandler(handler)


async def test_stop_with_no_consumer_says_so_and_keeps_waiting(warnings: Warnings) -> None:
    queue = BoundedQueue[int](10, logger=warnings.logger)
    queue.stop_warning_after = 0.05
    await queue.start()
    for i in range(3):
        await queue.put(i)

    stopper = asyncio.create_task(queue.stop())
    await asyncio.wait_for(warnings.emitted.wait(), WAIT)

    assert warnings.messages == [
        "stop() has waited 0.05s for 3 queued and 0 in-flight items and no worker runs: call"
        " start_workers() before stop(), take the items with get() and task_done(), or pass"
        " stop(timeout=...)"
    ]
    assert not stopper.done()  # a warning, not a timeout: the items stay
    for _ in range(3):  # a late consumer ends the wait
        await queue.get()
        queue.task_done()
    assert await asyncio.wait_for(stopper, WAIT) == []
    assert queue.metrics.processed == 3


async def test_stop_warns_once_about_slow_items_and_not_with_a_timeout(
    warnings: Warnings,
) -> None:
    gate = Gate()
    queue = BoundedQueue[int](10, logger=warnings.logger)
    queue.stop_warning_after = 0.05
    await queue.start()
    await queue.start_workers(gate, 1)
    await queue.put(0)
    await queue.put(1)
    await gate.wait_started(1)

    stopper = asyncio.create_task(queue.stop())
    await asyncio.wait_for(warnings.emitted.wait(), WAIT)
    gate.release.set()
    assert await asyncio.wait_for(stopper, WAIT) == []
    assert warnings.messages == [
        "stop() has waited 0.05s for 1 queued and 1 in-flight items;"
        " pass stop(timeout=...) to bound the wait"
    ]

    bounded = BoundedQueue[int](10, logger=warnings.logger)
    bounded.stop_warning_after = 0.01
    await bounded.start()
    await bounded.put(7)
    assert await asyncio.wait_for(bounded.stop(timeout=0.1), WAIT) == [7]
    assert len(warnings.messages) == 1  # the caller chose how long to wait


async def test_stop_with_a_full_queue_and_blocked_producers() -> None:
    gate = Gate()
    queue = BoundedQueue[int](3)
    await queue.start()
    await queue.start_workers(gate, 1)
    await queue.put(0)
    await gate.wait_started(1)
    for i in range(1, 4):
        await queue.put(i)
    assert queue.full()
    producers = [asyncio.create_task(queue.put(i)) for i in range(10, 13)]
    await settle()
    stopper = asyncio.create_task(queue.stop())
    results = await asyncio.wait_for(asyncio.gather(*producers, return_exceptions=True), WAIT)
    assert all(isinstance(r, QueueStateError) for r in results)
    assert "stopping" in str(results[0])
    gate.release.set()
    assert await asyncio.wait_for(stopper, WAIT) == []
    assert gate.done == [0, 1, 2, 3]
    assert queue.metrics.enqueued == 4


async def test_concurrent_stops_and_a_cancelled_stop() -> None:
    gate = Gate()
    queue = BoundedQueue[int](10)
    await queue.start()
    await queue.start_workers(gate, 1)
    for i in range(4):
        await queue.put(i)
    await gate.wait_started(1)
    first = asyncio.create_task(queue.stop())
    second = asyncio.create_task(queue.stop(timeout=0))
    await settle()
    assert not first.done()
    assert not second.done()
    first.cancel()  # the drain is abandoned: workers are cancelled ...
    with pytest.raises(asyncio.CancelledError):
        await first
    # ... and the waiting stop() takes over and hands back what never started
    assert await asyncio.wait_for(second, WAIT) == [1, 2, 3]
    assert state(queue) is QueueStatus.STOPPED
    assert queue.metrics.cancelled == 1


async def test_async_with_drains_on_normal_exit() -> None:
    gate = Gate()
    async with BoundedQueue[int](4) as queue:
        assert state(queue) is QueueStatus.PROCESSING
        await queue.start_workers(gate, 2)
        for i in range(4):
            await queue.put(i)
        gate.release.set()
    assert sorted(gate.done) == [0, 1, 2, 3]
    assert state(queue) is QueueStatus.STOPPED


async def test_async_with_cancels_on_error(caplog: pytest.LogCaptureFixture) -> None:
    gate = Gate()
    caplog.set_level(logging.WARNING)
    queue = BoundedQueue[int](10)

    async def use() -> None:
        async with queue:
            await queue.start_workers(gate, 1)
            for i in range(3):
                await queue.put(i)
            await gate.wait_started(1)
            raise RuntimeError("producer failed")

    with pytest.raises(RuntimeError, match="producer failed"):
        await use()
    assert state(queue) is QueueStatus.STOPPED
    assert queue.metrics.cancelled == 1
    assert gate.done == []
    assert any("2 queued items were never started" in r.getMessage() for r in caplog.records)


async def test_manual_get_and_task_done() -> None:
    queue = BoundedQueue[int](4)
    await queue.start()
    with pytest.raises(QueueEmptyError):
        queue.get_nowait()
    getter = asyncio.create_task(queue.get())
    await settle()
    assert not getter.done()
    await queue.put(7)
    assert await asyncio.wait_for(getter, WAIT) == 7
    assert queue.metrics.in_flight == 1
    joiner = asyncio.create_task(queue.join())
    await settle()
    assert not joiner.done()
    queue.task_done()
    await asyncio.wait_for(joiner, WAIT)
    with pytest.raises(ValueError, match="task_done"):
        queue.task_done()
    waiting = asyncio.create_task(queue.get())
    await settle()
    await queue.stop()
    with pytest.raises(QueueStateError, match="closed and empty"):
        await asyncio.wait_for(waiting, WAIT)


async def test_metrics_snapshot() -> None:
    gate = Gate()

    async def work(item: int) -> None:
        await gate(item)
        if item == 1:
            raise ValueError("one")

    queue = BoundedQueue[int](3)
    await queue.start()
    await queue.start_workers(work, 1)
    await queue.put(0)
    await gate.wait_started(1)
    for i in range(1, 4):
        await queue.put(i)
    assert not queue.offer(4)
    snapshot = queue.metrics
    assert snapshot == QueueMetrics(
        enqueued=4,
        processed=0,
        failed=0,
        cancelled=0,
        handler_errors=0,
        backpressure_events=1,
        in_flight=1,
        depth=3,
        max_depth=3,
    )
    gate.release.set()
    await asyncio.wait_for(queue.join(), WAIT)
    assert queue.metrics.as_dict() == {
        "enqueued": 4,
        "processed": 3,
        "failed": 1,
        "cancelled": 0,
        "handler_errors": 0,
        "backpressure_events": 1,
        "in_flight": 0,
        "depth": 0,
        "max_depth": 3,
    }
    assert snapshot.depth == 3  # a snapshot does not change afterwards
    await queue.stop()


# --------------------------------------------------------------------------- WorkQueue


async def test_batch_process() -> None:
    done: list[int] = []

    async def work(item: int) -> None:
        await asyncio.sleep(0)
        if item == 13:
            raise ValueError("unlucky")
        done.append(item)

    failures: list[int] = []

    async def handler(exc: Exception, item: int) -> None:
        failures.append(item)

    queue = WorkQueue[int](maxsize=5, concurrency_limit=3)
    await queue.batch_process(list(range(50)), work, error_handler=handler)
    assert sorted(done) == [i for i in range(50) if i != 13]
    assert failures == [13]
    assert state(queue) is QueueStatus.STOPPED
    metrics = queue.metrics
    assert (metrics.enqueued, metrics.processed, metrics.failed) == (50, 49, 1)
    assert metrics.max_depth <= 5


async def test_batch_process_state_rules() -> None:
    queue = WorkQueue[int](concurrency_limit=2)
    async with queue:
        await queue.process(Gate(block=False))
        with pytest.raises(QueueStateError, match="2 workers already running"):
            await queue.batch_process([1], Gate(block=False))
    with pytest.raises(QueueStateError, match="stopped"):
        await queue.batch_process([1], Gate(block=False))


async def test_batch_process_reraises_a_worker_base_exception() -> None:
    async def work(item: int) -> None:
        if item == 3:
            raise Fatal("stop everything")

    queue = WorkQueue[int](maxsize=2)
    with pytest.raises(Fatal):
        await asyncio.wait_for(queue.batch_process(range(100), work), WAIT)
    assert state(queue) is QueueStatus.STOPPED
    assert queue.num_workers == 0


async def test_batch_process_cancelled_cleans_up() -> None:
    gate = Gate()
    queue = WorkQueue[int](maxsize=2, concurrency_limit=2)
    runner = asyncio.create_task(queue.batch_process(range(10), gate))
    await gate.wait_started(2)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(runner, WAIT)
    assert state(queue) is QueueStatus.STOPPED
    assert queue.num_workers == 0
    assert queue.metrics.cancelled == 2


def test_repr() -> None:
    assert repr(BoundedQueue[int](5)) == "<BoundedQueue idle fifo depth=0/5 workers=0>"


async def test_stop_or_join_from_inside_a_worker_is_refused() -> None:
    errors: list[str] = []
    stopper: list[asyncio.Task[list[int]]] = []
    stop_requested = asyncio.Event()

    async def work(item: int) -> None:
        for call in (queue.stop, queue.join):
            try:
                await call()
            except QueueStateError as exc:
                errors.append(str(exc))
        if not stopper:
            stopper.append(asyncio.create_task(queue.stop()))  # the way to do it
            stop_requested.set()

    queue = BoundedQueue[int]()
    await queue.start()
    await queue.start_workers(work, 1)
    await queue.put(1)
    await queue.put(2)
    await asyncio.wait_for(stop_requested.wait(), WAIT)
    assert await asyncio.wait_for(stopper[0], WAIT) == []
    assert len(errors) == 4
    assert "cannot stop: queue is processing" in errors[0]
    assert "from one of its own workers" in errors[0]
    assert "cannot join" in errors[1]
    assert queue.metrics.processed == 2
    assert state(queue) is QueueStatus.STOPPED


async def test_a_cancelled_stop_still_ends_stopped() -> None:
    gate = Gate()
    queue = BoundedQueue[int](10)
    await queue.start()
    await queue.start_workers(gate, 1)
    for i in range(3):
        await queue.put(i)
    await gate.wait_started(1)
    stopper = asyncio.create_task(queue.stop())
    joiner = asyncio.create_task(queue.join())
    await settle()
    stopper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopper
    await asyncio.wait_for(joiner, WAIT)  # the workers ended: the queue is stopped
    assert state(queue) is QueueStatus.STOPPED
    assert await queue.stop() == [1, 2]  # what never started is still handed back
    assert await queue.stop() == []


class RecentFirst(BoundedQueue[int]):
    """A subclass using the storage hook: newest first, like LIFO, built from scratch."""

    def _init(self, maxsize: int) -> None:
        store: collections.deque[int] = collections.deque()
        self._queue = store
        self._put = store.appendleft
        self._get = store.popleft


async def test_subclass_can_replace_the_storage_hooks() -> None:
    gate = Gate(block=False)
    async with RecentFirst(3) as queue:
        for i in range(3):
            await queue.put(i)
        assert queue.full()
        await queue.start_workers(gate, 1)
        await queue.join()
    assert gate.done == [2, 1, 0]


class Flaky(BoundedQueue[int]):
    """FIFO storage that refuses negative items and can fail one get without removing."""

    fail_next_get = False

    def _init(self, maxsize: int) -> None:
        store: collections.deque[int] = collections.deque()
        self._queue = store

        def put(item: int) -> None:
            if item < 0:
                raise ValueError(f"item {item} refused")
            store.append(item)

        def get() -> int:
            if self.fail_next_get:
                self.fail_next_get = False
                raise RuntimeError("store hiccup")
            return store.popleft()

        self._put = put
        self._get = get
