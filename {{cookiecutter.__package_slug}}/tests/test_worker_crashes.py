"""A crash costs the item that caused it, and reader slots follow the work (docs/worker.md)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from support import Journal, RecordingSource, fast_settings, writer_over

from {{ cookiecutter.__package_slug }}.worker import Outcome, Worker
from {{ cookiecutter.__package_slug }}.worker.slots import FLOOR, Slots, next_limit

FORK = multiprocessing.get_context("fork")


def crashing_reader(kind: str, marker: Path, always: bool, journal: Journal) -> Any:
    """A reader awaiting (or sleeping) 20 ms whose item 7 kills its process: once (the first
    run, `marker` records it) or on every run."""

    def crash_on_7(item: int) -> None:
        if item == 7 and (always or not marker.exists()):
            marker.touch()
            os._exit(7)

    async def async_reader(item: int) -> None:
        crash_on_7(item)
        await asyncio.sleep(0.02)
        journal.add(item)

    def sync_reader(item: int) -> None:
        crash_on_7(item)
        time.sleep(0.02)
        journal.add(item)

    return async_reader if kind == "async" else sync_reader


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["async", "sync"])
@pytest.mark.parametrize("always", [False, True], ids=["crashes once", "crashes every time"])
async def test_an_item_that_kills_its_process_costs_only_itself(
    kind: str, always: bool, tmp_path: Path, journal: Journal
) -> None:
    """Defaults (MAX_RETRIES 0): the items that ran beside the crash run again, each alone;
    item 7 fails only if it crashes its process when it runs alone too."""
    settings = fast_settings()
    reader = crashing_reader(kind, tmp_path / "crashed", always, journal)
    source = RecordingSource(writer_over(range(200)), settings)
    worker = Worker("t", reader, settings=settings, source=source)

    summary = await worker.drain()

    expected = [n for n in range(200) if not (always and n == 7)]
    assert sorted(int(row[0]) for row in journal.rows()) == expected  # each once
    assert (summary.succeeded, summary.failed) == (len(expected), 200 - len(expected))
    if always:
        [(item, error)] = source.failures
        assert item == 7
        assert source.of(Outcome.LOST) == [7]
        assert "exited (code 7) while running it alone, 1 time(s)" in error
    else:
        assert source.failures == []
    assert summary.seconds < 30  # the items run alone one at a time: promptly


@pytest.mark.timeout(120)
async def test_max_retries_gives_a_crashing_item_more_runs_alone(
    tmp_path: Path, journal: Journal
) -> None:
    runs = tmp_path / "runs"

    async def reader(item: int) -> None:
        if item == 3:
            with runs.open("a") as file:
                file.write("x")
            os._exit(9)
        journal.add(item)

    settings = fast_settings(max_retries=2, retry_backoff=0.001)
    source = RecordingSource(writer_over(range(20)), settings)
    summary = await Worker("t", reader, settings=settings, source=source).drain()

    assert (summary.succeeded, summary.failed) == (19, 1)
    assert runs.read_text() == "xxxx"  # the first run beside others, then 3 alone
    [(item, error)] = source.failures
    assert item == 3
    assert "3 time(s)" in error


class InFlight:
    """How many readers run now, and the most that ever ran at once: counters shared with
    the worker processes (inherited through fork)."""

    def __init__(self) -> None:
        self.counts: Any = FORK.Array("l", [0, 0])
        self.lock: Any = FORK.Lock()

    @contextmanager
    def one(self) -> Iterator[None]:
        """Count one reader while the block runs."""
        with self.lock:
            self.counts[0] += 1
            self.counts[1] = max(self.counts[1], self.counts[0])
        try:
            yield
        finally:
            with self.lock:
                self.counts[0] -= 1

    @property
    def most(self) -> int:
        return int(self.counts[1])


async def test_readers_that_wait_get_hundreds_of_slots_by_default() -> None:
    in_flight = InFlight()

    async def reader(item: int) -> None:
        with in_flight.one():
            await asyncio.sleep(0.5)

    settings = fast_settings(num_processes=1)
    summary = await Worker("t", reader, writer=writer_over(range(1500)), settings=settings).drain()

    assert summary.succeeded == 1500
    assert in_flight.most >= 200, f"at most {in_flight.most} in flight at once in one process"


async def test_a_reader_that_computes_keeps_the_floor_of_slots() -> None:
    in_flight = InFlight()

    async def reader(item: int) -> None:
        with in_flight.one():
            for _ in range(3):  # 3 ms of CPU, letting the others run between each
                until = time.process_time() + 0.001
                while time.process_time() < until:
                    pass
                await asyncio.sleep(0)

    settings = fast_settings(num_processes=1)
    summary = await Worker("t", reader, writer=writer_over(range(400)), settings=settings).drain()

    assert summary.succeeded == 400
    assert in_flight.most == FLOOR  # every slot used, none added: the CPU was busy


async def test_a_fixed_number_of_slots_is_kept() -> None:
    in_flight = InFlight()

    async def reader(item: int) -> None:
        with in_flight.one():
            await asyncio.sleep(0.05)

    settings = fast_settings(num_processes=1, concurrent_tasks_per_process=5)
    summary = await Worker("t", reader, writer=writer_over(range(100)), settings=settings).drain()

    assert summary.succeeded == 100
    assert in_flight.most == 5


ADAPTIVE = Slots(16, 5000, adaptive=True)


@pytest.mark.parametrize(
    ("limit", "waiting", "busy", "lag", "expected"),
    [
        (16, True, 0.2, 0.0, 64),  # items wait, the CPU is 20% busy: 4 times, to reach 80%
        (16, True, 0.01, 0.0, 128),  # at most 8 times in one tick
        (16, True, 0.6, 0.0, 22),  # a third more
        (16, True, 0.79, 0.0, 17),  # at least one more
        (16, True, 0.8, 0.0, 16),  # busy enough: keep
        (16, False, 0.1, 0.0, 16),  # no item waits for a slot: keep
        (100, True, 0.99, 0.0, 100),  # the CPU is full: hold (fewer would not run more)
        (100, True, 0.1, 0.2, 80),  # the loop is late: a fifth fewer
        (17, True, 0.1, 0.2, 16),  # never below the floor
        (4000, True, 0.1, 0.0, 5000),  # never above the ceiling
    ],
)
def test_the_next_number_of_slots(
    limit: int, waiting: bool, busy: float, lag: float, expected: int
) -> None:
    assert next_limit(ADAPTIVE, limit, waiting=waiting, busy=busy, lag=lag) == expected


def test_slots_of_each_kind_of_reader() -> None:
    assert Slots.for_reader(False, 0, 1000) == Slots(1, 1, adaptive=False)  # sync
    assert Slots.for_reader(True, 24, 1000) == Slots(24, 24, adaptive=False)  # fixed
    assert Slots.for_reader(True, 0, 5000) == Slots(16, 5000, adaptive=True)
    assert Slots.for_reader(True, 0, 4) == Slots(4, 4, adaptive=True)  # a ceiling below 16
