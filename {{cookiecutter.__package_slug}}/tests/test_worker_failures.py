"""Reader errors, retries, crashed processes and code that needs fixing."""

from __future__ import annotations

import asyncio
import os
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
from support import CommittingSource, Journal, RecordingSource, fast_settings, writer_over

from {{ cookiecutter.__package_slug }}.settings import Settings
from {{ cookiecutter.__package_slug }}.worker import (
    ContextError,
    Outcome,
    SignatureError,
    Summary,
    Worker,
    WriterError,
)


def recording_worker(
    *, writer: Callable[..., AsyncIterator[Any]], settings: Settings, **kwargs: Any
) -> tuple[Worker, RecordingSource]:
    source = RecordingSource(writer, settings)
    return Worker("t", settings=settings, source=source, **kwargs), source


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_reader_errors_are_counted_and_settled_as_failed(
    journal: Journal, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    def work(item: int) -> None:
        journal.add(item, os.getpid())
        if item % 10 == 3:
            raise RuntimeError(f"boom {item}")

    async def async_reader(item: int) -> None:
        work(item)

    def context() -> None:
        journal.add("process", os.getpid())

    reader = async_reader if kind == "async" else work
    worker, source = recording_worker(
        reader=reader, writer=writer_over(range(200)), context=context, settings=fast_settings()
    )
    summary = await worker.drain()

    failing = {n for n in range(200) if n % 10 == 3}
    assert (summary.succeeded, summary.failed) == (180, 20)
    assert {item for item, _ in source.failures} == failing
    assert all(error == f"RuntimeError: boom {item}" for item, error in source.failures)
    items = Counter(row[0] for row in journal.rows() if row[0] != "process")
    assert items == Counter(str(n) for n in range(200))
    assert len([row for row in journal.rows() if row[0] == "process"]) == 2  # none replaced


async def test_retries_with_backoff_then_success(journal: Journal) -> None:
    async def reader(item: int) -> None:
        journal.add(item)
        if sum(1 for row in journal.rows() if row[0] == str(item)) < 3:
            raise ConnectionError("flaky")

    settings = fast_settings(max_retries=2, retry_backoff=0.001, num_processes=1)
    worker, source = recording_worker(
        reader=reader, writer=writer_over(range(20)), settings=settings
    )
    summary = await worker.drain()

    assert (summary.succeeded, summary.failed, summary.retried) == (20, 0, 40)
    assert journal.column(0) == Counter({str(n): 3 for n in range(20)})
    assert source.failures == []


async def test_after_the_last_retry_the_item_is_reported_failed(journal: Journal) -> None:
    async def reader(item: int) -> None:
        journal.add(item)
        raise ConnectionError("down")

    settings = fast_settings(max_retries=1, retry_backoff=0.001)
    worker, source = recording_worker(
        reader=reader, writer=writer_over(range(30)), settings=settings
    )
    summary = await worker.drain()

    assert (summary.succeeded, summary.failed, summary.retried) == (0, 30, 30)
    assert journal.column(0) == Counter({str(n): 2 for n in range(30)})
    assert sorted(item for item, _ in source.failures) == list(range(30))


async def test_a_crash_costs_only_the_item_that_causes_it_and_the_process_is_replaced(
    journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    async def reader(item: int) -> None:
        if item == 13:
            os._exit(7)
        journal.add(item, os.getpid())

    settings = fast_settings(concurrent_tasks_per_process=1)
    worker, source = recording_worker(
        reader=reader, writer=writer_over(range(100)), settings=settings
    )
    summary = await worker.drain()

    assert (summary.enqueued, summary.succeeded, summary.failed) == (100, 99, 1)
    [(item, error)] = source.failures
    assert item == 13
    assert source.of(Outcome.LOST) == [13]
    assert "exited (code 7) while running it alone, 1 time(s)" in error
    assert set(journal.column(0)) == {str(n) for n in range(100) if n != 13}
    assert "exited with code 7 holding 1 item(s) that had started" in caplog.text
    assert len({row[1] for row in journal.rows()}) >= 2  # the process was replaced


class RefusingSource(CommittingSource):
    """Begins items in batches, refusing odd ones (and failing a whole batch with 10 in it)."""

    async def begin(self, items: Sequence[Any]) -> list[Any]:
        if 10 in items:
            raise RuntimeError("begin broke")
        return [ValueError(f"refused {item}") if item % 2 else item for item in items]


async def test_items_begin_refuses_fail_without_running_and_still_reach_commit(
    journal: Journal,
) -> None:
    async def reader(item: int) -> None:
        journal.add("read", item)

    async def commit(item: int, error: str | None) -> None:
        journal.add("commit", item, error or "ok")

    settings = fast_settings(num_processes=2)
    source = RefusingSource(writer_over(range(12)), settings, commit)
    summary = await Worker("t", reader=reader, settings=settings, source=source).drain()

    read = {int(row[1]) for row in journal.rows() if row[0] == "read"}
    committed = {int(row[1]): row[2] for row in journal.rows() if row[0] == "commit"}
    failed = dict(source.failures)
    broken = {item for item, error in failed.items() if error == "RuntimeError: begin broke"}
    assert (summary.succeeded, summary.failed) == (len(read), len(failed))
    assert read == {item for item in range(0, 12, 2) if item not in broken}
    assert 10 in broken  # with the batch it came in
    assert set(failed) == set(range(12)) - read  # a refused item is never read
    assert {item: failed[item] for item in set(failed) - broken} == {
        item: f"ValueError: refused {item}" for item in range(1, 12, 2) if item not in broken
    }
    # Each item reached the commit step once, with its reader's outcome or its refusal.
    assert len(journal.rows()) == len(read) + 12
    assert committed == {item: failed.get(item, "ok") for item in range(12)}


async def test_commit_runs_in_the_worker_process_after_the_reader_outside_its_slot(
    journal: Journal,
) -> None:
    started: dict[int, asyncio.Event] = {}  # per worker process (a fork copies it)

    def event(item: int) -> asyncio.Event:
        return started.setdefault(item, asyncio.Event())

    async def reader(item: int) -> None:
        event(item).set()
        if item == 3:
            raise ValueError("three")

    async def commit(item: int, error: str | None) -> None:
        if item < 5:  # one reader slot, yet the next item's reader runs while this commits
            await asyncio.wait_for(event(item + 1).wait(), 10)
        journal.add(item, error or "ok", os.getpid())
        if item == 4:
            raise RuntimeError("acknowledgement refused")

    settings = fast_settings(num_processes=1, concurrent_tasks_per_process=1)
    source = CommittingSource(writer_over(range(6)), settings, commit)
    worker = Worker("t", reader=reader, settings=settings, source=source)
    summary = await worker.drain()

    assert (summary.succeeded, summary.failed) == (4, 2)
    assert sorted(source.failures) == [
        (3, "ValueError: three"),
        (4, "RuntimeError: acknowledgement refused"),
    ]
    rows = {int(item): (error, pid) for item, error, pid in journal.rows()}
    assert {item: error for item, (error, _) in rows.items()} == {
        0: "ok",
        1: "ok",
        2: "ok",
        3: "ValueError: three",
        4: "ok",
        5: "ok",
    }
    assert str(os.getpid()) not in {pid for _, pid in rows.values()}  # ran in the worker


async def test_unpicklable_item_fails_fast() -> None:
    async def writer(desired: int) -> AsyncIterator[Any]:
        yield threading.Lock()

    async def reader(item: Any) -> None:
        raise AssertionError("never called")

    worker = Worker("t", reader=reader, writer=writer, settings=fast_settings())
    with pytest.raises(WriterError, match=r"cannot be pickled.*yield plain data"):
        await worker.drain()


async def test_writer_that_raises_fails_fast() -> None:
    async def writer(desired: int) -> AsyncIterator[int]:
        yield 1
        raise OSError("database is down")

    async def reader(item: int) -> None:
        pass

    worker = Worker("t", reader=reader, writer=writer, settings=fast_settings())
    with pytest.raises(WriterError, match=r"writer raised OSError: database is down; fix it"):
        await worker.drain()


async def test_context_that_raises_fails_fast() -> None:
    def context() -> None:
        raise KeyError("missing secret")

    async def reader(item: int, ctx: Any) -> None:
        pass

    worker = Worker(
        "t", reader=reader, writer=writer_over(range(5)), context=context, settings=fast_settings()
    )
    with pytest.raises(ContextError, match=r"context\(\) raised .*KeyError: 'missing secret'"):
        await worker.drain()


async def _writer(desired: int) -> AsyncIterator[int]:
    yield 1


@pytest.mark.parametrize(
    ("reader", "message"),
    [
        (lambda identifier: None, r"parameter 'identifier' is required"),
        (lambda ctx: None, r"add a parameter named 'item'"),
        (lambda item, /: None, r"'item' is positional-only .* remove the '/'"),
        ("not a function", r"reader must be a function"),
    ],
)
def test_reader_with_a_wrong_signature_fails_at_construction(reader: Any, message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        Worker("t", reader=reader, writer=_writer)


def test_writer_must_be_an_async_generator() -> None:
    def writer(desired: int) -> list[int]:
        return [1]

    with pytest.raises(SignatureError, match="must be an async generator function"):
        Worker("t", reader=lambda item: None, writer=writer)


def test_context_with_a_wrong_signature_fails_at_construction() -> None:
    with pytest.raises(SignatureError, match=r"parameter 'config' is required"):
        Worker("t", reader=lambda item: None, writer=_writer, context=lambda config: {})


def test_summary_invariant_holds_in_json() -> None:
    summary = Summary(10, 7, 2, 1, 3, 0, 1.23456)
    assert summary.to_json() == (
        '{"enqueued": 10, "succeeded": 7, "failed": 2, "not_started": 1, "retried": 3, '
        '"skipped_duplicates": 0, "seconds": 1.235, "timed_out": 0}'
    )
    assert not summary.ok
