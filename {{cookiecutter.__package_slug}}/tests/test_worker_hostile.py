"""Nothing a reader or an item does can stall the worker: every item ends with an outcome."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies
from pydantic import ValidationError
from support import Journal, RecordingSource, fast_settings, writer_over

from {{ cookiecutter.__package_slug }}.settings import Settings
from {{ cookiecutter.__package_slug }}.worker import Outcome, Worker, WriterError
from {{ cookiecutter.__package_slug }}.worker.retry import Permanent, RetryAfter, backoff
from {{ cookiecutter.__package_slug }}.worker.texts import error_text, shorten

DRAIN_BOUND = 60.0  # seconds any drain here may take


class BrokenStr(Exception):
    """An exception whose text cannot be built."""

    def __str__(self) -> str:
        raise RuntimeError("no text for you")


class BrokenBase(BaseException):
    """A BaseException that is not an Exception."""


class Opaque:
    """An item whose repr raises."""

    def __init__(self, number: int) -> None:
        self.number = number

    def __repr__(self) -> str:
        raise ValueError("no repr for you")


async def drain(worker: Worker) -> Any:
    return await asyncio.wait_for(worker.drain(), DRAIN_BOUND)


def worker_over(
    items: list[Any], reader: Any, context: Any = None, **overrides: Any
) -> tuple[Worker, RecordingSource]:
    values = fast_settings(**overrides)
    source = RecordingSource(writer_over(items), values)
    worker = Worker("t", reader=reader, context=context, source=source, settings=values)
    return worker, source


def test_texts_of_broken_objects_never_raise() -> None:
    assert "its repr raised ValueError" in shorten(Opaque(1))
    assert error_text(BrokenStr()) == "BrokenStr: <its str raised RuntimeError>"
    assert error_text(ValueError("x" * 5000)).startswith("ValueError: xxx")
    assert len(error_text(ValueError("x" * 5000))) == 2000


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_unprintable_errors_and_items_still_end_with_an_outcome(kind: str) -> None:
    def work(item: Any) -> None:
        number = item.number if isinstance(item, Opaque) else item
        if number % 3 == 0:
            raise BrokenStr()
        if number % 3 == 1 and isinstance(item, Opaque):
            raise ValueError("an opaque item failed")

    async def async_reader(item: Any) -> None:
        work(item)

    items = [Opaque(n) if n % 2 else n for n in range(30)]
    worker, source = worker_over(items, async_reader if kind == "async" else work)
    summary = await drain(worker)

    assert summary.enqueued == summary.succeeded + summary.failed == 30
    failed = {getattr(item, "number", item) for item, _ in source.failures}
    assert failed == {n for n in range(30) if n % 3 == 0 or (n % 3 == 1 and n % 2)}
    assert "BrokenStr: <its str raised RuntimeError>" in {error for _, error in source.failures}


async def test_base_exceptions_in_the_reader_fail_only_their_item() -> None:
    async def reader(item: int) -> None:
        if item == 1:
            raise SystemExit(3)
        if item == 2:
            raise KeyboardInterrupt
        if item == 3:
            raise BrokenBase("odd")

    worker, source = worker_over(list(range(8)), reader)
    summary = await drain(worker)

    assert (summary.succeeded, summary.failed) == (5, 3)
    assert sorted(item for item, _ in source.failures) == [1, 2, 3]
    assert source.of(Outcome.LOST) == []  # no process died for them


def test_retries_are_bounded_and_backoff_cannot_overflow() -> None:
    with pytest.raises(ValidationError, match="max_retries"):
        Settings(_env_file=None, max_retries=5000)
    assert 0 <= backoff(100_000, 0.5, 30.0) <= 30.0
    assert {backoff(1, 0.0, 30.0) for _ in range(10)} == {0.0}
    draws = [backoff(3, 1.0, 30.0) for _ in range(200)]
    assert max(draws) <= 4.0
    assert len(set(draws)) > 100  # full jitter: spread over [0, 4]


async def test_permanent_errors_are_not_retried_and_retry_after_sets_the_wait(
    journal: Journal,
) -> None:
    async def reader(item: str) -> None:
        journal.add(item, time.monotonic())
        if item == "permanent":
            raise Permanent("bad input")
        if item == "later" and len(journal.rows()) < 3:
            raise RetryAfter(0.2)

    worker, source = worker_over(["permanent", "later"], reader, max_retries=3, retry_backoff=5)
    summary = await drain(worker)

    assert (summary.succeeded, summary.failed) == (1, 1)
    assert source.failures == [("permanent", "Permanent: bad input")]
    rows = journal.rows()
    assert [row[0] for row in rows].count("permanent") == 1
    later = [float(row[1]) for row in rows if row[0] == "later"]
    assert len(later) == 2
    assert 0.15 <= later[1] - later[0] < 4  # RetryAfter's 0.2 s, not the 5 s backoff


async def test_async_reader_timeout_fails_the_item_and_is_retried_per_policy(
    journal: Journal,
) -> None:
    async def reader(item: int) -> None:
        journal.add(item)
        if item == 0:
            await asyncio.sleep(3600)

    worker, source = worker_over(list(range(5)), reader, reader_timeout=0.3, max_retries=1)
    summary = await drain(worker)

    assert (summary.succeeded, summary.failed, summary.timed_out) == (4, 1, 1)
    [(item, error)] = source.failures
    assert item == 0
    setting = "{{ cookiecutter.__env_prefix }}READER_TIMEOUT"
    assert error.startswith(f"ReaderTimeout: the reader did not finish within {setting}=0.3s")
    assert journal.column(0)["0"] == 2  # retried once


async def test_sync_reader_overrun_kills_its_process_and_loses_no_other_item(
    journal: Journal,
) -> None:
    def reader(item: int) -> None:
        journal.add(item, os.getpid())
        if item == 2:
            time.sleep(3600)

    def context() -> None:
        journal.add("open", os.getpid())

    worker, source = worker_over(
        list(range(12)), reader, context, reader_timeout=0.5, concurrent_tasks_per_process=1
    )
    summary = await drain(worker)

    assert summary.enqueued == 12
    assert (summary.succeeded, summary.failed, summary.timed_out) == (11, 1, 1)
    [(item, error)] = source.failures
    assert item == 2
    assert error.startswith("ReaderTimeout:")
    assert set(journal.column(0)) == {str(n) for n in range(12)} | {"open"}
    assert journal.column(0)["open"] == 3  # two processes, and one replacing the killed one


async def test_writer_error_keeps_its_cause() -> None:
    class Broken(Exception):
        pass

    async def writer(desired: int) -> AsyncIterator[int]:
        raise Broken("the table is gone")
        yield 0

    async def reader(item: int) -> None:
        return None

    worker = Worker("t", reader=reader, writer=writer, settings=fast_settings())
    with pytest.raises(WriterError, match="the table is gone") as info:
        await drain(worker)
    assert isinstance(info.value.__cause__, Broken)


async def test_few_slow_items_are_spread_over_the_processes(journal: Journal) -> None:
    async def reader(item: int) -> None:
        journal.add(item, os.getpid())
        time.sleep(0.1)  # noqa: ASYNC251 - blocks its process's event loop, like CPU-bound work

    worker, _ = worker_over(list(range(6)), reader, num_processes=2)
    summary = await drain(worker)

    assert summary.succeeded == 6
    per_process = journal.column(1)
    assert len(per_process) == 2, per_process
    assert min(per_process.values()) >= 2, per_process


BEHAVIOURS = ("ok", "raise", "broken-str", "base", "system-exit", "interrupt", "exit", "hang")


def hostile_reader(item: Any) -> None:
    """Does what the item says (see BEHAVIOURS)."""
    behaviour = item.behaviour if isinstance(item, HostileItem) else item[1]
    if behaviour == "raise":
        raise ValueError("plain failure")
    if behaviour == "broken-str":
        raise BrokenStr()
    if behaviour == "base":
        raise BrokenBase()
    if behaviour == "system-exit":
        raise SystemExit(1)
    if behaviour == "interrupt":
        raise KeyboardInterrupt
    if behaviour == "exit":
        os._exit(9)
    if behaviour == "hang":
        time.sleep(3600)


async def async_hostile_reader(item: Any) -> None:
    behaviour = item.behaviour if isinstance(item, HostileItem) else item[1]
    if behaviour == "hang":
        await asyncio.sleep(3600)
    hostile_reader(item)


class HostileItem(Opaque):
    """An item with a broken repr that carries a behaviour."""

    def __init__(self, number: int, behaviour: str) -> None:
        super().__init__(number)
        self.behaviour = behaviour


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    plan=strategies.lists(
        strategies.tuples(strategies.sampled_from(BEHAVIOURS), strategies.booleans()),
        min_size=1,
        max_size=12,
    ),
    use_async=strategies.booleans(),
)
def test_hostile_readers_never_stall_a_drain(plan: list[tuple[str, bool]], use_async: bool) -> None:
    items: list[Any] = [
        HostileItem(number, behaviour) if opaque else (number, behaviour)
        for number, (behaviour, opaque) in enumerate(plan)
    ]
    reader = async_hostile_reader if use_async else hostile_reader
    worker, source = worker_over(items, reader, reader_timeout=0.5, graceful_shutdown_timeout=2)
    started = time.monotonic()
    summary = asyncio.run(drain(worker))

    assert time.monotonic() - started < DRAIN_BOUND
    assert summary.enqueued == len(items)
    assert summary.enqueued == summary.succeeded + summary.failed + summary.not_started
    assert len(source.outcomes) == len(items)  # the source heard of every item once
    ok = sum(behaviour == "ok" for behaviour, _ in plan)
    assert summary.succeeded <= ok
