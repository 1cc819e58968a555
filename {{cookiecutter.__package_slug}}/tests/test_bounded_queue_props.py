"""Property: under random interleavings of puts, gets, worker steps and stops, every
accepted item ends up exactly once (processed, failed, cancelled in flight, or handed
back by stop()), and nothing is run twice.

Scheduling is driven only by ``asyncio.sleep(0)`` counts drawn by hypothesis, so every
example is deterministic (no wall-clock timeouts).
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from {{ cookiecutter.__package_slug }}.bounded_queue import (
    BoundedQueue,
    QueueFullError,
    QueueStateError,
    QueueStatus,
)

settings.register_profile(
    "bounded_queue", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("bounded_queue_long", max_examples=3000, deadline=None)
PROFILE = os.environ.get("BOUNDED_QUEUE_HYPOTHESIS_PROFILE", "bounded_queue")

PUT_OPS = ("put", "put", "put", "put_timeout0", "put_nowait", "offer")


@dataclass
class Scenario:
    maxsize: int
    ordering: str
    workers: int
    consumer_yields: list[int]  # one manual get()/task_done() consumer per entry
    producers: list[list[tuple[str, int, int]]]  # (op, item, yields before it)
    work_yields: dict[int, int]
    failing: frozenset[int]
    stops: list[tuple[int, float | None]]  # (yields before stop(), timeout)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    workers = draw(st.integers(0, 3))
    consumer_yields = draw(st.lists(st.integers(0, 3), min_size=0 if workers else 1, max_size=2))
    counter = 0
    producers = []
    for _ in range(draw(st.integers(1, 3))):
        ops = []
        for _ in range(draw(st.integers(0, 12))):
            ops.append((draw(st.sampled_from(PUT_OPS)), counter, draw(st.integers(0, 3))))
            counter += 1
        producers.append(ops)
    items = list(range(counter))
    work_yields = {i: draw(st.integers(0, 4)) for i in items}
    failing = frozenset(draw(st.sets(st.sampled_from(items)))) if items else frozenset()
    stops = draw(
        st.lists(
            st.tuples(st.integers(0, 40), st.sampled_from([None, 0.0])), min_size=1, max_size=2
        )
    )
    return Scenario(
        maxsize=draw(st.integers(1, 4)),
        ordering=draw(st.sampled_from(["fifo", "lifo", "priority"])),
        workers=workers,
        consumer_yields=consumer_yields,
        producers=producers,
        work_yields=work_yields,
        failing=failing,
        stops=stops,
    )


async def yields(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def run(sc: Scenario) -> None:
    queue = BoundedQueue[int](sc.maxsize, ordering=sc.ordering)
    await queue.start()
    accepted: list[int] = []
    started: list[int] = []
    succeeded: list[int] = []
    failed: list[int] = []
    manual: list[int] = []

    async def work(item: int) -> None:
        started.append(item)
        await yields(sc.work_yields[item])
        if item in sc.failing:
            raise ValueError(item)
        succeeded.append(item)

    async def on_error(exc: Exception, item: int) -> None:
        assert exc.args == (item,)
        failed.append(item)

    async def producer(ops: list[tuple[str, int, int]]) -> None:
        for op, item, before in ops:
            await yields(before)
            try:
                if op == "put":
                    await queue.put(item)
                elif op == "put_timeout0":
                    await queue.put(item, timeout=0)
                elif op == "put_nowait":
                    queue.put_nowait(item)
                elif not queue.offer(item):
                    continue
            except QueueFullError:
                continue
            except QueueStateError:
                return  # stopped: the rest is never offered
            accepted.append(item)

    async def consumer(pause: int) -> None:
        while True:
            try:
                item = await queue.get()
            except QueueStateError:
                return
            manual.append(item)
            await yields(pause)
            queue.task_done()

    async def stopper(before: int, timeout: float | None) -> list[int]:
        await yields(before)
        return await queue.stop(timeout)

    if sc.workers:
        await queue.start_workers(work, sc.workers, on_error)
    tasks = [asyncio.create_task(producer(ops)) for ops in sc.producers]
    tasks += [asyncio.create_task(consumer(pause)) for pause in sc.consumer_yields]
    stops = [asyncio.create_task(stopper(before, timeout)) for before, timeout in sc.stops]
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    leftovers = await asyncio.wait_for(asyncio.gather(*stops), 10)
    await asyncio.wait_for(queue.join(), 10)  # never hangs after stop

    returned = [item for part in leftovers for item in part]
    cancelled = [item for item in started if item not in succeeded and item not in failed]
    assert len(started) == len(set(started)), "an item was run twice"
    assert not set(started) & set(manual), "an item went to a worker and a consumer"
    everything = succeeded + failed + cancelled + manual + returned
    assert Counter(everything) == Counter(accepted), "an item was lost or duplicated"

    metrics = queue.metrics
    assert metrics.enqueued == len(accepted)
    assert metrics.processed == len(succeeded) + len(manual)
    assert metrics.failed == len(failed)
    assert metrics.cancelled == len(cancelled)
    assert (metrics.in_flight, metrics.depth) == (0, 0)
    assert metrics.max_depth <= sc.maxsize
    assert queue.status is QueueStatus.STOPPED
    assert queue.num_workers == 0
    if all(timeout is None for _, timeout in sc.stops):
        assert returned == [], "a graceful stop handed items back"
        assert cancelled == [], "a graceful stop cancelled items"
    one_lane = sc.workers == 1 and not sc.consumer_yields and len(sc.producers) == 1
    if one_lane and sc.ordering == "fifo":
        assert started == accepted[: len(started)], "FIFO order broken"


@settings(settings.get_profile(PROFILE))
@given(scenarios())
def test_nothing_lost_or_run_twice(sc: Scenario) -> None:
    asyncio.run(run(sc))
