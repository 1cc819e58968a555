"""drain(): exactly one outcome per yielded item, across real worker processes."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from support import CommittingSource, Journal, fast_settings, writer_over

from {{ cookiecutter.__package_slug }}.worker import Worker, WorkerError, WriterSource


def recording_reader(journal: Journal) -> Any:
    async def reader(item: Any) -> None:
        await asyncio.sleep(0)
        journal.add(item[:12] if isinstance(item, str) else item, os.getpid())

    return reader


async def test_recycling_every_50_jobs_loses_nothing(journal: Journal) -> None:
    async def reader(item: int) -> None:
        await asyncio.sleep(0.001)  # in flight when the process is told to retire
        journal.add(item, os.getpid())

    settings = fast_settings(max_jobs_per_process=50, concurrent_tasks_per_process=4)
    worker = Worker("t", reader=reader, writer=writer_over(range(2000)), settings=settings)
    summary = await worker.drain()

    assert journal.column(0) == Counter(str(n) for n in range(2000))
    assert (summary.enqueued, summary.succeeded, summary.failed) == (2000, 2000, 0)
    pids = set(journal.column(1))
    assert len(pids) >= 2000 // 50  # processes really were recycled
    assert all(count <= 50 for count in journal.column(1).values())


async def test_full_queue_and_a_writer_that_ignores_desired(journal: Journal) -> None:
    settings = fast_settings(max_queue_size=3, lookup_block_size=2)
    writer = writer_over(range(500), ignore_desired=True)
    worker = Worker("t", reader=recording_reader(journal), writer=writer, settings=settings)
    summary = await worker.drain()

    assert journal.column(0) == Counter(str(n) for n in range(500))
    assert summary.enqueued == summary.succeeded == 500


async def test_large_items(journal: Journal) -> None:
    items = [f"{n:08d}" + "x" * (8192 - 8) for n in range(400)]
    worker = Worker(
        "t", reader=recording_reader(journal), writer=writer_over(items), settings=fast_settings()
    )
    summary = await worker.drain()

    assert journal.column(0) == Counter(item[:12] for item in items)
    assert summary.succeeded == 400


async def test_writer_faster_than_slow_readers(journal: Journal) -> None:
    async def reader(item: int) -> None:
        await asyncio.sleep(0.005)
        journal.add(item)

    settings = fast_settings(max_queue_size=10, concurrent_tasks_per_process=2)
    worker = Worker("t", reader=reader, writer=writer_over(range(300)), settings=settings)
    summary = await worker.drain()

    assert journal.column(0) == Counter(str(n) for n in range(300))
    assert summary.succeeded == 300


async def test_sync_reader(journal: Journal) -> None:
    def reader(item: int) -> None:
        journal.add(item, os.getpid())

    worker = Worker("t", reader=reader, writer=writer_over(range(300)), settings=fast_settings())
    summary = await worker.drain()

    assert journal.column(0) == Counter(str(n) for n in range(300))
    assert summary.succeeded == 300
    assert os.getpid() not in {int(pid) for pid in journal.column(1)}


async def test_summary_agrees_with_what_readers_saw(journal: Journal) -> None:
    async def reader(item: int) -> None:
        journal.add(item)
        if item % 7 == 0:
            raise ValueError(f"bad {item}")

    worker = Worker("t", reader=reader, writer=writer_over(range(350)), settings=fast_settings())
    summary = await worker.drain()

    seen = journal.column(0)
    assert sum(seen.values()) == summary.enqueued == 350
    assert summary.failed == 50
    assert summary.succeeded == 300
    assert not summary.ok


async def test_duplicates_within_the_requeue_window_are_skipped(journal: Journal) -> None:
    async def writer(desired: int) -> AsyncIterator[Any]:
        for item in [1, 2, 2, {"id": 3}, {"id": 3}, 1]:
            yield item

    calls = 0

    async def once(desired: int) -> AsyncIterator[Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            async for item in writer(desired):
                yield item

    worker = Worker("t", reader=recording_reader(journal), writer=once, settings=fast_settings())
    summary = await worker.drain()

    assert (summary.enqueued, summary.skipped_duplicates, summary.succeeded) == (3, 3, 3)


async def test_a_worker_can_drain_twice(journal: Journal) -> None:
    items = iter(range(100))

    async def writer(desired: int) -> AsyncIterator[int]:
        for _ in range(desired):
            item = next(items, None)
            if item is None:
                return
            yield item

    settings = fast_settings(prevent_requeuing_time=0)
    worker = Worker("t", reader=recording_reader(journal), writer=writer, settings=settings)
    first = await worker.drain()
    items = iter(range(100, 150))
    second = await worker.drain()

    assert (first.succeeded, second.succeeded) == (100, 50)
    assert journal.column(0) == Counter(str(n) for n in range(150))


async def test_with_a_commit_step_unread_items_still_spread_over_the_processes(
    journal: Journal,
) -> None:
    async def reader(item: int) -> None:
        journal.add(item, os.getpid())
        await asyncio.sleep(0.05)

    async def commit(item: int, error: str | None) -> None:
        await asyncio.sleep(0)

    # One slot per process: each may hold 2 items not read yet (and more that are committing),
    # so the first process to start does not take all 12.
    settings = fast_settings(num_processes=2, concurrent_tasks_per_process=1)
    source = CommittingSource(writer_over(range(12)), settings, commit)
    worker = Worker("t", reader=reader, settings=settings, source=source)
    summary = await worker.drain()

    assert (summary.succeeded, summary.failed) == (12, 0)
    per_process = journal.column(1)
    assert len(per_process) == 2
    assert min(per_process.values()) >= 3, per_process


class DurableSource(WriterSource):
    """A writer whose items count as leases, as a spool's or a stream's do."""

    durable = True


def test_max_unstarted_below_the_read_ahead_is_refused() -> None:
    async def read(item: int) -> None:
        return None

    # Each process holds up to one unstarted item per slot: 2 x 3 = 6.
    settings = fast_settings(num_processes=2, concurrent_tasks_per_process=3, max_unstarted=6)
    worker = Worker("t", read, settings=settings, source=DurableSource(writer_over([1]), settings))
    with pytest.raises(WorkerError, match=r"_MAX_UNSTARTED=6 is not above .* = 6\): set it"):
        asyncio.run(worker.drain())
    settings = fast_settings(num_processes=2, concurrent_tasks_per_process=3, max_unstarted=7)
    worker = Worker("t", read, settings=settings, source=DurableSource(writer_over([1]), settings))
    assert asyncio.run(worker.drain()).succeeded == 1
